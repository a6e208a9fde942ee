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

provision.yml installs the REAL ComfyUI (../shared/upstream through the product's mirror setting,
tests/e2e/upstream-vars.yml) and then:
- ComfyUI answers through the tunnel the summary prints (with `-p <mapped port>`); app, venv and models are on
  the pod's volume (/workspace), by default;
- the pod was created with the start hook (RunPod: docker start command; vast.ai: onstart) and with SSH as its
  only exposed port (tunnel access);
- the re-run changes nothing;
- stop.yml stops the pod (its volume kept, its monthly cost said); start.yml starts it on a NEW SSH port, where
  the start hook has already brought ComfyUI back (supervisord started by the pod itself), and changes nothing;
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
API_KEY = "test-pod-api-key-not-a-secret"
START = "/workspace/sdcloud/supervisor/start"  # supervisord's start script on the volume (role base)
sys.path.insert(0, str(ROOT / "tests" / "standins"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import e2e_util  # noqa: E402
from e2e_util import recap_changed, run_play  # noqa: E402
from model_server import ModelServer  # noqa: E402
from podhost import PodHost  # noqa: E402
from runpod_server import RunpodStandin  # noqa: E402
from vast_server import VastStandin  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="pod-like hosts need root (systemd-nspawn)"),
]

MODEL = os.urandom(64 * 1024)


def _runpod_start(host, pod):
    """RunPod: the pod's docker start command replaces the image's CMD; its env is PID 1's."""
    host.set_command(pod["args"], {**pod["env"], **pod["_injected"]})
    host.start(ssh_port=pod["ssh"]["direct"]["port"])


def _vast_start(host, inst):
    """vast.ai: the image's start (sshd, the attached key), then onstart."""
    host.set_command("", {**inst["_injected"], **({"PUBLIC_KEY": inst["_ssh_keys"][0]} if inst["_ssh_keys"] else {})})
    host.set_onstart(inst["onstart"] or "")
    host.start(ssh_port=int(inst["ports"]["22/tcp"][0]["HostPort"]))


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
        "runpod", "podrp", RunpodStandin, "RUNPOD_API_KEY", "SDCLOUD_RUNPOD_ENDPOINT", _runpod_start,
        settings={"sdcloud_gpu": "nvidia-rtx-4090", "sdcloud_spot": False, "sdcloud_zones": ["US-KS-2"]},
        price="~$0.44/h (the price of the offer),", hook=f"bash -c '[ ! -x {START} ] || {START}; exec /start.sh'",
        create_path="/v2/pods", stop_path="POST /v2/pods/{id}/action",
        records=lambda standin: standin.pods, stopped=lambda pod: pod["status"] == "EXITED"),
    "vastai": Provider(
        "vastai", "podva", VastStandin, "VAST_API_KEY", "SDCLOUD_VAST_ENDPOINT", _vast_start,
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
    server = ModelServer(host=GATEWAY).start()
    try:
        # the pod's image: no key of the operator's until the provider brings it (an unrelated one, for the setup)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "image_key")], check=True)
        host.create((tmp / "image_key.pub").read_text(), str(tmp / "image_key"))
        standin.set_slots([f"{host.address}:{p}" for p in PORTS])
        standin.on_running = lambda record: prov.start(host, record)
        standin.on_stopped = standin.on_deleted = lambda _record: host.stop()
        server.add("/tiny.safetensors", data=MODEL)
        settings = tmp / "pod-vars.json"
        settings.write_text(json.dumps({
            "sdcloud_provider": prov.name, "sdcloud_ssh_key_path": env["SDCLOUD_TEST_KEY"], "sdcloud_disk_size_gb": 40,
            # the pod-like host has no GPU (a real pod does: the default is true on pods)
            "sdcloud_gpu_present": False, **prov.settings,
            "sdcloud_models": [{"name": "tiny.safetensors", "kind": "checkpoints", "sha256": hashlib.sha256(MODEL).hexdigest(),
                                "source": f"http://{GATEWAY}:{server.port}/tiny.safetensors"}]}))
        env.update({"SDCLOUD_INVENTORY_PROVIDERS": prov.name, "SDCLOUD_KNOWN_HOSTS": str(tmp / "known_hosts"),
                    prov.endpoint_var: standin.url, prov.key_var: API_KEY, "SDCLOUD_TEST_SETTINGS": str(settings)})
        yield prov, host, standin, env
    finally:
        # whatever the test reached, nothing is left: the stand-in's pods and the host behind them
        standin.on_running = standin.on_stopped = standin.on_deleted = None
        standin.stop()
        server.stop()
        host.destroy()
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=env, capture_output=True, check=False)


def play(env, name, *extra, check=True):
    return run_play(env, name, "-e", "@" + env["SDCLOUD_TEST_SETTINGS"], *extra, check=check, vars_file="upstream-vars.yml")


def test_pod_lifecycle(pod):
    prov, host, standin, env = pod
    name = prov.deployment

    # 1. provision: a pod is created, and ComfyUI answers through the printed tunnel, on the mapped SSH port
    _, out = play(env, "provision.yml")
    m, stats = e2e_util.through_tunnel(out)
    assert f" -p {PORTS[0]} " in m.group(1) and m.group(3) == "root" and m.group(4) == host.address, m.group(1)
    assert stats["system"]["comfyui_version"] == "0.3.64"
    (record,) = prov.records(standin).values()
    (create,) = [r["body"] for r in standin.requests if re.fullmatch(prov.create_path, r["path"]) and r["method"] != "GET"]
    if prov.name == "runpod":
        assert record["name"] == f"sdcloud:{name}" and record["dataCenterId"] == "US-KS-2"
        assert create["args"] == prov.hook, create
        assert create["ports"] == ["22/tcp"], "tunnel access exposes SSH only"
        assert create["mounts"]["persistent"] == {"size": 40, "path": "/workspace"}
    else:
        assert record["label"] == f"sdcloud:{name}" and record["geolocation"].endswith(", US")
        assert create["onstart"] == prov.hook, create
        assert create["env"] == "-p 22:22", "tunnel access exposes SSH only"
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
    assert recap_changed(started).get(name) == 0, started[-4000:]
    assert "Autostop: stops the pod through the %s API after 30 idle minutes" % prov.name in " ".join(started.split())

    # 5. autostop: 30 idle seconds (checked every 5 s); the pod stops itself through the API, with its own key
    _, short = play(env, "provision.yml", "-e", "autostop_idle_seconds=30", "-e", "autostop_interval_seconds=5")
    deadline = time.monotonic() + 150
    while not prov.stopped(prov.records(standin)[record["id"]]):
        if time.monotonic() > deadline:
            log = (host.workspace / "sdcloud/autostop/state/autostop.log")
            pytest.fail("the idle pod did not stop itself within 150 s; its autostop log:\n"
                        + (log.read_text()[-3000:] if log.exists() else "(none)") + "\n" + short[-2000:])
        time.sleep(2)
    method, path = prov.stop_path.split()
    calls = [r for r in standin.requests if r["method"] == method and r["path"] == path.format(id=record["id"])]
    assert calls and calls[-1]["key"] == "pod" and calls[-1]["status"] < 300, calls
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
