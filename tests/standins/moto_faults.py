"""TEST STAND-IN: moto (AWS API emulator) in server mode, with fault injection and a request log.

moto never runs out of capacity, never hits a quota and never throttles. This wraps moto's WSGI app
in a middleware that answers chosen EC2 calls with the error real EC2 sends, in the EC2 XML error
shape, so the capacity/quota/throttling paths of the AWS backend run for real against botocore.

Control endpoint (JSON):
  POST   /_faults    {"faults": [{"action": "RunInstances", "zone": "us-east-1a", "market": "spot",
                                  "code": "InsufficientInstanceCapacity", "count": null}, ...]}
                     appends faults; each matches Action (+ Placement.AvailabilityZone when `zone`
                     is given, + market "spot"/"on-demand" when `market` is given); `count` = how many
                     times it fires (null: always). `status`/`message` override the defaults below.
  GET    /_faults    the faults with their hit counts;   DELETE /_faults  removes all.
  GET    /_requests  every EC2 call seen: [{"action", "zone", "market", "faulted"}] (+ "params", the
                     query parameters, for RunInstances);  DELETE clears.
  POST   /_console   {"instance_id", "output"}: what the instance printed on its serial console (see hooks)
  POST   /_interrupt {"zone": "us-east-1a", "count": 1, "code": "Server.SpotInstanceShutdown"}: the next `count`
                     spot instances RunInstances launches in `zone` are interrupted at once (moto has no spot
                     market): stopped (...Shutdown) or terminated (...Termination), with that StateReason, so
                     the caller's next DescribeInstances sees a spot interruption. GET lists them; DELETE clears.
  POST   /moto-api/reset  moto's own reset (clears all AWS state).

Instance hooks (in-process only, see serve_in_thread): `on_instance_running(info) -> str | None` is
called after each successful RunInstances/StartInstances for every instance in the answer; a returned
string becomes the instance's public IP (in moto's state and in that answer), so an end-to-end test
can back each instance with a real local test host. `on_instance_stopped(info)` /
`on_instance_deleted(info)` follow StopInstances / TerminateInstances. `info`: id, region, zone, state,
tags, key_name, public_key (the key pair's OpenSSH public key), public_ip. Without hooks, moto
invents public IPs: never contact them. A running hook may return {"public_ip": str, "console_output":
str} instead: the text is what the instance printed on its serial console at boot (cloud-init prints
the SSH host keys there), and GetConsoleOutput answers it (base64, as EC2 does) instead of moto's
fixed sample, which holds no keys.

Run: python tests/standins/moto_faults.py --port 5055   (prints "READY <port>" when listening).
It sets MOTO_AMIS_PATH (tests/standins/amis.json) and MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true
before moto is imported, unless already set.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import io
import json
import os
import pathlib
import re
import sys
import threading
import urllib.parse
import uuid

HERE = pathlib.Path(__file__).resolve().parent

# HTTP status and message real EC2 sends for each code (EC2 API reference, "Error codes":
# InsufficientInstanceCapacity/InsufficientHostCapacity are server errors (HTTP 500; botocore's
# standard mode retries them, hence "reached max retries" in real logs), RequestLimitExceeded is
# returned as HTTP 503, quota and parameter errors are client errors (HTTP 400).
DEFAULTS = {
    "InsufficientInstanceCapacity": (
        500,
        "We currently do not have sufficient {itype} capacity in the Availability Zone you requested "
        "({zone}). Our system will be working on provisioning additional capacity. You can currently get "
        "{itype} capacity by not specifying an Availability Zone in your request or choosing a different "
        "Availability Zone.",
    ),
    "InsufficientHostCapacity": (500, "There is not enough capacity to fulfill your Dedicated Host request."),
    "Unsupported": (
        400,
        "Your requested instance type ({itype}) is not supported in your requested Availability Zone "
        "({zone}). Please retry your request by not specifying an Availability Zone or choosing a "
        "different Availability Zone.",
    ),
    "VcpuLimitExceeded": (
        400,
        "You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance "
        "bucket that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/"
        "ec2-request to request an adjustment to this limit.",
    ),
    "MaxSpotInstanceCountExceeded": (400, "Max spot instance count exceeded"),
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "UnauthorizedOperation": (403, "You are not authorized to perform this operation."),
}


# StateReason of a spot interruption (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html).
INTERRUPTIONS = {
    "Server.SpotInstanceShutdown": "The instance was stopped because the number of Spot requests with a maximum "
                                   "price equal to or higher than the Spot price exceeded available capacity or "
                                   "because of an increase in the Spot price.",
    "Server.SpotInstanceTermination": "The instance was terminated because the number of Spot requests with a "
                                      "maximum price equal to or higher than the Spot price exceeded available "
                                      "capacity or because of an increase in the Spot price.",
}


def error_xml(code: str, message: str) -> bytes:
    """The EC2 query-protocol error body (what botocore's ec2 parser reads)."""
    message = message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


_INSTANCE_ID = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")
_CREDENTIAL_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/ec2/")
HOOKED_ACTIONS = {"RunInstances": "on_instance_running", "StartInstances": "on_instance_running",
                  "StopInstances": "on_instance_stopped", "TerminateInstances": "on_instance_deleted"}


class FaultMiddleware:
    def __init__(self, app, on_instance_running=None, on_instance_stopped=None, on_instance_deleted=None):
        self.app = app
        self.lock = threading.Lock()
        self.faults: list = []
        self.requests: list = []
        self.on_instance_running = on_instance_running
        self.on_instance_stopped = on_instance_stopped
        self.on_instance_deleted = on_instance_deleted
        self.console: dict = {}  # instance id -> console text its running hook returned
        self.interrupts: list = []  # {"zone", "count", "code"}: spot interruptions to play (see /_interrupt)

    # -- control endpoint ---------------------------------------------------------------------
    def _json(self, start_response, obj, status="200 OK"):
        body = json.dumps(obj).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _control(self, environ, start_response, path):
        method = environ["REQUEST_METHOD"]
        with self.lock:
            if path == "/_faults":
                if method == "POST":
                    data = json.loads(_read_body(environ) or b"{}")
                    for f in data.get("faults", []):
                        if "action" not in f or "code" not in f:
                            return self._json(start_response, {"error": "fault needs action and code"},
                                              "400 Bad Request")
                        self.faults.append(dict(f, hits=0))
                elif method == "DELETE":
                    self.faults.clear()
                return self._json(start_response, {"faults": self.faults})
            if path == "/_interrupt":
                if method == "POST":
                    data = json.loads(_read_body(environ) or b"{}")
                    if data.get("code") not in INTERRUPTIONS:
                        return self._json(start_response, {"error": f"code must be one of {sorted(INTERRUPTIONS)}"},
                                          "400 Bad Request")
                    self.interrupts.append({"zone": data.get("zone"), "count": int(data.get("count", 1)),
                                            "code": data["code"]})
                elif method == "DELETE":
                    self.interrupts.clear()
                return self._json(start_response, {"interrupts": self.interrupts})
            if path == "/_console":  # what an instance printed on its serial console (as the hook's console_output)
                if method == "POST":
                    data = json.loads(_read_body(environ) or b"{}")
                    self.console[data["instance_id"]] = data["output"]
                return self._json(start_response, {"console": self.console})
            if method == "DELETE":
                self.requests.clear()
            return self._json(start_response, {"requests": self.requests})

    # -- EC2 calls ----------------------------------------------------------------------------
    def _match(self, action, zone, market):
        for f in self.faults:
            if f["action"] != action:
                continue
            if f.get("zone") and f["zone"] != zone:
                continue
            if f.get("market") and f["market"] != market:
                continue
            if f.get("count") is not None and f["hits"] >= f["count"]:
                continue
            f["hits"] += 1
            return f
        return None

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in ("/_faults", "/_requests", "/_console", "/_interrupt"):
            return self._control(environ, start_response, path)
        body = _read_body(environ)
        form = {}
        if body and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
        action = form.get("Action")
        if not action:
            return self.app(environ, start_response)
        zone = form.get("Placement.AvailabilityZone")
        market = form.get("InstanceMarketOptions.MarketType")
        if action == "RunInstances":
            market = market or "on-demand"
        with self.lock:
            fault = self._match(action, zone, market)
            entry = {"action": action, "zone": zone, "market": market, "faulted": fault["code"] if fault else None}
            if action == "RunInstances":
                entry["params"] = form  # to assert what was asked (market options, tags, disk)
            self.requests.append(entry)
        if fault is None and action == "GetConsoleOutput" and form.get("InstanceId") in self.console:
            return self._console_output(start_response, form["InstanceId"])
        if fault is None and action == "RunInstances" and market == "spot":
            with self.lock:
                interrupt = next((i for i in self.interrupts if i["count"] > 0 and i["zone"] in (None, zone)), None)
                if interrupt:
                    interrupt["count"] -= 1
            if interrupt:
                return self._hooked(environ, start_response, lambda info: self._interrupt(info, interrupt["code"]),
                                    action)
        if fault is None:
            hook = getattr(self, HOOKED_ACTIONS.get(action, ""), None)
            if hook is None:
                return self.app(environ, start_response)
            return self._hooked(environ, start_response, hook, action)
        status, template = DEFAULTS.get(fault["code"], (400, fault["code"]))
        status = int(fault.get("status") or status)
        message = fault.get("message") or template.format(itype=form.get("InstanceType", "?"), zone=zone or "?")
        payload = error_xml(fault["code"], message)
        reason = {400: "Bad Request", 403: "Forbidden", 500: "Internal Server Error", 503: "Service Unavailable"}
        start_response(f"{status} {reason.get(status, 'Error')}",
                       [("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(payload)))])
        return [payload]


    def _console_output(self, start_response, instance_id):
        """EC2's GetConsoleOutput answer (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html)."""
        output = base64.b64encode(self.console[instance_id].encode()).decode()
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<GetConsoleOutputResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                   f"<requestId>{uuid.uuid4()}</requestId><instanceId>{instance_id}</instanceId>"
                   f"<timestamp>{now}</timestamp><output>{output}</output></GetConsoleOutputResponse>").encode()
        start_response("200 OK", [("Content-Type", "text/xml;charset=UTF-8"), ("Content-Length", str(len(payload)))])
        return [payload]

    # -- instance hooks -----------------------------------------------------------------------
    def _hooked(self, environ, start_response, hook, action):
        """Let moto answer, then run `hook` for each instance in a successful answer (before the
        caller sees it, so a public IP the hook returns is what the caller reads)."""
        seen = {}

        def capture(status, headers, exc_info=None):
            seen["status"], seen["headers"] = status, headers
            return lambda data: None

        chunks = self.app(environ, capture)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        if seen.get("status", "").startswith("2"):
            m = _CREDENTIAL_REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
            region = m.group(1) if m else "us-east-1"
            for iid in dict.fromkeys(_INSTANCE_ID.findall(body.decode("utf-8", "replace"))):
                body = self._run_hook(hook, action, region, iid, body)
        headers = [(k, v) for k, v in seen["headers"] if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(seen["status"], headers)
        return [body]

    @staticmethod
    def _interrupt(info: dict, code: str) -> None:
        """Play EC2 reclaiming the spot instance: stopped or terminated, with the StateReason EC2 gives."""
        from moto.core import DEFAULT_ACCOUNT_ID  # noqa: PLC0415
        from moto.ec2.models import ec2_backends  # noqa: PLC0415
        from moto.ec2.models.instances import StateReason  # noqa: PLC0415

        inst = ec2_backends[DEFAULT_ACCOUNT_ID][info["region"]].get_instance(info["id"])
        if code == "Server.SpotInstanceShutdown":
            inst.stop()
        else:
            inst.terminate()
        inst.state_reason = StateReason(f"{code}: {INTERRUPTIONS[code]}", code)

    def _run_hook(self, hook, action, region, instance_id, body: bytes) -> bytes:
        from moto.core import DEFAULT_ACCOUNT_ID  # noqa: PLC0415
        from moto.ec2.models import ec2_backends  # noqa: PLC0415

        backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
        inst = backend.get_instance(instance_id)
        key = backend.key_pairs.get(inst.key_name) if inst.key_name else None
        info = {"id": inst.id, "region": region, "zone": inst.placement.zone, "state": inst.state,
                "tags": {t["key"]: t["value"] for t in inst.get_tags()},
                "key_name": inst.key_name, "public_key": key.public_key if key else None,
                "public_ip": inst.public_ip, "action": action}
        ip = hook(info)
        if isinstance(ip, dict):
            if ip.get("console_output") is not None:
                self.console[instance_id] = ip["console_output"]
            ip = ip.get("public_ip")
        if action in ("RunInstances", "StartInstances") and isinstance(ip, str):
            old = inst.public_ip
            inst.nics[0].public_ip = ip
            if old:
                body = body.replace(f">{old}<".encode(), f">{ip}<".encode())
        return body


def _read_body(environ) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def make_app(**hooks):
    os.environ.setdefault("MOTO_AMIS_PATH", str(HERE / "amis.json"))
    os.environ.setdefault("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app  # noqa: PLC0415

    return FaultMiddleware(DomainDispatcherApplication(create_backend_app), **hooks)


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, **hooks):
    """Serve moto (with faults and the instance hooks) from a thread of this process.
    Returns (server, Control); server.shutdown() stops it. moto keeps its state in this process."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    app = make_app(**hooks)
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, name="moto-standin", daemon=True).start()
    return server, Control(f"http://{host}:{server.server_address[1]}")


def serve(host: str = "127.0.0.1", port: int = 0):
    from moto.moto_server.werkzeug_app import MotoRequestHandler  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    app = make_app()
    server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    print(f"READY {server.server_address[1]}", flush=True)
    server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as READY <port>)")
    args = parser.parse_args(argv)
    serve(args.host, args.port)


# --- helpers for pytest (one server per test process) -------------------------------------------


class Control:
    """Client for a running server's control endpoint."""

    def __init__(self, url: str):
        self.url = url

    def _call(self, method: str, path: str, payload=None):
        import urllib.request  # noqa: PLC0415

        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body and body[:1] in (b"{", b"[") else body

    def console_output(self, instance_id: str, output: str):
        """Make GetConsoleOutput of instance_id answer `output` (what the instance printed at boot)."""
        self._call("POST", "/_console", {"instance_id": instance_id, "output": output})

    def reset(self):
        """Clear all AWS state, faults and the request log."""
        self._call("POST", "/moto-api/reset")
        self._call("DELETE", "/_faults")
        self._call("DELETE", "/_requests")
        self._call("DELETE", "/_interrupt")

    def fault(self, action: str, code: str, zone: str | None = None, market: str | None = None,
              count: int | None = None, **extra):
        self._call("POST", "/_faults", {"faults": [dict(action=action, code=code, zone=zone, market=market,
                                                        count=count, **extra)]})

    def faults(self) -> list:
        return self._call("GET", "/_faults")["faults"]

    def interrupt(self, code: str = "Server.SpotInstanceShutdown", zone: str | None = None, count: int = 1):
        """Interrupt the next `count` spot instances launched in `zone` (any zone when None) right away."""
        self._call("POST", "/_interrupt", {"code": code, "zone": zone, "count": count})

    def requests(self, action: str | None = None) -> list:
        reqs = self._call("GET", "/_requests")["requests"]
        return [r for r in reqs if action is None or r["action"] == action]


_SHARED = {}


def shared_server(timeout: float = 30.0) -> Control:
    """Start (once per process) this server as a subprocess on a free port; return its Control."""
    if "control" in _SHARED:
        return _SHARED["control"]
    import atexit  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import time  # noqa: PLC0415

    env = dict(os.environ, MOTO_AMIS_PATH=str(HERE / "amis.json"), MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true")
    proc = subprocess.Popen([sys.executable, str(HERE / "moto_faults.py"), "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    atexit.register(proc.terminate)
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("READY "):
            break
        if proc.poll() is not None:
            raise RuntimeError(f"moto stand-in exited with {proc.returncode}")
    else:
        proc.terminate()
        raise RuntimeError(f"moto stand-in did not start within {timeout}s")
    control = Control(f"http://127.0.0.1:{int(line.split()[1])}")
    _SHARED.update(control=control, proc=proc)
    return control


def prepare_aws(monkeypatch) -> Control:
    """pytest helper: start/reset the shared server, dummy credentials, AWS_ENDPOINT_URL, fast polls."""
    from ansible.module_utils.sdcloud import base, clients, errors  # noqa: PLC0415

    ctl = shared_server()
    ctl.reset()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", ctl.url)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(base, "POLL_INTERVAL", 0.02)
    monkeypatch.setattr(errors, "RETRY_BASE", 0.01)
    clients._AWS_SESSIONS.clear()
    return ctl


def RETRY_TRIES() -> int:  # noqa: N802 - the value errors.RETRY_TRIES has now, for tests that count calls
    from ansible.module_utils.sdcloud import errors  # noqa: PLC0415

    return errors.RETRY_TRIES


def load_module(name: str):
    """Import plugins/modules/<name>.py (the project is not a collection, so it has no package path)."""
    import importlib.util  # noqa: PLC0415

    path = HERE.parents[1] / "plugins" / "modules" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sdcloud_module_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ModuleExit(Exception):
    def __init__(self, result: dict):
        super().__init__(result.get("msg"))
        self.result = result


class ModuleFail(ModuleExit):
    pass


def run_module(module_main, args: dict, check: bool = False, diff: bool = False) -> tuple:
    """Run an Ansible module's main() in-process with `args` (amazon.aws unit test style).
    Returns (failed, result)."""
    from unittest import mock  # noqa: PLC0415

    from ansible.module_utils import basic  # noqa: PLC0415
    from ansible.module_utils.testing import patch_module_args  # noqa: PLC0415

    def exit_json(self, **kwargs):
        raise ModuleExit(dict(kwargs, failed=False))

    def fail_json(self, msg, **kwargs):
        raise ModuleFail(dict(kwargs, msg=msg, failed=True))

    full = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    with patch_module_args(full), mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json):
        try:
            module_main()
        except ModuleFail as exc:
            return True, exc.result
        except ModuleExit as exc:
            return False, exc.result
    raise AssertionError("module returned without exit_json/fail_json")


if __name__ == "__main__":
    sys.exit(main())
