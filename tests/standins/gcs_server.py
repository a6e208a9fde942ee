"""TEST STAND-IN, not production code: the object download part of the Google Cloud Storage API.

Serves, with byte Range support:

- JSON API media download ``GET /download/storage/v1/b/{bucket}/o/{object}?alt=media`` (object URL-encoded)
- JSON API metadata ``GET /storage/v1/b/{bucket}/o/{object}`` (size, md5 omitted)
- XML API ``GET /{bucket}/{object}``

``token`` makes every request need ``Authorization: Bearer <token>`` (401 otherwise, as GCS answers
for a private bucket). Requests are logged in ``server.log`` for the tests.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops SYNs when many connections open at once (1 s retransmit)
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _send(self, status, body, headers=None):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, message):
        body = json.dumps({"error": {"code": status, "message": message}}).encode()
        self._send(status, body, {"Content-Type": "application/json"})

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        srv = self.server.owner
        parts = urlsplit(self.path)
        auth = self.headers.get("Authorization")
        with srv.lock:
            srv.log.append({"path": parts.path, "query": parts.query, "range": self.headers.get("Range"), "auth": auth})
        if srv.token and auth != f"Bearer {srv.token}":
            return self._error(401, "Anonymous caller does not have storage.objects.get access.")
        media = re.fullmatch(r"/download/storage/v1/b/([^/]+)/o/([^/]+)", parts.path)
        meta = re.fullmatch(r"/storage/v1/b/([^/]+)/o/([^/]+)", parts.path)
        xml = re.fullmatch(r"/([^/]+)/(.+)", parts.path)
        if media and "alt=media" in parts.query:
            bucket, name = media.group(1), unquote(media.group(2))
        elif meta:
            bucket, name = meta.group(1), unquote(meta.group(2))
            data = srv.objects.get((bucket, name))
            if data is None:
                return self._error(404, f"No such object: {bucket}/{name}")
            body = json.dumps({"bucket": bucket, "name": name, "size": str(len(data))}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})
        elif xml:
            bucket, name = xml.group(1), unquote(xml.group(2))
        else:
            return self._error(400, "unsupported request")
        data = srv.objects.get((bucket, name))
        if data is None:
            return self._error(404, f"No such object: {bucket}/{name}")
        size = len(data)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", "ETag": f'"{size}"'}
        if match:
            start = int(match.group(1))
            end = min(size, int(match.group(2)) + 1) if match.group(2) else size
            if start >= size:
                return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return self._send(206, data[start:end], headers)
        return self._send(200, data, headers)


class GcsServer:
    """``objects`` maps (bucket, object name) to bytes; ``token`` (optional) is the bearer token wanted."""

    def __init__(self, token=None):
        self.token = token
        self.objects = {}
        self.log = []
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
