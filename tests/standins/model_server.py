"""TEST STAND-IN, not production code: a local model file server for the model_sync tests and bench.

It plays Hugging Face / Civitai / a CDN on 127.0.0.1 with the behaviours model_sync must cope with,
chosen per path:

- byte ranges supported or not (``ranges``), a fixed rate per connection (``ModelServer(rate=...)``)
- redirects to "another host": ``redirect_to`` is a full URL, usually ``server.other_url(...)``, which
  is the same server reached as ``localhost`` instead of ``127.0.0.1`` (a different URL host)
- ``token``: requires ``Authorization: Bearer <token>`` (or ``?token=``); 401 otherwise, or with
  ``html_login`` a Civitai-like HTML login page (200, text/html)
- ``reject_auth``: 400 when an Authorization header arrives (like a presigned CDN URL)
- ``drop_after``: the first ``drop_times`` responses close the connection after that many body bytes
- ``fail_429``: the first N requests get 429 with ``Retry-After``; ``status``: always answer that status
- ``corrupt``: serve different bytes than the file's data

Every request is appended to ``server.log`` (method, path, host, range, authorization, status, bytes
sent, time), which the tests read. Run it alone with ``python tests/standins/model_server.py DIR``
to serve a folder (used by the bench).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOGIN_PAGE = b"""<!DOCTYPE html><html><head><title>Sign in | Civitai</title></head>
<body><div id="__next"><h1>Sign in to Civitai</h1><p>You need to be logged in to download this model.</p>
<a href="/login?returnUrl=/models">Sign in</a></div></body></html>
"""


@dataclasses.dataclass
class FileSpec:
    data: bytes = b""
    path: str | None = None  # serve a file from disk instead of data (bench)
    ranges: bool = True
    token: str | None = None
    html_login: bool = False
    reject_auth: bool = False
    redirect_to: str | None = None
    drop_after: int | None = None
    drop_times: int = 1
    fail_429: int = 0
    retry_after: str = "1"
    status: int | None = None
    corrupt: bool = False
    content_type: str = "application/octet-stream"

    def size(self):
        return os.path.getsize(self.path) if self.path else len(self.data)

    def read(self, start, end):
        if self.path:
            with open(self.path, "rb") as f:
                f.seek(start)
                return f.read(end - start)
        chunk = self.data[start:end]
        if self.corrupt:
            chunk = bytes(b ^ 0x5A for b in chunk)
        return chunk


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops SYNs when many connections open at once (1 s retransmit)
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "sdcloud-test-model-server"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def do_POST(self):
        """Registered paths answer 200 with a JSON body (AUTOMATIC1111's /sdapi/v1/refresh-* stand-in)."""
        srv = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = urlsplit(self.path).path
        self.entry = {
            "method": "POST",
            "path": path,
            "query": "",
            "host": self.headers.get("Host", ""),
            "range": None,
            "authorization": self.headers.get("Authorization"),
            "status": None,
            "sent": 0,
            "time": time.monotonic(),
            "client_port": self.client_address[1],
        }
        with srv.lock:
            srv.log.append(self.entry)
        if path in srv.files:
            self._reply(200, b"null", {"Content-Type": "application/json"})
        else:
            self._reply(404, b"not found")

    def _reply(self, status, body=b"", headers=None, head=False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.entry["status"] = status

    def _serve(self, head):
        srv = self.server.owner
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        auth = self.headers.get("Authorization")
        self.entry = entry = {
            "method": self.command,
            "path": parts.path,
            "query": parts.query,
            "host": self.headers.get("Host", ""),
            "range": self.headers.get("Range"),
            "authorization": auth,
            "status": None,
            "sent": 0,
            "time": time.monotonic(),
            "client_port": self.client_address[1],
        }
        with srv.lock:
            srv.log.append(entry)
            spec = srv.files.get(parts.path)
            if spec is not None and spec.fail_429 > 0:
                spec.fail_429 -= 1
                throttle = True
            else:
                throttle = False
        if spec is None:
            return self._reply(404, b"not found", head=head)
        if throttle:
            return self._reply(429, b"slow down", {"Retry-After": spec.retry_after}, head=head)
        if spec.status:
            return self._reply(spec.status, b"error", head=head)
        if spec.reject_auth and auth:
            return self._reply(400, b"Authorization header not allowed with a signed URL", head=head)
        if spec.token:
            given = (auth or "").removeprefix("Bearer ") if auth else (query.get("token") or [""])[0]
            if given != spec.token:
                if spec.html_login:
                    return self._reply(200, LOGIN_PAGE, {"Content-Type": "text/html; charset=utf-8"}, head=head)
                return self._reply(401, b"unauthorized", {"WWW-Authenticate": "Bearer"}, head=head)
        if spec.redirect_to:
            return self._reply(302, b"", {"Location": spec.redirect_to}, head=head)
        self._send_file(spec, head)
        return None

    def _send_file(self, spec, head):
        srv = self.server.owner
        size = spec.size()
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        headers = {"Content-Type": spec.content_type, "ETag": f'"{size}-{spec.ranges}"'}
        if spec.ranges:
            headers["Accept-Ranges"] = "bytes"
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
            if match:
                first, last = match.groups()
                if first == "":
                    start, end = max(0, size - int(last)), size
                else:
                    start = int(first)
                    end = min(size, int(last) + 1) if last else size
                if start >= size or start >= end:
                    self._reply(416, b"", {"Content-Range": f"bytes */{size}"}, head=head)
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        self.entry["status"] = status
        if head:
            return
        drop_at = None
        with srv.lock:
            if spec.drop_after is not None and spec.drop_times > 0 and end - start > spec.drop_after:
                spec.drop_times -= 1
                drop_at = start + spec.drop_after
        t0 = time.monotonic()
        pos = start
        block = 64 * 1024 if not srv.rate else max(4096, min(64 * 1024, srv.rate // 50))
        while pos < end:
            stop = min(end, pos + block)
            if drop_at is not None and stop >= drop_at:
                stop = drop_at
            self.wfile.write(spec.read(pos, stop))
            self.entry["sent"] += stop - pos
            pos = stop
            if drop_at is not None and pos >= drop_at:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if srv.rate:
                ahead = (pos - start) / srv.rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)

    def handle(self):
        with contextlib.suppress(OSError):  # clients hang up mid-response on purpose (probes, steals)
            super().handle()


class ModelServer:
    """Threaded HTTP server on 127.0.0.1 with a request log. ``rate`` limits each connection (bytes/s)."""

    def __init__(self, rate=None, host="127.0.0.1"):
        self.rate = rate
        self.files = {}
        self.log = []
        self.lock = threading.Lock()
        self.httpd = _Server((host, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = None

    def add(self, path, data=b"", **kwargs):
        self.files[path] = FileSpec(data=data, **kwargs)
        return self.url(path)

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def other_url(self, path):
        """The same server under another host name: a redirect there leaves the original host."""
        return f"http://localhost:{self.port}{path}"

    def requests(self, path=None, method=None):
        with self.lock:
            return [e for e in self.log if (path is None or e["path"] == path) and (method is None or e["method"] == method)]

    def clear(self):
        with self.lock:
            self.log.clear()

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv):
    """Serve every file of a folder at /<name>: model_server.py DIR [RATE_BYTES_PER_S] [PORT_FILE]."""
    folder = argv[1]
    rate = int(argv[2]) if len(argv) > 2 and int(argv[2]) > 0 else None
    server = ModelServer(rate=rate)
    for name in sorted(os.listdir(folder)):
        server.files["/" + name] = FileSpec(path=os.path.join(folder, name))
    if len(argv) > 3:
        with open(argv[3], "w", encoding="utf-8") as f:
            f.write(str(server.port))
    print(f"serving {folder} on {server.url('/')} rate={rate}", flush=True)
    server.httpd.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main(sys.argv)
