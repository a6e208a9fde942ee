"""End to end on the local provider: provision -> status -> stop -> start -> provision (0 changed) -> teardown.

The first provision is a cold install with a throttled model server: it checks that the long steps (uv
installing ComfyUI's environment, the model downloads) print progress lines while they run, that no line
carries a source's credentials, and that the summary's timeline covers every phase and adds up to the
play's wall time; status.yml shows that timeline again, and the converged re-run's says nothing changed.

Runs the real playbooks as a user would, on an isolated bridge (SDCLOUD_NET=7) and deployment name
(SDCLOUD_NAME=e2e), so it never touches a machine made by `make up`. ComfyUI is the real program:
../shared/upstream's ComfyUI, served on the bridge laid out like GitHub and reached through the product's
mirror setting (tests/e2e/upstream-vars.yml), its pinned Python environment from PyPI, run with --cpu.
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
NET = "7"
NAME = "e2e"
STATE = pathlib.Path("/var/lib/sdcloud/net" + NET)
GATEWAY = f"10.87.{NET}.1"
sys.path.insert(0, str(ROOT / "tests" / "standins"))

import e2e_util  # noqa: E402
from e2e_util import machines, recap_changed, run_play, run_play_timed, task_lines, timeline  # noqa: E402
from model_server import ModelServer  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="local machines need root (systemd-nspawn)"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    e = e2e_util.local_env(tmp, NET, NAME)
    # model files served on the bridge, as a CDN would (labelled stand-in, tests/standins/model_server.py)
    server = ModelServer(host=GATEWAY).start()
    for m in MODELS:
        server.add("/" + m["name"], data=DATA[m["name"]], **SERVE.get(m["name"], {}))
    models = tmp / "models.json"
    # the sources carry credentials (user:password@ and ?token=), as signed or private URLs do: none may be shown
    models.write_text(json.dumps({"sdcloud_models": [
        dict(m, source=f"http://sdcloud:{SECRETS[0]}@{GATEWAY}:{server.port}/{m['name']}?token={SECRETS[1]}") for m in MODELS]}))
    e["SDCLOUD_TEST_MODELS"] = str(models)
    SERVERS[NET] = server
    yield e
    server.stop()
    # cleanup that runs even when a step failed: delete the machine, the bridge and what we started
    subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=e, capture_output=True, check=False)


def play(env, name, *extra, check=True, run=run_play):
    return run(env, name, "-e", json.dumps({"sdcloud_ssh_key_path": env["SDCLOUD_TEST_KEY"]}),
               "-e", "@" + env["SDCLOUD_TEST_MODELS"], *extra, check=check, vars_file="upstream-vars.yml")


# The two ComfyUI commits ../shared/upstream holds: the product default (v0.3.64) and the Krita plugin
# 1.35.0 pin (0.3.35). The mirror tags them pin-<upstream sha>.
DEFAULT_PIN, OTHER_PIN = ("a125cd84b054a57729b5eecab930ca9408719832", "0.3.64"), ("5a87757ef96f807cf1cf5b41c55a0a84c9551f20", "0.3.35")
CORE_NODES = {"KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEDecode", "EmptyLatentImage", "SaveImage", "LoadImage"}


# Four labelled test "models": one small, one that the server cuts off mid-file once (the sync must
# resume it with a Range request, not start over), one checked by sha256, and one of 16 MiB, which the
# first provision fetches from a throttled server (THROTTLE per connection) for ~10 s of progress lines.
DATA = {"tiny.safetensors": os.urandom(64 * 1024), "cutoff.safetensors": os.urandom(3 * 1024 * 1024),
        "lora.safetensors": os.urandom(512 * 1024), "big.safetensors": os.urandom(16 * 1024 * 1024)}
SERVE = {"cutoff.safetensors": {"drop_after": 1024 * 1024, "drop_times": 1}}
MODELS = [{"name": n, "kind": k, "sha256": hashlib.sha256(DATA[n]).hexdigest()}
          for n, k in (("tiny.safetensors", "checkpoints"), ("cutoff.safetensors", "checkpoints"), ("lora.safetensors", "loras"),
                       ("big.safetensors", "checkpoints"))]
THROTTLE = 256 * 1024  # bytes/s per connection: big.safetensors on 8 connections ~8 s, cutoff.safetensors on one ~12 s
SECRETS = ("e2e-pass-5f3a91", "e2e-token-9c1d27")
SERVERS = {}
# every phase of a provision (the roles' phases in configure.yml's order)
PHASES = {"start", "preflight", "machine", "SSH ready", "facts", "system", "driver", "CUDA", "ComfyUI install",
          "ComfyUI first answer", "AUTOMATIC1111 install", "models", "proxy", "autostop", "firewall", "summary"}


def check_timeline(run, machine, header="Timeline of this run"):
    """The summary's timeline lists every phase once, from the start to the summary, says what happened to the
    machine, and its phases add up to its total, which is the play's wall time when the summary read it."""
    phases, total = timeline(run.out, header)
    names = [re.sub(r" \(.*\)$", "", p) for p, _s, _w in phases]
    # "facts" only where the fact cache has none for the machine (gathering = smart)
    assert sorted(names) == sorted(set(names)) and set(names) | {"facts"} == PHASES, phases
    assert names[:4] == ["start", "preflight", "machine", "SSH ready"] and names[-1] == "summary", phases
    assert dict((re.sub(r" \(.*\)$", "", p), p) for p, _s, _w in phases)["machine"] == f"machine ({machine})", phases
    assert abs(sum(s for _p, s, _w in phases) - total) <= 0.1 * len(phases), (phases, total)
    # the timeline is the one of the moment the summary read it: the play's wall time then, a few tasks before its end
    read = next(t for t, line in run.lines if line.startswith("TASK [Read this run's timeline]"))
    assert abs(read - total) <= 2 and total <= run.wall <= total + 15, (read, total, run.wall, phases)
    return {re.sub(r" \(.*\)$", "", p): (s, w) for p, s, w in phases}


def keep(env, name, run):
    """The play's output with each line's arrival time, next to the test's key (for a look after a failure)."""
    path = pathlib.Path(env["SDCLOUD_TEST_KEY"]).parent / f"{name}.log"
    path.write_text("".join(f"{t:7.1f} {line}\n" for t, line in run.lines))


def progress_while_running(run, task, pattern):
    """The progress lines of a long task: at least two polls' worth, matching `pattern`, the first well before the
    task's result (they appear while it runs, not only at its end), in order."""
    lines = task_lines(run, task)
    end = next(t for t, line in lines if re.match(r"^(ok|changed): \[", line))
    shown = [(t, line) for t, line in lines if re.match(rf"^\[{NAME}\] \d\d:\d\d:\d\d ", line)]
    matching = [(t, line) for t, line in shown if re.search(pattern, line)]
    assert len({round(t) for t, _l in matching}) >= 2, f"{task}: progress from one poll only:\n" + "\n".join(ln for _t, ln in lines)
    assert matching[0][0] <= end - 4, f"{task}: the first progress line came only {end - matching[0][0]:.1f}s before its end"
    assert [t for t, _l in shown] == sorted(t for t, _l in shown)
    return [line for _t, line in shown]


def ssh(env, ip, command):
    res = subprocess.run(["ssh", "-i", env["SDCLOUD_TEST_KEY"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          "-o", "LogLevel=ERROR", "root@" + ip, command], capture_output=True, text=True, check=True, timeout=60)
    return res.stdout.strip()


def through_tunnel(out):
    """The summary's `ssh -L` command (the machine's host key is new to this test: not pinned) -> /system_stats."""
    return e2e_util.through_tunnel(out, ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])[1]


@pytest.mark.parametrize(("extra", "needle"), [
    ({"sdcloud_provider": "gcpp"}, "sdcloud_provider is 'gcpp': set it to one of local, static, gcp, aws"),
    ({"sdcloud_spot": "yes"}, "sdcloud_spot is \"yes\" (str): it must be a YAML boolean"),
    ({"sdcloud_ssh_cidrs": ["10.0.0.1/8"]}, "sdcloud_ssh_cidrs must be a list of CIDRs"),
    ({"sdcloud_ssh_cidrs": ["0.0.0.0/0"]}, "would open the machine to everyone"),
    ({"sdcloud_ui": ["comfy"]}, "sdcloud_ui is ['comfy']: list one or more of comfyui, a1111"),
    ({"sdcloud_autostop_idle_minutes": -5}, "sdcloud_autostop_idle_minutes is -5: give a whole number of minutes"),
    ({"sdcloud_autostop_idle_minutes": "soon"}, "sdcloud_autostop_idle_minutes is \"soon\": give a whole number"),
    ({"sdcloud_models": "tiny.safetensors"}, "sdcloud_models is a str, not a list"),
    ({"sdcloud_models": ["tiny.safetensors"]}, "the model list must be a list of {name, kind, source, sha256} mappings"),
    ({"sdcloud_models_manifest": "/nonexistent/models.yml"}, "sdcloud_models_manifest \"/nonexistent/models.yml\" is not a file"),
    ({"sdcloud_models_manifest": "/etc/hostname"}, "sdcloud_models_manifest \"/etc/hostname\" is not a YAML list of models"),
    ({"sdcloud_models": [{"name": "../../etc/x.safetensors", "kind": "loras", "source": "https://example.invalid/x"}]},
     "model names must be plain file names (no /, no leading dot, no ..): ../../etc/x.safetensors"),
    ({"sdcloud_git_mirror": "git.example.com/github"}, "sdcloud_git_mirror is \"git.example.com/github\": give the URL"),
    # a mirror that does not answer (a closed port on the test bridge): refused in seconds, naming the setting
    ({"sdcloud_git_mirror": f"git://{GATEWAY}:1/github/"}, "does not serve them: check sdcloud_git_mirror"),
])
def test_bad_input_fails_before_anything_is_created(env, extra, needle):
    t0 = time.monotonic()
    rc, out = play(env, "provision.yml", "-e", json.dumps(extra), check=False)
    assert rc != 0
    assert needle in out, out[-3000:]
    assert NAME not in machines(env)
    assert time.monotonic() - t0 < 60, "bad input must be refused in seconds"


def test_start_without_a_machine_creates_nothing(env):
    rc, out = play(env, "start.yml", check=False)
    assert rc != 0
    assert f"start.yml starts the machine of deployment {NAME} on local, and there is none" in out, out[-3000:]
    assert NAME not in machines(env)


def test_lifecycle(env):
    # 1. provision: a machine, ComfyUI answering through the tunnel the summary prints; the models come
    # from a throttled server, so that their download takes a few polls
    server = SERVERS[NET]
    server.rate = THROTTLE
    first = play(env, "provision.yml", run=run_play_timed)
    server.rate = None
    keep(env, "provision-1", first)
    out = first.out
    uv = progress_while_running(first, "comfyui : Install the Python environment into the venv, showing uv's progress", r" uv: ")
    # from the package cache the test hosts share: nothing to fetch, the install counts what is in place
    assert any(re.search(r"uv: installing (\d+) packages into the venv: \d+ of \1 in place", ln) for ln in uv), "\n".join(uv)
    downloads = progress_while_running(first, "models : Download and verify model files, showing their progress", r" all: ")
    done = [float(m.group(1)) for m in (re.search(r" all: .*\(([\d.]+)%\) [\d.]+ MiB/s ETA", line) for line in downloads) if m]
    assert done == sorted(done) and done[0] < 100, "\n".join(downloads)
    assert any(re.search(r"checkpoints/big\.safetensors: [\d.]+ MB/16\.8 MB \([\d.]+%\) [\d.]+ MiB/s ETA \S+ connections=8", line)
               for line in downloads), "\n".join(downloads)
    assert not any(s in out for s in SECRETS), "a source's credentials were printed"
    phases = check_timeline(first, "created")
    assert phases["ComfyUI install"][1].endswith("changed") and phases["models"][1].endswith("changed"), phases
    assert phases["CUDA"][1] == "skipped" and phases["AUTOMATIC1111 install"][1] == "skipped", phases
    assert machines(env)[NAME]["state"] == "running"
    assert re.search(r"Autostop: powers off after 30 (idle )?minutes", out), out[-3000:]
    stats = through_tunnel(out)
    assert stats["system"]["comfyui_version"] == DEFAULT_PIN[1]
    assert "--cpu" in stats["system"]["argv"]
    ip = machines(env)[NAME]["address"]
    nodes = json.loads(ssh(env, ip, "curl -fsS --max-time 30 http://127.0.0.1:8188/object_info"))
    assert set(nodes) >= CORE_NODES, CORE_NODES - set(nodes)
    # models: downloaded on the server, verified, and seen by ComfyUI in the shared model folders
    listed = json.loads(ssh(env, ip, "curl -fsS http://127.0.0.1:8188/models/checkpoints"))
    assert {"tiny.safetensors", "cutoff.safetensors", "big.safetensors"} <= set(listed), listed
    assert ssh(env, ip, "sha256sum /opt/sdcloud/models/loras/lora.safetensors").split()[0] == MODELS[2]["sha256"]
    cut = [r for r in server.requests("/cutoff.safetensors") if r["method"] == "GET"]
    resumed = [r for r in cut[1:] if re.match(r"bytes=[1-9]\d*-", r["range"] or "")]
    assert resumed, f"the cut-off file must be resumed with a Range request: {cut}"
    assert sum(r["sent"] for r in cut) < len(DATA["cutoff.safetensors"]) * 1.5, "resume must not start over"
    assert not ssh(env, ip, "ls -A /opt/sdcloud/models/checkpoints | grep -v safetensors || true")
    server.clear()

    # 2. status: the machine and its service, and the first provision's timeline, as the summary showed it
    _, out = play(env, "status.yml")
    assert re.search(rf"^\s*{NAME}: running on local", out, re.M), out[-3000:]
    assert re.search(r"^\s*comfyui: running", out, re.M), out[-3000:]
    assert timeline(out, "Timeline of the last provision") == timeline(first.out), out[-3000:]

    # 3. stop: machine off, disk kept
    play(env, "stop.yml")
    m = machines(env)[NAME]
    assert m["state"] == "stopped"
    assert (STATE / "machines" / NAME / "upper" / "opt/comfyui/app/main.py").exists(), "the disk must survive a stop"
    _, out = play(env, "status.yml")
    assert re.search(rf"^\s*{NAME}: stopped on local", out, re.M), out[-3000:]

    # 4. start: back with the same disk
    started = play(env, "start.yml", run=run_play_timed)
    keep(env, "start", started)
    assert machines(env)[NAME]["state"] == "running"
    assert through_tunnel(started.out)["system"]["comfyui_version"] == DEFAULT_PIN[1]
    check_timeline(started, "started")

    # 5. provision again: converged, nothing changes, and it says so, in the timeline too
    again = play(env, "provision.yml", run=run_play_timed)
    keep(env, "provision-2", again)
    out = again.out
    changed = recap_changed(out)
    assert changed and all(v == 0 for v in changed.values()), changed
    assert "sdcloud: 0 changed tasks" in out
    assert server.requests() == [], "a converged re-run downloads nothing"
    phases = check_timeline(again, "already running")
    assert all(not what.endswith("changed") or what == "nothing changed" for _s, what in phases.values()), phases

    # a changed sha256 re-fetches only that file (the server now serves new content for it)
    new = os.urandom(64 * 1024)
    server.add("/tiny.safetensors", data=new)
    models = json.loads(pathlib.Path(env["SDCLOUD_TEST_MODELS"]).read_text())
    models["sdcloud_models"][0]["sha256"] = hashlib.sha256(new).hexdigest()
    changed_models = pathlib.Path(env["SDCLOUD_TEST_MODELS"]).with_name("models2.json")
    changed_models.write_text(json.dumps(models))
    play(env, "sync_models.yml", "-e", "@" + str(changed_models))
    assert {r["path"] for r in server.requests()} == {"/tiny.safetensors"}
    assert ssh(env, ip, "sha256sum /opt/sdcloud/models/checkpoints/tiny.safetensors").split()[0] == hashlib.sha256(new).hexdigest()
    server.add("/tiny.safetensors", data=DATA["tiny.safetensors"])

    # 6. a new pin converges: the checkout and the Python environment (another torch) move to it, and
    # the service restarts exactly once
    starts_before = ssh(env, ip, "journalctl -u comfyui -o cat | grep -c '^Starting server'")
    other = {"comfyui_version": "pin-" + OTHER_PIN[0], "comfyui_pip_lock": OTHER_PIN[0]}
    moved = play(env, "provision.yml", "-e", json.dumps(other), run=run_play_timed)
    keep(env, "provision-pin", moved)
    out = moved.out
    assert recap_changed(out).get(NAME, 0) > 0
    assert through_tunnel(out)["system"]["comfyui_version"] == OTHER_PIN[1]
    nodes = json.loads(ssh(env, ip, "curl -fsS --max-time 30 http://127.0.0.1:8188/object_info"))
    assert set(nodes) >= CORE_NODES, CORE_NODES - set(nodes)
    lock_torch = re.search(r"^torch==(\S+)", (ROOT / "roles/comfyui/files/pip" / (OTHER_PIN[0] + ".txt")).read_text(), re.M).group(1)
    # PyPI's torch is the CUDA build, e.g. 2.7.0+cu126
    assert ssh(env, ip, "/opt/comfyui/venv/bin/python -c 'import torch; print(torch.__version__)'").split("+")[0] == lock_torch
    starts_after = ssh(env, ip, "journalctl -u comfyui -o cat | grep -c '^Starting server'")
    assert int(starts_after) == int(starts_before) + 1, (starts_before, starts_after)

    # 7. a service that does not come up fails the play early (a crash loop, well before the deadline),
    # with its journal in the message (the version stays: only the flag changes)
    t0 = time.monotonic()
    rc, out = play(env, "provision.yml", "-e", json.dumps({**other, "comfyui_extra_args": ["--no-such-flag"], "comfyui_wait_timeout": 300}),
                   check=False)
    assert rc != 0
    assert "ComfyUI (unit comfyui) crash-looped while waiting for http://127.0.0.1:8188/system_stats" in out, out[-3000:]
    assert "unrecognized arguments: --no-such-flag" in out, out[-3000:]
    assert time.monotonic() - t0 < 200, "a crash loop must fail the wait long before its 300 s deadline"

    # 8. teardown: nothing left - no machine, no overlay, no bridge, no process we started
    _, out = play(env, "teardown.yml")
    assert f"nothing of {NAME} is left" in out
    assert NAME not in machines(env)
    assert not (STATE / "machines" / NAME).exists()
    assert str(STATE) not in pathlib.Path("/proc/mounts").read_text()
    assert not pathlib.Path("/sys/class/net/sdcloud" + NET).exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    stray = [ln for ln in ps.splitlines() if str(STATE) in ln or f"10.87.{NET}." in ln]
    assert not stray, "stray processes:\n" + "\n".join(stray)
