"""The pod e2e's two relays, on loopback: the RunPod proxy stand-in (tests/standins/runpod_proxy.py: TLS with a
*.proxy.runpod.net certificate, the pod chosen by Host) and the port publishing stand-in (port_forward.py, as
docker-proxy). A relay that drops bytes, mixes up pods or lets an unexposed port through would make the e2e's
verdict about sdcloud's proxy worthless, so each of those is checked here."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from podtest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "standins"))
from runpod_proxy import RunpodProxy, make_certificates  # noqa: E402
from runpod_server import RunpodStandin  # noqa: E402

API_KEY = "relay-test-key"


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/upgrade":  # answers 101, then echoes what follows (a websocket's shape)
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            while line := self.rfile.readline():
                self.wfile.write(line.upper())
                self.wfile.flush()
            return
        self._answer({"path": self.path, "host": self.headers["Host"], "port": self.server.server_address[1]})

    def do_POST(self):  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})

    def _answer(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def service():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def _pod(api, ports):
    req = urllib.request.Request(api.url + "/v2/pods", method="POST", headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, data=json.dumps({
            "name": "sdcloud:relay", "image": "img", "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1},
            "ports": ports}).encode())
    with urllib.request.urlopen(req) as r:
        pod_id = json.loads(r.read())["id"]
    while api.pods[pod_id]["status"] != "RUNNING":
        with urllib.request.urlopen(urllib.request.Request(api.url + f"/v2/pods/{pod_id}", headers={
                "Authorization": f"Bearer {API_KEY}"})):
            pass
    return pod_id


def _curl(certs, proxy, url, *extra):
    host = url.split("/")[2]
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", certs["ca"], "--connect-to",
                          f"{host}:443:127.0.0.1:{proxy.port}", "-w", "\n%{http_code}", *extra, url],
                         capture_output=True, text=True, check=False)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body, out.stderr


def test_the_runpod_proxy_serves_exposed_http_ports_of_running_pods_only(tmp_path, service):
    certs = make_certificates(tmp_path)
    with RunpodStandin(slots=["127.0.0.1:22"], api_key=API_KEY) as api, RunpodProxy(api, certs) as proxy:
        pod_id = _pod(api, ["22/tcp", f"{service}/http"])
        code, body, err = _curl(certs, proxy, f"https://{pod_id}-{service}.proxy.runpod.net/tok/system_stats?x=1")
        assert code == 200, err
        assert json.loads(body) == {"path": "/tok/system_stats?x=1", "host": f"{pod_id}-{service}.proxy.runpod.net",
                                    "port": service}, "the request reaches the pod's port as sent, in plain HTTP"
        assert proxy.requests == [(pod_id, service, "GET /tok/system_stats?x=1 HTTP/1.1")]
        payload = os.urandom(3 * 1024 * 1024)  # an upload over TLS: many records, nothing lost or reordered
        (tmp_path / "upload").write_bytes(payload)
        code, body, err = _curl(certs, proxy, f"https://{pod_id}-{service}.proxy.runpod.net/up", "--data-binary",
                                f"@{tmp_path / 'upload'}")
        assert code == 200 and json.loads(body) == {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}, err
        # a port the pod does not expose as http, and a pod that does not exist: not served
        assert _curl(certs, proxy, f"https://{pod_id}-22.proxy.runpod.net/")[0] == 404
        assert _curl(certs, proxy, f"https://nosuchpod-{service}.proxy.runpod.net/")[0] == 404
        # the certificate is for *.proxy.runpod.net only
        code, _, err = _curl(certs, proxy, "https://elsewhere.example/")
        assert code == 0 and "certificate" in err.lower(), err
        api.pods[pod_id]["status"] = "EXITED"
        assert _curl(certs, proxy, f"https://{pod_id}-{service}.proxy.runpod.net/")[0] == 502


def test_the_runpod_proxy_passes_an_upgraded_connection_both_ways(tmp_path, service):
    certs = make_certificates(tmp_path)
    with RunpodStandin(slots=["127.0.0.1:22"], api_key=API_KEY) as api, RunpodProxy(api, certs) as proxy:
        pod_id = _pod(api, ["22/tcp", f"{service}/http"])
        ctx = ssl.create_default_context(cafile=certs["ca"])
        name = f"{pod_id}-{service}.proxy.runpod.net"
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(f"GET /upgrade HTTP/1.1\r\nHost: {name}\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n".encode())
            reader = tls.makefile("rb")
            assert reader.readline().startswith(b"HTTP/1.1 101")
            while reader.readline() not in (b"\r\n", b""):
                pass
            for word in (b"one\n", b"two\n"):
                tls.sendall(word)
                assert reader.readline() == word.upper()


def test_port_publishing_relays_to_the_container_port(service):
    public = socket.socket()
    public.bind(("127.0.0.1", 0))
    port = public.getsockname()[1]
    public.close()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/standins/port_forward.py"), str(port), str(service)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/a?b=c", timeout=5) as r:
                    assert json.loads(r.read())["path"] == "/a?b=c"
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        payload = os.urandom(3 * 1024 * 1024)  # many reads: nothing lost or reordered
        req = urllib.request.Request(f"http://127.0.0.1:{port}/big", data=payload, method="POST")
        with urllib.request.urlopen(req, timeout=20) as r:
            assert json.loads(r.read()) == {"sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
    finally:
        proc.kill()
        proc.wait()
