"""End to end on a pod-like host through the `static` provider: a container without systemd, sudo or CAP_NET_ADMIN.

The host is tests/e2e/podhost.py's stand-in of a RunPod / vast.ai pod (PID 1 a start script running sshd on a
mapped port, Docker's default capabilities, root only, no sudo, /workspace bind-mounted from this computer) on the
bridge SDCLOUD_NET=13, listed as a static host. provision.yml installs the REAL ComfyUI (../shared/upstream through
the product's mirror setting, tests/e2e/upstream-vars.yml, as test_local_e2e.py does) and AUTOMATIC1111's labelled
stand-in (tests/fixtures/a1111-standin, tests/e2e/a1111-standin-vars.yml: the webui itself cannot run here) with
sdcloud_persistent_dir=/workspace, and then:
- both UIs answer through the tunnel the summary prints (with `-p <port>`); apps, venvs and models are under
  /workspace; nothing of systemd, the firewall or autostop was set up, and the summary says so once;
- the re-run changes nothing;
- status.yml reports both UIs from supervisord, "up since" supervisord's start;
- the container restarts (a new PID 1, the service users gone) and the start hook line the summary printed
  makes the users again and brings both UIs back;
- a crash (kill -9) is restarted by supervisord;
- teardown.yml says the host keeps running and forgets its pinned host key; with sdcloud_teardown_uninstall it
  removes what sdcloud installed (the UIs' apps, venvs and users, supervisord) and keeps the models.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NET = "13"
NAME = "podtest"
PORT = 2222  # the "mapped" SSH port
GATEWAY = f"10.87.{NET}.1"
sys.path.insert(0, str(ROOT / "tests" / "standins"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import e2e_util  # noqa: E402
from e2e_util import recap_changed, run_play  # noqa: E402
from model_server import ModelServer  # noqa: E402
from podhost import DOCKER_CAPEFF, PodHost  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="pod-like hosts need root (systemd-nspawn)"),
]

MODEL = os.urandom(64 * 1024)
SUPERVISOR = "/workspace/sdcloud/supervisor"
CTL = f"{SUPERVISOR}/venv/bin/supervisorctl -c {SUPERVISOR}/supervisord.conf"


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pod")
    env = e2e_util.local_env(tmp, NET, NAME)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", env["SDCLOUD_TEST_KEY"]], check=True)
    host = PodHost(int(NET), NAME + "-pod", ssh_port=PORT)
    host.destroy()  # one left by an interrupted run
    server = ModelServer(host=GATEWAY).start()
    try:
        host.create(pathlib.Path(env["SDCLOUD_TEST_KEY"] + ".pub").read_text(), env["SDCLOUD_TEST_KEY"])
        host.start()
        server.add("/tiny.safetensors", data=MODEL)
        inventory = tmp / "pod.sdcloud.yml"
        inventory.write_text(json.dumps({"plugin": "sdcloud", "deployment": NAME, "providers": ["static"], "static_hosts": [
            {"name": NAME, "address": host.address, "port": PORT, "user": "root", "ssh_private_key_file": env["SDCLOUD_TEST_KEY"]}]}))
        settings = tmp / "pod-vars.json"
        settings.write_text(json.dumps({
            "sdcloud_provider": "static", "sdcloud_ssh_key_path": env["SDCLOUD_TEST_KEY"], "sdcloud_persistent_dir": "/workspace",
            "sdcloud_models_dir": "/workspace/models", "sdcloud_ui": ["comfyui", "a1111"], "sdcloud_access": "tunnel",
            "sdcloud_models": [{"name": "tiny.safetensors", "kind": "checkpoints", "sha256": hashlib.sha256(MODEL).hexdigest(),
                                "source": f"http://{GATEWAY}:{server.port}/tiny.safetensors"}]}))
        # the project's inventory for its group_vars (listing no machine: providers from the env), ours for the host
        env.update(SDCLOUD_INVENTORY_PROVIDERS="static", SDCLOUD_KNOWN_HOSTS=str(tmp / "known_hosts"))
        env["SDCLOUD_TEST_ARGS"] = json.dumps(["-i", str(ROOT / "inventory/sdcloud.yml"), "-i", str(inventory), "-e", "@" + str(settings),
                                               "-e", "@" + str(ROOT / "tests/e2e/a1111-standin-vars.yml")])
        yield host, env
    finally:
        server.stop()
        host.destroy()
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=env, capture_output=True, check=False)


def play(env, name, *extra, check=True):
    return run_play(env, name, *json.loads(env["SDCLOUD_TEST_ARGS"]), *extra, check=check, vars_file="upstream-vars.yml")


def ssh(env, host, command, check=True):
    res = subprocess.run(["ssh", "-i", env["SDCLOUD_TEST_KEY"], "-p", str(PORT), "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "root@" + host.address, command],
                         capture_output=True, text=True, check=False, timeout=60)
    if check and res.returncode != 0:
        pytest.fail(f"{command} failed ({res.returncode}): {res.stdout[-2000:]} {res.stderr[-2000:]}")
    return res.stdout.strip()


UIS = {"comfyui": "http://127.0.0.1:8188/system_stats", "a1111": "http://127.0.0.1:7860/sdapi/v1/sd-models"}


def wait_ui(env, host, ui="comfyui", old_pid=None, timeout=120):
    """The UI's PID (supervisord's) once its API answers, from a process other than old_pid."""
    deadline = time.monotonic() + timeout
    while True:
        pid = ssh(env, host, f"{CTL} pid {ui}", check=False)
        up = ssh(env, host, f"curl -fsS --max-time 5 {UIS[ui]} >/dev/null && echo up", check=False)
        if pid.isdigit() and pid not in ("0", old_pid) and up == "up":
            return pid
        if time.monotonic() > deadline:
            log = ssh(env, host, f"tail -n 30 /workspace/{ui}/logs/{ui}.log /var/log/onstart.log", check=False)
            pytest.fail(f"{ui} did not come back within {timeout}s (pid {pid!r}, was {old_pid!r}):\n{log}")
        time.sleep(1)


def test_pod_lifecycle(pod):
    host, env = pod
    # the stand-in is what it claims: no systemd as init, Docker's capabilities, no sudo
    assert ssh(env, host, "cat /proc/1/comm; grep CapEff /proc/1/status; command -v sudo || echo no-sudo; "
                          "test -d /run/systemd/system || echo no-systemd").split() == [
        "start.sh", "CapEff:", "%016x" % DOCKER_CAPEFF, "no-sudo", "no-systemd"]

    # 1. provision through the static provider: both UIs answer through the printed tunnel, with -p
    _, out = play(env, "provision.yml")
    m, stats = e2e_util.through_tunnel(out)
    assert m.group(1).startswith(f"ssh -i {env['SDCLOUD_TEST_KEY']} -p {PORT} -o ") and m.group(4) == host.address, m.group(1)
    assert stats["system"]["comfyui_version"] == "0.3.64" and "--cpu" in stats["system"]["argv"]
    _, sd_models = e2e_util.through_tunnel(out, path="/sdapi/v1/sd-models", remote=7860)
    assert [x["filename"] for x in sd_models] == ["/workspace/models/checkpoints/tiny.safetensors"], sd_models
    # said once: what was not set up, and how the services come back after a restart
    start_hook = f"{SUPERVISOR}/start"
    assert out.count("Not set up on this host: the host firewall (no CAP_NET_ADMIN") == 1, out[-4000:]
    assert "time sync and unattended upgrades" in out and "the NVIDIA driver install" in out
    assert re.search(r"start hook .* must run:\n\s+" + re.escape(start_hook) + "\n", out), out[-4000:]
    assert "Autostop: off on this host" in out and "Autostop: powers off" not in out
    assert "sdcloud does not stop or delete a static host: it keeps running" in out

    # apps, venvs and models on the persistent volume; nothing of systemd, nftables or autostop installed
    workspace = host.workspace
    assert (workspace / "comfyui/app/main.py").is_file() and (workspace / "comfyui/venv/bin/python").exists()
    assert (workspace / "a1111/app/launch.py").is_file() and (workspace / "a1111/venv/bin/python").exists()
    assert (workspace / "models/checkpoints/tiny.safetensors").read_bytes() == MODEL
    assert ssh(env, host, "ls /etc/systemd/system/comfyui.service /etc/systemd/system/a1111.service /etc/nftables.conf "
                          "/usr/local/bin/sdcloud-autostop 2>/dev/null | wc -l") == "0"
    for ui in UIS:
        assert "RUNNING" in ssh(env, host, f"{CTL} status {ui}")
        assert ssh(env, host, f"stat -c %U /proc/$({CTL} pid {ui})") == ui
    # A1111 runs with the systemd unit's command line (roles/a1111/vars/main.yml: one owner for both)
    argv = ssh(env, host, f"tr '\\0' ' ' < /proc/$({CTL} pid a1111)/cmdline")
    assert argv.split()[:6] == ["/workspace/a1111/venv/bin/python", "launch.py", "--skip-prepare-environment", "--api", "--port", "7860"]
    assert "--ckpt-dir /workspace/models/checkpoints" in argv and "--use-cpu all" in argv, argv

    # 2. converged: 0 changed
    _, again = play(env, "provision.yml")
    assert recap_changed(again).get(NAME) == 0, again[-4000:]

    # 3. status: the services from supervisord, "up since" supervisord's start
    _, status = play(env, "status.yml")
    assert re.search(r"comfyui: RUNNING \(supervisord\)", status), status[-3000:]
    assert re.search(r"a1111: RUNNING \(supervisord\)", status), status[-3000:]
    started = ssh(env, host, "ps -o lstart= -p $(cat /run/sdcloud-supervisord.pid)")
    assert f"up since {started} (supervisord's start" in status, status[-3000:]

    # 4. the container restarts (a new PID 1, /run emptied) on a new container disk, as a RunPod pod's comes back
    # after a stop: the service users are gone (made here by deleting them), the volume kept. The start hook the
    # summary printed makes the users again with their uids and gids, and brings both UIs back.
    host.set_onstart(start_hook)
    old_pids = {ui: ssh(env, host, f"{CTL} pid {ui}") for ui in UIS}
    ids = {ui: ssh(env, host, f"id -u {ui}; id -g {ui}") for ui in UIS}
    ssh(env, host, f"{CTL} shutdown; sleep 2; " + " ".join(
        f"pkill -u {ui}; sleep 1; userdel {ui}; getent group {ui} && groupdel {ui}; id {ui} || true;" for ui in UIS))
    host.stop()
    host.start()
    pids = {ui: wait_ui(env, host, ui) for ui in UIS}
    assert all(pids[ui] != old_pids[ui] for ui in UIS)
    assert {ui: ssh(env, host, f"id -u {ui}; id -g {ui}") for ui in UIS} == ids, "the start hook makes the users again with their ids"

    # 5. a crash is restarted by supervisord
    ssh(env, host, f"kill -9 {pids['comfyui']}")
    wait_ui(env, host, "comfyui", old_pid=pids["comfyui"])

    # 6. teardown: the host keeps running (and billing), its pinned host key is forgotten; asked to, it removes what
    # sdcloud installed (the UIs' apps, venvs and users, supervisord), not the models
    def pinned():  # the entries are hashed (HashKnownHosts): ask ssh-keygen
        return subprocess.run(["ssh-keygen", "-F", f"sdcloud-static-{NAME}", "-f", env["SDCLOUD_KNOWN_HOSTS"]],
                              capture_output=True, text=True, check=False).stdout.strip()

    assert pinned()
    _, down = play(env, "teardown.yml", "-e", "sdcloud_teardown_uninstall=true")
    said = " ".join(down.split())
    assert f"{NAME} is a static host: sdcloud does not delete it; it keeps running (and billing, if rented)" in said, down[-3000:]
    assert "What sdcloud installed on it was removed, its models kept." in said
    assert not pinned()
    assert host.running()
    assert not any((workspace / d).exists() for d in ("comfyui", "a1111", "sdcloud/supervisor"))
    assert (workspace / "models/checkpoints/tiny.safetensors").read_bytes() == MODEL
    assert ssh(env, host, "id comfyui >/dev/null 2>&1 || id a1111 >/dev/null 2>&1 && echo user || echo no-user; "
                          "curl -s --max-time 5 http://127.0.0.1:8188/ >/dev/null && echo up || echo down; "
                          "curl -s --max-time 5 http://127.0.0.1:7860/ >/dev/null && echo up || echo down") == "no-user\ndown\ndown"
