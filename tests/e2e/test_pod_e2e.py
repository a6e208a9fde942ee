"""End to end through `sdcloud_provider: runpod` and `vastai`: provision -> tunnel -> re-run -> stop -> start -> teardown.

The RunPod REST API v2 and the vast.ai REST API are tests/standins/runpod_server.py and vast_server.py (TEST STAND-INS,
written from the providers' public API references; see their docstrings), on 127.0.0.1. Each pod they create is
backed by a real pod-like test host (tests/e2e/podhost.py: a container whose PID 1 is a start script running sshd,
Docker's default capabilities, root only, no sudo, /workspace bind-mounted) on the bridge SDCLOUD_NET=15: the
stand-in's hooks start it when the pod turns running, on the SSH port the stand-in mapped for that start, and stop
it when the pod stops or is deleted. Started the way each provider starts a container:
- RunPod: the pod's `args` are PID 1's command line (a docker start command replaces the image's CMD) and its
  `env` PID 1's environment (PUBLIC_KEY, which /start.sh adds to root's keys, as RunPod's images do);
- vast.ai: the image's own start (/start.sh: sshd, with the key attached through the API), then `onstart`.

provision.yml, with public access, installs the REAL ComfyUI (../shared/upstream through the product's mirror
setting, tests/e2e/upstream-vars.yml) and sdcloud's nginx (under supervisord, its files on the volume), and then:
- ComfyUI answers through the tunnel the summary prints (with `-p <mapped port>`) and through the public URL it
  prints, with the token as the first path segment (what Krita is given), and refuses without it:
  - RunPod: `https://<pod id>-443.proxy.runpod.net`, through tests/standins/runpod_proxy.py (TEST STAND-IN of
    RunPod's HTTP proxy: TLS ends there, with a certificate of a test CA for *.proxy.runpod.net; plain HTTP to
    the pod's port), which curl reaches with --connect-to, as if DNS named it;
  - vast.ai: `https://<address>:<public port>`, the port vast mapped for 443, published into the pod the way
    Docker does (tests/standins/port_forward.py), checked against the certificate the summary says to trust;
- app, venv and models are on the pod's volume (/workspace), by default;
- the pod was created with the start hook (RunPod: docker start command; vast.ai: onstart) and with SSH and the
  proxy's port as its only exposed ports, never a UI's own;
- the re-run changes nothing;
- stop.yml stops the pod (its volume kept, its monthly cost said); start.yml starts it on a NEW SSH port (vast.ai:
  a new public port for the proxy too), where the start hook has already brought ComfyUI and nginx back
  (supervisord started by the pod itself), and changes nothing; the public URL it prints answers;
- autostop: with a short limit, the idle pod asks the provider's API to stop itself, with the pod-scoped key the
  stand-in put in its environment (RunPod RUNPOD_API_KEY + RUNPOD_POD_ID, vast.ai CONTAINER_API_KEY + CONTAINER_ID),
  not the account's; the stand-in listens on the bridge for that, where the pod reaches it;
- teardown.yml deletes the pod, lists again and finds nothing; the pod-like host is gone with it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NET = "15"
GATEWAY = f"10.87.{NET}.1"
PORTS = (40022, 40023)  # the SSH ports the stand-in maps, one start after the other
PROXY_PORTS = (40443, 41443)  # vast.ai: the public ports of the proxy's 443, one start after the other
API_KEY = "test-pod-api-key-not-a-secret"
START = "/workspace/sdcloud/supervisor/start"  # supervisord's start script on the volume (role base)
sys.path.insert(0, str(ROOT / "tests" / "standins"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import e2e_util  # noqa: E402
from e2e_util import recap_changed, run_play  # noqa: E402
from model_server import ModelServer  # noqa: E402
from podhost import PodHost, start_as_runpod, start_as_vast  # noqa: E402
from runpod_proxy import RunpodProxy, make_certificates  # noqa: E402
from runpod_server import RunpodStandin  # noqa: E402
from vast_server import VastStandin  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="pod-like hosts need root (systemd-nspawn)"),
]

MODEL = os.urandom(64 * 1024)


@dataclasses.dataclass
class Provider:
    name: str  # sdcloud_provider
    deployment: str
    standin: type
    key_var: str
    endpoint_var: str
    start: Callable  # (host, the stand-in's record of the pod) as it turns running
    settings: dict  # GPU, zone, spot
    price: str  # the summary's ~$x/h
    hook: str  # the start hook the pod is created with
    create_path: str  # the create request's path (a regular expression)
    stop_path: str  # how a pod stops itself (the request autostop sends)
    records: Callable  # (the stand-in) -> its pods by id
    stopped: Callable  # (a pod's record) -> whether the provider reports it stopped


PROVIDERS = {
    "runpod": Provider(
        "runpod", "podrp", RunpodStandin, "RUNPOD_API_KEY", "SDCLOUD_RUNPOD_ENDPOINT", start_as_runpod,
        settings={"sdcloud_gpu": "nvidia-rtx-4090", "sdcloud_spot": False, "sdcloud_zones": ["US-KS-2"]},
        price="~$0.44/h (the price of the offer),", hook=f"bash -c '[ ! -x {START} ] || {START}; exec /start.sh'",
        create_path="/v2/pods", stop_path="POST /v2/pods/{id}/action",
        records=lambda standin: standin.pods, stopped=lambda pod: pod["status"] == "EXITED"),
    "vastai": Provider(
        "vastai", "podva", VastStandin, "VAST_API_KEY", "SDCLOUD_VAST_ENDPOINT", start_as_vast,
        settings={"sdcloud_gpu": "nvidia-rtx-4090", "sdcloud_spot": False, "sdcloud_zones": ["US"]},
        price="~$0.41/h (the price of the offer) + $0.004 per GB downloaded", hook=f"[ ! -x {START} ] || {START}",
        create_path=r"/api/v0/asks/[0-9]+/", stop_path="PUT /api/v0/instances/{id}/",
        records=lambda standin: standin.instances, stopped=lambda inst: inst["actual_status"] == "exited"),
}


@pytest.fixture(scope="module", params=list(PROVIDERS))
def pod(request, tmp_path_factory):
    prov = PROVIDERS[request.param]
    tmp = tmp_path_factory.mktemp(prov.name)
    env = e2e_util.local_env(tmp, NET, prov.deployment)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", env["SDCLOUD_TEST_KEY"]], check=True)
    host = PodHost(int(NET), prov.deployment + "-pod", ssh_port=PORTS[0])
    host.destroy()  # one left by an interrupted run
    standin = prov.standin(host=GATEWAY, api_key=API_KEY).start()  # on the bridge: the pod's autostop calls it
    front = None
    server = ModelServer(host=GATEWAY).start()
    try:
        # the pod's image: no key of the operator's until the provider brings it (an unrelated one, for the setup)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "image_key")], check=True)
        host.create((tmp / "image_key.pub").read_text(), str(tmp / "image_key"))
        standin.set_slots([{"host": host.address, "ssh_port": p, "ports": {"443": q}} for p, q in zip(PORTS, PROXY_PORTS, strict=True)])
        # RunPod: its HTTP proxy in front of the pod (TLS with a test CA's certificate for *.proxy.runpod.net)
        front = RunpodProxy(standin, make_certificates(tmp)).start() if prov.name == "runpod" else None
        standin.on_running = lambda record: prov.start(host, record)
        standin.on_stopped = standin.on_deleted = lambda _record: host.stop()
        server.add("/tiny.safetensors", data=MODEL)
        settings = tmp / "pod-vars.json"
        settings.write_text(json.dumps({
            "sdcloud_provider": prov.name, "sdcloud_ssh_key_path": env["SDCLOUD_TEST_KEY"], "sdcloud_disk_size_gb": 40,
            "sdcloud_access": "public", "sdcloud_access_token_file": str(tmp / "pod.token"),
            # the pod-like host has no GPU (a real pod does: the default is true on pods)
            "sdcloud_gpu_present": False, **prov.settings,
            "sdcloud_models": [{"name": "tiny.safetensors", "kind": "checkpoints", "sha256": hashlib.sha256(MODEL).hexdigest(),
                                "source": f"http://{GATEWAY}:{server.port}/tiny.safetensors"}]}))
        env.update({"SDCLOUD_INVENTORY_PROVIDERS": prov.name, "SDCLOUD_KNOWN_HOSTS": str(tmp / "known_hosts"),
                    prov.endpoint_var: standin.url, prov.key_var: API_KEY, "SDCLOUD_TEST_SETTINGS": str(settings)})
        env["TMP"] = str(tmp)
        yield prov, host, standin, front, env
    finally:
        # whatever the test reached, nothing is left: the stand-in's pods and the host behind them
        standin.on_running = standin.on_stopped = standin.on_deleted = None
        standin.stop()
        server.stop()
        if front is not None:
            front.stop()
        host.destroy()
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=env, capture_output=True, check=False)


URL_RE = re.compile(r"^\s*ComfyUI: (https://\S+?)/?$", re.M)


def through_url(out, env, front, expect):
    """GET /system_stats through the public URL the summary printed (`expect`), with the token as the first path
    segment (what Krita is given) and without it. RunPod: through the proxy stand-in `front`, as if DNS named it;
    vast.ai: straight to the mapped port, trusting the certificate the summary names."""
    m = URL_RE.search(out)
    assert m and m.group(1) == expect, f"the summary must print ComfyUI at {expect}:\n" + out[-3000:]
    url, token = m.group(1), pathlib.Path(env["TMP"], "pod.token").read_text().strip()
    trust = (["--cacert", front.ca, "--connect-to", f"{url.split('/')[2]}:443:127.0.0.1:{front.port}"] if front
             else ["--cacert", str(pathlib.Path(env["TMP"], "pod.crt"))])

    def get(path):
        r = subprocess.run(["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", *trust, url + path],
                           capture_output=True, text=True, check=False)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body, r.stderr

    code, body, err = get(f"/{token}/system_stats")
    assert code == 200, (code, body[-500:], err)
    assert json.loads(body)["system"]["comfyui_version"] == "0.3.64"
    code, _, err = get("/system_stats")
    assert code == 401, f"without the token: {code} {err}"


def play(env, name, *extra, check=True):
    return run_play(env, name, "-e", "@" + env["SDCLOUD_TEST_SETTINGS"], *extra, check=check, vars_file="upstream-vars.yml")


def test_pod_lifecycle(pod):
    prov, host, standin, front, env = pod
    name = prov.deployment

    # 1. provision: a pod is created, and ComfyUI answers through the printed tunnel, on the mapped SSH port
    _, out = play(env, "provision.yml")
    m, stats = e2e_util.through_tunnel(out)
    assert f" -p {PORTS[0]} " in m.group(1) and m.group(3) == "root" and m.group(4) == host.address, m.group(1)
    assert stats["system"]["comfyui_version"] == "0.3.64"
    (record,) = prov.records(standin).values()
    public_url = (f"https://{record['id']}-443.proxy.runpod.net" if prov.name == "runpod"
                  else f"https://{host.address}:{PROXY_PORTS[0]}")
    through_url(out, env, front, public_url)
    assert "open to anyone who has the token" in " ".join(out.split()), out[-3000:]
    # sdcloud's own nginx under supervisord, every file of it on the volume; the token check root's alone
    assert (host.workspace / "sdcloud/proxy/nginx.conf").is_file()
    assert (host.workspace / "sdcloud/proxy/token.conf").stat().st_mode & 0o777 == 0o600
    (create,) = [r["body"] for r in standin.requests if re.fullmatch(prov.create_path, r["path"]) and r["method"] != "GET"]
    if prov.name == "runpod":
        assert record["name"] == f"sdcloud:{name}" and record["dataCenterId"] == "US-KS-2"
        assert create["args"] == prov.hook, create
        assert create["ports"] == ["22/tcp", "443/http"], "SSH and the proxy's port only, never a UI's own"
        assert front.requests and all(r[:2] == (record["id"], 443) for r in front.requests), front.requests
        assert "runpod's own, publicly trusted: nothing to import" in " ".join(out.split()), out[-3000:]
        assert create["mounts"]["persistent"] == {"size": 40, "path": "/workspace"}
    else:
        assert record["label"] == f"sdcloud:{name}" and record["geolocation"].endswith(", US")
        assert create["onstart"] == prov.hook, create
        assert create["env"] == "-p 22:22 -p 443:443", "SSH and the proxy's port only, never a UI's own"
        assert "Certificate: self-signed, a copy in " + env["TMP"] + "/pod.crt" in " ".join(out.split()), out[-3000:]
        assert "price" not in create, "sdcloud_spot: false rents on demand, no bid"
    assert prov.price in " ".join(out.split()), out[-4000:]
    assert re.search(r"start hook .* must run:\n\s+" + re.escape(START) + "\n", out), out[-4000:]
    # app, venv and models on the volume, by default
    assert (host.workspace / "comfyui/app/main.py").is_file() and (host.workspace / "comfyui/venv/bin/python").exists()
    assert (host.workspace / "models/checkpoints/tiny.safetensors").read_bytes() == MODEL
    assert (host.workspace / "sdcloud/supervisor/users.d/comfyui").read_text().split()[0] == "comfyui"

    # 2. converged: 0 changed
    _, again = play(env, "provision.yml")
    assert recap_changed(again).get(name) == 0, again[-4000:]

    # 3. stop: the pod is stopped, its volume kept and its cost said; the host behind it is down
    _, down = play(env, "stop.yml")
    assert prov.stopped(prov.records(standin)[record["id"]])
    assert re.search(rf"{name} is stopped; its disk is kept \(about \$[0-9.]+/month", " ".join(down.split())), down[-3000:]
    assert not host.running()

    # 4. start: a new SSH port; the pod's own start hook brought ComfyUI back before sdcloud logged in, so 0 changed
    _, started = play(env, "start.yml")
    m, stats = e2e_util.through_tunnel(started)
    assert f" -p {PORTS[1]} " in m.group(1), m.group(1)
    assert stats["system"]["comfyui_version"] == "0.3.64"
    # the proxy came back with the pod; on vast.ai at the port mapped for this start
    through_url(started, env, front, public_url if prov.name == "runpod" else f"https://{host.address}:{PROXY_PORTS[1]}")
    assert recap_changed(started).get(name) == 0, started[-4000:]
    assert "Autostop: stops the pod through the %s API after 30 idle minutes" % prov.name in " ".join(started.split())

    # 5. autostop: 30 idle seconds (checked every 5 s); the pod stops itself through the API, with its own key
    _, short = play(env, "provision.yml", "-e", "autostop_idle_seconds=30", "-e", "autostop_interval_seconds=5")
    # waited for by the request the pod sends: the stand-in records a request once it has answered it, after the
    # pod's state changed (and after its hook stopped the host behind it), so the state alone comes too early
    method, path = prov.stop_path.split()

    def pod_stops():
        return [r for r in standin.requests
                if r["method"] == method and r["path"] == path.format(id=record["id"]) and r["key"] == "pod"]

    deadline = time.monotonic() + 150
    while not pod_stops():
        if time.monotonic() > deadline:
            log = (host.workspace / "sdcloud/autostop/state/autostop.log")
            pytest.fail("the idle pod did not stop itself within 150 s; its autostop log:\n"
                        + (log.read_text()[-3000:] if log.exists() else "(none)") + "\n" + short[-2000:])
        time.sleep(2)
    calls = pod_stops()
    assert calls[-1]["status"] < 300 and prov.stopped(prov.records(standin)[record["id"]]), calls
    deadline = time.monotonic() + 30
    while host.running() and time.monotonic() < deadline:  # the stand-in's hook stops it as the pod stops
        time.sleep(0.5)
    assert not host.running()

    # 6. teardown: the pod is deleted, listed again, nothing left
    _, gone = play(env, "teardown.yml")
    assert f"nothing of {name} is left on {prov.name}" in gone, gone[-3000:]
    assert re.search(rf"listed again: 0 resources named sdcloud:{name} remain", gone), gone[-3000:]
    assert prov.records(standin) == {} and not host.running()
    assert all(r["key"] == "account" for r in standin.requests if r["key"] and r not in calls), \
        "sdcloud itself uses the account's key; only the pod uses its own"
