"""Helpers shared by the end-to-end tests: running a playbook, reading its recap, and using the
`ssh -L` tunnel command the summary prints the way a user would."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def local_env(tmp, net, name):
    """The environment a local-provider test runs the playbooks in: its own bridge (SDCLOUD_NET) and deployment
    name, the project's ansible.cfg and venv, no colour; a fresh SSH key path below `tmp`; the mirror of
    ../shared/upstream (and the fixture repositories) laid out in `tmp`/repos and served on the bridge."""
    e = dict(os.environ, SDCLOUD_NET=net, SDCLOUD_NAME=name, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
             ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PATH=str(ROOT / ".venv/bin") + ":" + os.environ["PATH"])
    e["SDCLOUD_TEST_KEY"] = str(tmp / "id_ed25519")
    clear_bridge(e)
    repos = tmp / "repos"
    subprocess.run([sys.executable, str(ROOT / "tests/fixtures/make_repos.py"), str(repos)], check=True, capture_output=True)
    subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "serve-git", str(repos)], check=True, env=e, capture_output=True)
    return e


def clear_bridge(env):
    """Remove what an earlier run left on env's bridge (SDCLOUD_NET): each e2e file owns its bridge, so anything on
    it at the start is a leftover of a run that was killed before its own cleanup (a machine's record and disk
    outlive the process that made them), and a test that asserts "nothing was created" would count it."""
    left = [m["name"] + " (created " + m.get("created", "?") + ")" for m in machines(env).values()]
    if left:
        print(f"--- bridge {env['SDCLOUD_NET']}: removing what an earlier run left: {', '.join(left)}")
    subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=env, check=True, capture_output=True)


def _play_cmd(name, args, vars_file):
    return ["ansible-playbook", str(ROOT / "playbooks" / name), "-e", "@" + str(ROOT / "tests/e2e" / vars_file), *args]


def failed_tasks(out: str, width: int = 1500) -> str:
    """The tasks that failed in a play's output, each as its TASK line and its fatal/failed result (cut to
    `width`), then the recap: what a failure report must show first (CI prints a failure's beginning and end
    only, and a play's tail is mostly the tasks that ran fine before or the teardown after)."""
    lines, found, task = out.splitlines(), [], ""
    for i, line in enumerate(lines):
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line
        elif re.match(r"^(fatal|failed): \[", line) or (not task and line.startswith("[ERROR]")):
            block = [line] + list(itertools.takewhile(lambda x: x.strip() and not x.startswith(("TASK [", "PLAY")),
                                                      lines[i + 1:i + 40]))
            found.append(task + "\n" + "\n".join(block)[:width])
    recap = out[out.rfind("PLAY RECAP"):] if "PLAY RECAP" in out else ""
    return "\n".join(found + [recap.strip()]).strip()


def _played(name, args, rc, took, out, *, label, check, tail):
    print(f"--- {label}{name} {' '.join(a for a in args if not a.startswith('{'))}: rc={rc} in {took:.1f}s")
    if check and rc != 0:
        pytest.fail(f"{name} failed (rc={rc}):\n{failed_tasks(out)}\n--- the output's tail:\n{out[-tail:]}")


def machines(env):
    """{name: machine} of the local machines and test hosts on env's bridge (`sdcloud-testhost list`)."""
    out = subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "list"], env=env, capture_output=True, text=True, check=True)
    return {m["name"]: m for m in json.loads(out.stdout)}


def run_play(env, name, *args, label="", check=True, tail=6000, vars_file="fixture-vars.yml"):
    """ansible-playbook playbooks/<name> with the test settings `vars_file` (tests/e2e/), as a user runs it.
    Returns (rc, output); with check, a non-zero rc fails the test showing the output's tail."""
    t0 = time.monotonic()
    res = subprocess.run(_play_cmd(name, args, vars_file), cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    out = res.stdout + res.stderr
    _played(name, args, res.returncode, time.monotonic() - t0, out, label=label, check=check, tail=tail)
    return res.returncode, out


@dataclasses.dataclass
class TimedRun:
    rc: int
    out: str
    lines: list  # (seconds since the start, line) as each line arrived
    wall: float  # seconds from starting ansible-playbook to its exit


def run_play_timed(env, name, *args, label="", check=True, tail=6000, vars_file="fixture-vars.yml"):
    """run_play, reading the output (stdout and stderr together) line by line as it comes, so that a test can
    tell the lines printed while a task ran from those printed when it ended, and the play's wall time."""
    t0 = time.monotonic()
    proc = subprocess.Popen(_play_cmd(name, args, vars_file), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in proc.stdout]
    rc = proc.wait()
    wall = time.monotonic() - t0
    out = "\n".join(line for _t, line in lines)
    _played(name, args, rc, wall, out, label=label, check=check, tail=tail)
    return TimedRun(rc, out, lines, wall)


def task_lines(run, task):
    """The (time, line) pairs of the task whose banner starts with `TASK [<task>`, banner and result included."""
    start = next((i for i, (_t, line) in enumerate(run.lines) if line.startswith(f"TASK [{task}")), None)
    assert start is not None, f"no task {task!r} in the output:\n{run.out[-3000:]}"
    end = next((i for i in range(start + 1, len(run.lines)) if run.lines[i][1].startswith(("TASK [", "RUNNING HANDLER [", "PLAY "))),
               len(run.lines))
    return run.lines[start:end]


DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s$")


def seconds(text):
    """'1h02m03s', '5m02.1s', '12.3s' -> seconds."""
    m = DURATION.match(text)
    assert m, text
    return int(m.group(1) or 0) * 3600 + int(m.group(2) or 0) * 60 + float(m.group(3))


def timeline(out, header="Timeline of this run"):
    """The timeline a summary (or status.yml) printed: ([(phase, seconds, what), ...], total seconds)."""
    at = out.rfind(header)
    assert at >= 0, f"no {header!r} in the output:\n{out[-3000:]}"
    phases = []
    for line in out[at:].splitlines()[1:]:
        m = re.match(r"^\s+(\S.*?)\s{2,}(\S+s)(?:\s{2}(\S.*))?$", line)
        assert m, f"the timeline ends without a total: {line!r}"
        if m.group(1) == "total":
            return phases, seconds(m.group(2))
        phases.append((m.group(1), seconds(m.group(2)), m.group(3) or ""))
    raise AssertionError("the timeline ends without a total")


def recap_changed(out):
    """{host: changed count} from PLAY RECAP."""
    return {h: int(c) for h, c in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out, re.M)}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the summary's tunnel line, forwarding the first UI's port, with -p <port> for a host whose SSH is not on 22 (?:...: the
# groups stay 1 command, 2 options, 3 user, 4 host)
TUNNEL_RE = re.compile(r"^\s*(ssh -i \S+ (?:-p [0-9]+ )?((?:-o \S+ )*)-N -L [0-9]+:127\.0\.0\.1:[0-9]+ (?:-L \S+ )*(\S+)@(\S+))\s*$", re.M)


def local_forward(command, port, remote=None):
    """The summary's tunnel command (TUNNEL_RE's group 1) with one forward only: local `port` to the UI on
    remote port `remote` (default: the first the summary printed). The other UIs' forwards are dropped, so that
    a port taken on this computer (the UIs' own, e.g. 7860) cannot fail the tunnel."""
    words = command.split()
    remotes = [words[i + 1].rsplit(":", 1)[1] for i, w in enumerate(words) if w == "-L"]
    remote = str(remote or remotes[0])
    assert remote in remotes, f"the summary's tunnel forwards no port {remote}: {command}"
    kept = [w for i, w in enumerate(words) if w != "-L" and (i == 0 or words[i - 1] != "-L")]
    return kept[:-1] + ["-L", f"{port}:127.0.0.1:{remote}", kept[-1]]


def through_tunnel(out, ssh_opts=(), path="/system_stats", timeout=30, remote=None):
    """Run the `ssh -L` command the summary printed (on a free local port to the UI on remote port `remote`,
    default the first, with extra `ssh_opts`) and GET `path` through it. Returns (match, decoded JSON). The ssh
    process is always gone when this returns: ssh may miss a SIGTERM that lands while it handles the channel the
    request just closed (it then sits in poll() with no timeout), so a terminate that does not take within 5 s
    is followed by a kill."""
    m = TUNNEL_RE.search(out)
    assert m, "the summary must print an ssh -L command:\n" + out[-3000:]
    port = free_port()
    cmd = local_forward(m.group(1), port, remote)
    cmd[1:1] = ["-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", *ssh_opts]
    with tempfile.TemporaryFile() as err:
        tunnel = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                        return m, json.loads(r.read())
                except OSError as e:
                    if tunnel.poll() is not None or time.monotonic() > deadline:
                        err.seek(0)
                        pytest.fail(f"nothing answered through {' '.join(cmd)} ({e}); ssh "
                                    f"{'exited ' + str(tunnel.returncode) if tunnel.poll() is not None else 'still running'}, "
                                    f"its stderr: {err.read().decode(errors='replace')[-2000:]!r}")
                    time.sleep(0.3)
        finally:
            stop(tunnel)


def wait_port(port, proc, timeout=30):
    """Wait until 127.0.0.1:`port` accepts connections (e.g. an `ssh -L` tunnel); fail when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nothing listens on 127.0.0.1:{port} ({e}); the process exited {proc.poll()}")
            time.sleep(0.3)


def stop(proc, grace=5):
    """Terminate a child process, and kill it when it has not gone after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
