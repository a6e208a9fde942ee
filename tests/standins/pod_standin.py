"""TEST STAND-IN scaffolding -- shared by runpod_server.py and vast_server.py; neither is the real service.

An in-memory JSON API on 127.0.0.1 (stdlib http.server, like gce_server.py): Bearer auth, a request log,
fault injection, and SSH "slots" - the host:port pairs handed out as a pod's public address and mapped SSH
port each time it starts, so a test can back a pod with a real pod-like test host and see a new address
and port after every stop/start. Without slots, addresses come from TEST-NET-3 (203.0.113.0/24, RFC 5737):
never contact them.

Control (Python methods, and the same over HTTP for a stand-in run as its own process):
- POST   /_standin/faults   {"op": "create"|"start"|"stop"|"get"|"list"|..., "kind": <provider's fault>,
          "zone": <data center / country> or null, "count": N or null (forever)}
- DELETE /_standin/faults   clear them
- POST   /_standin/slots    {"slots": ["10.10.0.5:22", {"host": "10.11.0.5", "ssh_port": 22, "ports": {"8188": 8188}},
          ...]}: the addresses to hand out, in turn (see set_slots)
- GET    /_standin/requests the request log ({method, path, query, body, status}); DELETE clears it
- POST   /_standin/reset    drop everything

Hooks (Python only): on_running(pod), on_stopped(pod), on_deleted(pod), called with the provider's pod record as the
pod turns running (its address and SSH port set), stops, or is deleted - so a test backs each pod with a real
pod-like host (tests/e2e/podhost.py) that starts and stops with it. They run inside the request that made the
change, before its answer, as a real pod is up (sshd listening) by the time the API reports it running.

Pod-scoped keys: both providers put a key into every pod that lets it act on itself (RunPod RUNPOD_API_KEY, vast.ai
CONTAINER_API_KEY). scoped_key(pod id) makes one; a request with it is accepted only for paths of that pod (the
references do not say what else such a key may do: nothing else is allowed here). The request log's `key` says
which kind authorised each request ("account" or "pod").
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reply(Exception):  # noqa: N818 - a control-flow answer, not an error
    """Raised by a route to answer with `status`, `payload` and extra `headers`."""

    def __init__(self, status: int, payload, headers: dict | None = None):
        super().__init__(status)
        self.status, self.payload, self.headers = status, payload, headers or {}


class JsonStandin:
    """State, faults, slots and the HTTP server; a subclass writes `routes()` and `unauthorized()`."""

    name = "stand-in"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str = "test-key", slots=None):
        self.api_key = api_key
        self.on_running = self.on_stopped = self.on_deleted = None  # hooks, see the module docstring
        self.scoped_keys: dict = {}  # pod-scoped key -> the pod id it may act on
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.reset()
        self.set_slots(slots or [])
        handler = type("Handler", (_Handler,), {"standin": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    # ---- lifecycle
    def start(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name,
                         daemon=True).start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def reset(self):
        with self.lock:
            self.faults: list = []
            self.requests: list = []
            self.reset_state()

    def reset_state(self):
        """Drop the provider's resources (a subclass's)."""

    # ---- control
    def add_fault(self, op: str, kind: str, *, zone: str | None = None, count: int | None = None, **extra):
        if kind not in self.FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {sorted(self.FAULT_KINDS)}")
        with self.lock:
            self.faults.append({"op": op, "kind": kind, "zone": zone, "count": count, **extra})

    def clear_faults(self):
        with self.lock:
            self.faults.clear()

    def fault(self, op: str, zone: str | None = None) -> dict | None:
        """The first fault matching `op` (and `zone`, when the fault names one); counts it down."""
        for f in self.faults:
            if f["op"] in (op, "any") and (f["zone"] is None or f["zone"] == zone):
                if f["count"] is not None:
                    f["count"] -= 1
                    if f["count"] <= 0:
                        self.faults.remove(f)
                return f
        return None

    def set_slots(self, slots):
        """What pods get as they start, in turn: "host:port" (SSH) or {"host", "ssh_port", "ports": {container
        port: public port}} (where a provider maps other ports too, vast.ai); [] gives TEST-NET-3 addresses."""
        with self.lock:
            self.slots = [s if isinstance(s, dict) else str(s) for s in slots]
            self._slot_turn = itertools.count()

    def next_slot(self) -> tuple:
        """(host, SSH port, {container port: public port} or None) for a pod that turns running."""
        n = next(self._slot_turn)
        if self.slots:
            slot = self.slots[n % len(self.slots)]
            if isinstance(slot, dict):
                ports = {int(k): int(v) for k, v in (slot.get("ports") or {}).items()}
                return slot["host"], int(slot["ssh_port"]), ports
            host, _, port = slot.rpartition(":")
            return host, int(port), None
        return f"203.0.113.{10 + n % 200}", 40000 + n, None

    def notify(self, hook: str, pod: dict):
        """Call the test's hook `hook` (on_running, on_stopped, on_deleted) with a copy of the pod, if set."""
        fn = getattr(self, hook)
        if fn is not None:
            fn(copy.deepcopy(pod))

    def scoped_key(self, pod_id) -> str:
        """A pod-scoped key for pod_id (what the provider injects into the pod)."""
        key = f"pod-scoped-{pod_id}-{self.api_key[:4]}"
        self.scoped_keys[key] = str(pod_id)
        return key

    def authorized(self, header: str | None, path: str) -> str | None:
        """"account" for the account's key, "pod" for a pod-scoped key on its own pod's paths, else None."""
        if header == f"Bearer {self.api_key}":
            return "account"
        pod_id = self.scoped_keys.get((header or "").removeprefix("Bearer "))
        if pod_id is not None and re.search(rf"/{re.escape(pod_id)}(/|$)", path):
            return "pod"
        return None

    def new_id(self) -> int:
        return next(self._ids)

    def requests_for(self, method: str | None = None, path_part: str = "") -> list:
        with self.lock:
            return [r for r in self.requests if (method is None or r["method"] == method) and path_part in r["path"]]

    # ---- routing
    def handle(self, method: str, path: str, query: dict, body, headers) -> tuple:
        """-> (status, payload, headers, logged?, which key)."""
        if path.startswith("/_standin/"):
            return (*self._control(method, path, body or {}), False, None)
        key = self.authorized(headers.get("Authorization"), path)
        if key is None:
            return (*self.unauthorized(headers.get("Authorization")), True, None)
        for verb, pattern, fn in self.routes():
            m = re.fullmatch(pattern, path)
            if m and verb == method:
                try:
                    with self.lock:
                        return 200, fn(body, query, **m.groupdict()), {}, True, key
                except Reply as reply:
                    return reply.status, reply.payload, reply.headers, True, key
        return (*self.not_found(method, path), True, key)

    def _control(self, method: str, path: str, body: dict) -> tuple:
        try:
            if path == "/_standin/faults" and method == "POST":
                self.add_fault(body.get("op", "create"), body.get("kind", ""), zone=body.get("zone"),
                               count=body.get("count"))
                return 200, {"faults": len(self.faults)}, {}
            if path == "/_standin/faults" and method == "DELETE":
                self.clear_faults()
                return 200, {"faults": 0}, {}
            if path == "/_standin/slots" and method == "POST":
                self.set_slots(body.get("slots") or [])
                return 200, {"slots": self.slots}, {}
            if path == "/_standin/requests" and method == "GET":
                with self.lock:
                    return 200, {"requests": copy.deepcopy(self.requests)}, {}
            if path == "/_standin/requests" and method == "DELETE":
                with self.lock:
                    self.requests.clear()
                return 200, {"requests": []}, {}
            if path == "/_standin/reset" and method == "POST":
                self.reset()
                return 200, {}, {}
        except ValueError as err:
            return 400, {"error": str(err)}, {}
        return 404, {"error": f"no control route {method} {path}"}, {}


class _Handler(BaseHTTPRequestHandler):
    standin: JsonStandin = None  # set per server
    disable_nagle_algorithm = True  # without it every request stalls ~40 ms (Nagle + delayed ACK)
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the request log is the record
        pass

    def _serve(self, method: str):
        parsed = urllib.parse.urlsplit(self.path)
        query = {k: v[0] if len(v) == 1 else v for k, v in urllib.parse.parse_qs(parsed.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._send(400, {"error": "invalid json"}, {})
            return
        status, payload, headers, logged, key = self.standin.handle(method, parsed.path, query, body, self.headers)
        if logged:
            with self.standin.lock:
                self.standin.requests.append({"method": method, "path": parsed.path, "query": query, "body": body,
                                              "status": status, "time": time.time(), "key": key})
        self._send(status, payload, headers)

    def _send(self, status: int, payload, headers: dict):
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        ctype = headers.pop("Content-Type", "application/json")
        if data:
            self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")


def serve(cls, argv=None):
    """Run a stand-in on its own: python tests/standins/<x>_server.py --port P [--slots h:p,h:p]"""
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=f"TEST STAND-IN: {cls.name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--slots", default="", help="host:port,host:port - SSH addresses handed to pods in turn")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.host.startswith("10."):
        parser.error("the stand-in listens on loopback or a private test bridge only")
    standin = cls(args.host, args.port, api_key=args.api_key, slots=[s for s in args.slots.split(",") if s])
    print(f"{cls.name} listening on {standin.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        standin.httpd.serve_forever()
