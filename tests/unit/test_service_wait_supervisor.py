"""service_wait's supervisor mode: main() end to end against HTTP servers on 127.0.0.1 and a supervisorctl stand-in.

The stand-in (a shell script) prints what supervisorctl 4's `status <name>` prints - `<name> <STATE> <detail>`, the
state one of supervisor's process states (RUNNING, STARTING, BACKOFF, FATAL, EXITED, STOPPED, ...:
https://supervisord.org/subprocess.html#process-states), `<name>: ERROR (no such process)` for a program it has not
loaded, and `unix:///... no such file` when supervisord does not run - read from a file the test rewrites.
"""

from __future__ import annotations

import pathlib
import sys
import threading

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "unit"))

from test_service_wait import EARLY, LONG, Server, count_lines, refusing_port, run, wait_until, write_atomically  # noqa: E402

LOG = ["Python version: 3.11.2", "Traceback (most recent call last):", "ModuleNotFoundError: No module named 'torch'"]


class FakeSupervisorctl:
    """TEST STAND-IN of supervisorctl: prints the line in `state`, exits 0 for RUNNING and 3 otherwise (supervisorctl
    4's status exit codes; 4 when the program is unknown, 7 when supervisord does not answer); each call is counted
    in `calls`, so a test changes the state after the module has seen it, not after a guessed time."""

    def __init__(self, tmp_path, line):
        self.state = tmp_path / "state"
        self.calls = tmp_path / "calls"
        self.set(line)
        self.path = tmp_path / "supervisorctl"
        self.path.write_text('#!/bin/sh\nline="$(cat %s)"\necho "$line"\necho "$line" >> %s\n'
                             'case "$line" in *RUNNING*) exit 0;; *"no such process"*) exit 4;; unix:*) exit 7;; esac\nexit 3\n'
                             % (self.state, self.calls))
        self.path.chmod(0o755)
        self.log = tmp_path / "comfyui.log"
        self.log.write_text("an earlier start\n")

    def set(self, line):
        write_atomically(self.state, line + "\n")

    def seen(self, n):
        """Wait until the module has asked n times."""
        wait_until(lambda: count_lines(self.calls) >= n)

    def args(self, url, **extra):
        return dict({"url": url, "program": "comfyui", "supervisorctl": [str(self.path), "-c", "/etc/s.conf"],
                     "log_file": str(self.log), "name": "ComfyUI", "timeout": LONG, "interval": 0.2}, **extra)


def test_running_program_answers(tmp_path):
    fake = FakeSupervisorctl(tmp_path, "comfyui                          RUNNING   pid 4242, uptime 0:00:03")
    with Server([(200, {"system": {}})]) as srv:
        failed, res, _ = run(fake.args(srv.url, return_content=True))
    assert not failed, res
    assert res["json"] == {"system": {}} and res["program_status"] == {"state": "RUNNING", "detail": "pid 4242, uptime 0:00:03"}


def test_fatal_program_fails_at_once_with_its_log(tmp_path):
    fake = FakeSupervisorctl(tmp_path, "comfyui                          FATAL     Exited too quickly (process log may have details)")
    with fake.log.open("a") as f:
        f.write("\n".join(LOG) + "\n")
    with refusing_port() as url:
        failed, res, took = run(fake.args(url))
    assert failed and took < EARLY, res
    assert res["msg"].startswith("ComfyUI (supervisord program comfyui) failed while waiting for %s: supervisord reports it "
                                 "FATAL (Exited too quickly (process log may have details): it gave up starting it; restarted "
                                 "0 times), so it gave up after " % url), res["msg"]
    # nothing was logged since the wait began: the log's last lines, the earlier start's too
    assert "Nothing in its log since the wait began; its last 4 lines (tail -n 60 %s):" % fake.log in res["msg"]
    assert LOG[2] in res["msg"]


def test_crash_loop_counts_backoff_and_new_pids(tmp_path):
    fake = FakeSupervisorctl(tmp_path, "comfyui                          RUNNING   pid 100, uptime 0:00:01")

    def crash():
        fake.seen(1)  # it saw pid 100
        with fake.log.open("a") as f:
            f.write("\n".join(LOG) + "\n")
        fake.set("comfyui                          BACKOFF   Exited too quickly (process log may have details)")
        fake.seen(count_lines(fake.calls) + 1)  # it saw the backoff
        fake.set("comfyui                          RUNNING   pid 101, uptime 0:00:00")

    flipper = threading.Thread(target=crash, daemon=True)
    with refusing_port() as url:
        flipper.start()
        failed, res, took = run(fake.args(url))
    flipper.join()
    assert failed and took < EARLY + 1, res
    assert res["msg"].startswith("ComfyUI (supervisord program comfyui) crash-looped while waiting for %s: it exited 2 times "
                                 "(supervisord reports it RUNNING - pid 101, uptime 0:00:00), so it gave up after " % url), res["msg"]
    assert "Its log since the wait began (%s):\n%s" % (fake.log, "\n".join(LOG)) in res["msg"]
    assert "an earlier start" not in res["msg"]
    assert res["exits"] == 2


def test_one_restart_that_comes_up_is_waited_for(tmp_path):
    fake = FakeSupervisorctl(tmp_path, "comfyui                          BACKOFF   Exited too quickly (process log may have details)")

    def recover():
        fake.seen(1)  # it saw the backoff
        fake.set("comfyui                          RUNNING   pid 7, uptime 0:00:00")

    flipper = threading.Thread(target=recover, daemon=True)
    # it answers once the module has seen it RUNNING again
    with Server([(200, {"ok": True})], listen_when=lambda: fake.calls.exists() and "RUNNING" in fake.calls.read_text()) as srv:
        flipper.start()
        failed, res, _ = run(fake.args(srv.url))
    flipper.join()
    assert not failed, res
    assert res["exits"] == 1


def test_unknown_program_and_no_supervisord_fail_at_once(tmp_path):
    fake = FakeSupervisorctl(tmp_path, "comfyui: ERROR (no such process)")
    with refusing_port() as url:
        failed, res, took = run(fake.args(url))
        assert failed and took < EARLY, res
        assert res["msg"].startswith("ComfyUI (supervisord program comfyui) is not a program supervisord has loaded "
                                     "(comfyui: ERROR (no such process)), so nothing will answer on %s; gave up at once." % url)
        fake.set("unix:///run/sdcloud-supervisor.sock no such file")
        failed, res, took = run(fake.args(url))
    assert failed and took < EARLY, res
    assert res["msg"] == ("ComfyUI (supervisord program comfyui) cannot be checked: `%s -c /etc/s.conf status comfyui` did not "
                          "reach supervisord (unix:///run/sdcloud-supervisor.sock no such file), so nothing will start it; "
                          "gave up at once. Start supervisord (the pod's start hook runs it)." % fake.path)


def test_stopped_program_fails_and_deadline_names_the_state(tmp_path):
    fake = FakeSupervisorctl(tmp_path, "comfyui                          EXITED    Dec 02 03:00 AM")
    with refusing_port() as url:
        failed, res, took = run(fake.args(url))
        assert failed and took < EARLY, res
        assert "stopped while waiting for %s: supervisord reports it EXITED (Dec 02 03:00 AM) and nothing restarts it" % url in res["msg"]
        fake.set("comfyui                          STARTING  ")
        failed, res, took = run(fake.args(url, timeout=1.0))
    assert failed and 1.0 <= took < 3.0, res
    assert "did not answer on %s within 1s" % url in res["msg"]
    assert "supervisord reports program comfyui STARTING, restarted 0 times during the wait." in res["msg"]


def test_program_needs_supervisorctl(tmp_path):
    failed, res, _ = run({"url": "http://127.0.0.1:1/", "program": "comfyui"})
    assert failed and res["msg"].startswith("program comfyui was given without supervisorctl: give the supervisorctl command line")
