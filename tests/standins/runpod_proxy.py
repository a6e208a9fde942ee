"""TEST STAND-IN -- not RunPod's HTTP proxy.

What it copies, from RunPod's "Expose ports" page (https://docs.runpod.io/pods/configuration/expose-ports,
runpod/docs pods/configuration/expose-ports.mdx): every port a pod exposes as `<port>/http` is served at
`https://<pod id>-<port>.proxy.runpod.net`, public; the chain is "User -> Cloudflare -> Runpod Loadbalancer ->
Pod", TLS ends at the edge with RunPod's certificate and the request reaches the service inside the pod as plain
HTTP on that port; "if your service does not respond within 100 seconds of a request, the connection will be
closed" with a 524. So: a TLS server with a certificate for `*.proxy.runpod.net` (from a test CA the test
trusts, made by `make_certificates`), which reads the request's Host, finds the pod in the RunPod API stand-in
(runpod_server.py) - it must be RUNNING and list `<port>/http` - and relays the connection, byte for byte from
the request on (a websocket upgrade passes as it would), to `<the pod's address>:<port>`.

Where the reference is silent, these are the stand-in's own choices: an unknown pod or port answers 404, a
pod that is not running 502, a service that does not accept the connection 502; no X-Forwarded-* headers are
added (Cloudflare adds some; sdcloud's proxy does not read them). The pod's address is its SSH slot's host
(pod_standin): the pod-like test host behind the pod.

A client reaches it by resolving `<pod id>-<port>.proxy.runpod.net` to this server's address and port, e.g.
`curl --connect-to <name>:443:127.0.0.1:<port> --cacert <ca> https://<name>/...` (the e2e does).
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import threading

from port_forward import accept_forever, read_head, relay

DOMAIN = "proxy.runpod.net"
HOST_RE = re.compile(r"^(?P<pod>[a-z0-9]+)-(?P<port>[0-9]{1,5})\." + re.escape(DOMAIN) + r"(?::443)?$", re.I)
TIMEOUT = 100  # seconds without an answer before the edge closes the request (the page above)


def make_certificates(directory) -> dict:
    """A test CA and a certificate for *.proxy.runpod.net it signed: {"ca", "cert", "key"} (paths)."""
    d = str(directory)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-days", "2", "-subj", "/CN=sdcloud test CA (RunPod proxy stand-in)",
                    "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem"], check=True, capture_output=True)
    subprocess.run(["openssl", "req", *ec, "-subj", f"/CN=*.{DOMAIN}", "-keyout", f"{d}/proxy.key", "-out", f"{d}/proxy.csr"],
                   check=True, capture_output=True)
    with open(f"{d}/san.ext", "w") as f:
        f.write(f"subjectAltName=DNS:*.{DOMAIN}\nbasicConstraints=CA:FALSE\n")
    subprocess.run(["openssl", "x509", "-req", "-in", f"{d}/proxy.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
                    "-CAcreateserial", "-days", "2", "-extfile", f"{d}/san.ext", "-out", f"{d}/proxy.pem"],
                   check=True, capture_output=True)
    return {"ca": f"{d}/ca.pem", "cert": f"{d}/proxy.pem", "key": f"{d}/proxy.key"}


def _answer(conn, status: int, text: str) -> None:
    body = text.encode() + b"\n"
    head = f"HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with contextlib.suppress(OSError):
        conn.sendall(head.encode() + body)
    conn.close()


class RunpodProxy:
    """with RunpodProxy(runpod_standin, certs) as proxy: ... proxy.port (on 127.0.0.1) ..."""

    def __init__(self, api, certs: dict, host: str = "127.0.0.1", port: int = 0):
        self.api = api  # the RunpodStandin whose pods it serves
        self.ca = certs["ca"]  # what a client trusts (RunPod's real certificate is publicly trusted)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs["cert"], certs["key"])
        self.server = socket.create_server((host, port))
        self.host, self.port = host, self.server.getsockname()[1]
        self.requests: list = []  # (pod id, port, first request line) of each connection it relayed
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=accept_forever, args=(self.server, self._one), daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.server.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _target(self, head: bytes):
        """(pod id, port, address, request line) of what the request's Host names, or (status, text) to answer instead."""
        lines = head.decode("latin-1").split("\r\n")
        host = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("host:")), "")
        m = HOST_RE.match(host)
        if not m:
            return 404, "Not Found"
        pod = self.api.pods.get(m["pod"])
        if pod is None or f"{int(m['port'])}/http" not in pod["ports"]:
            return 404, "Not Found"
        if pod["status"] != "RUNNING" or not (pod["ssh"].get("direct") or {}).get("host"):
            return 502, "Bad Gateway"
        return m["pod"], int(m["port"]), pod["ssh"]["direct"]["host"], lines[0]

    def _one(self, raw):
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        conn.settimeout(TIMEOUT)
        head = read_head(conn)
        if head is None:
            return
        target = self._target(head.split(b"\r\n\r\n", 1)[0])
        if len(target) == 2:
            _answer(conn, *target)
            return
        pod_id, port, address, line = target
        try:
            upstream = socket.create_connection((address, port), timeout=10)
        except OSError:
            _answer(conn, 502, "Bad Gateway")
            return
        upstream.settimeout(None)
        self.requests.append((pod_id, port, line))
        relay(conn, upstream, first=head, idle=TIMEOUT)  # nothing within 100 s: the connection ends
