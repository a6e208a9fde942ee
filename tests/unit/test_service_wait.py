"""service_wait: main() end to end against HTTP servers on 127.0.0.1 and a fake systemctl/journalctl on PATH.

Timing asserts give their margins explicitly: a wait that must end at its deadline is checked against
[timeout, timeout + DEADLINE_SLACK); an early failure against a bound far below its timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import service_wait  # noqa: E402
from module_runner import run_main  # noqa: E402

DEADLINE_SLACK = 1.5  # a wait that hits its deadline ends within this many seconds after it
EARLY = 3.0  # an early failure ends within this many seconds, against a timeout of LONG
LONG = 30.0
JOURNAL = [
    "Jan 01 00:00:01 host python[4242]: usage: main.py [-h] [--listen [LISTEN]] [--port PORT]",
    "Jan 01 00:00:01 host python[4242]: main.py: error: unrecognized arguments: --no-such-flag",
    "Jan 01 00:00:01 host systemd[1]: comfyui.service: Main process exited, code=exited, status=2/INVALIDARGUMENT",
]


def write_atomically(path, text):
    """Replace path's content in one step: a stand-in script reading it never sees it empty or half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_until(predicate, limit=LONG):
    """Poll predicate until it holds (a step the module under test has taken, not a guess by wall clock)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the module under test did not get there within %gs" % limit)
        time.sleep(0.02)


def count_lines(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def run(args, check=False):
    """Run service_wait.main() with args; return (failed, result, seconds it took)."""
    started = time.monotonic()
    failed, result = run_main(service_wait.main, args, check=check)
    return failed, result, time.monotonic() - started


class Server:
    """HTTP server on 127.0.0.1; `answers` is a list of (status, body) served in turn, the last one repeated.

    With listen_after, the port is bound at once but listens only after that many seconds: until then a
    connection is refused, as for a service that is still starting. With listen_when (a function), it listens
    once that returns true: a start tied to what the module under test has done, not to the wall clock.
    """

    def __init__(self, answers, listen_after=0.0, listen_when=None):
        self.answers = list(answers)
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                status, body = server.answers[min(len(server.requests), len(server.answers)) - 1]
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.httpd.daemon_threads = True
        self.httpd.server_bind()
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d/system_stats" % self.port
        self.listen_after = listen_after
        self.listen_when = listen_when
        if not listen_after and not listen_when:
            self.httpd.server_activate()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        if self.listen_after:
            time.sleep(self.listen_after)  # the wait under test has a deadline far beyond this
        if self.listen_when:
            wait_until(self.listen_when)
        if self.listen_after or self.listen_when:
            self.httpd.server_activate()
        self.httpd.serve_forever(poll_interval=0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def refusing_port():
    """A port on 127.0.0.1 that refuses connections (bound, never listening)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield "http://127.0.0.1:%d/system_stats" % sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def silent_port():
    """A port that accepts connections (in the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield "http://127.0.0.1:%d/system_stats" % sock.getsockname()[1]
    finally:
        sock.close()


class FakeSystemd:
    """systemctl and journalctl stand-ins on PATH, driven by files in a temporary directory.

    `systemctl show` prints the unit state from the files and NRestarts from a counter file that grows
    by `step` on every call; journalctl prints JOURNAL and records its arguments.
    """

    def __init__(self, tmp_path, monkeypatch, *, active="activating", sub="running", step=0, result="success",
                 status="0", load="loaded", journal_since=True):
        self.dir = tmp_path / "systemd"
        bindir = tmp_path / "bin"
        self.dir.mkdir()
        bindir.mkdir()
        for key, value in {"active": active, "sub": sub, "step": step, "result": result, "status": status,
                           "load": load, "nrestarts": 0}.items():
            (self.dir / key).write_text("%s\n" % value)
        (self.dir / "journal").write_text("\n".join(JOURNAL) + "\n")
        d = self.dir
        self._script(bindir / "systemctl", f"""
            echo "$*" >> {d}/systemctl.calls
            n=$(cat {d}/nrestarts)
            s=$(cat {d}/step)
            [ "$s" = 0 ] || {{ echo $((n + s)) > {d}/n.new && mv {d}/n.new {d}/nrestarts; }}  # none when the test sets it
            echo "LoadState=$(cat {d}/load)"
            echo "ActiveState=$(cat {d}/active)"
            echo "SubState=$(cat {d}/sub)"
            echo "NRestarts=$n"
            echo "MainPID=4242"
            echo "ExecMainStatus=$(cat {d}/status)"
            echo "Result=$(cat {d}/result)"
        """)
        since_branch = "" if journal_since else 'case "$*" in *--since*) exit 0;; esac'
        self._script(bindir / "journalctl", f"""
            echo "$*" >> {d}/journalctl.calls
            {since_branch}
            cat {d}/journal
        """)
        monkeypatch.setenv("PATH", "%s%s%s" % (bindir, os.pathsep, os.environ["PATH"]))

    @staticmethod
    def _script(path, body):
        lines = [line.strip() for line in body.strip().splitlines()]
        path.write_text("#!/bin/sh\n" + "\n".join(lines) + "\n")
        path.chmod(0o755)

    def set(self, key, value):
        write_atomically(self.dir / key, "%s\n" % value)

    def calls(self, tool):
        path = self.dir / ("%s.calls" % tool)
        return path.read_text().splitlines() if path.exists() else []


# --- HTTP only -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", [False, True])
def test_answers_late(check):
    """Refused for 1 s, then 200: success, in check mode too (the module only reads), never changed."""
    with Server([(200, {"system": {"comfyui_version": "0.0.1"}})], listen_after=1.0) as srv:
        failed, res, took = run({"url": srv.url, "timeout": LONG, "interval": 0.2, "return_content": True}, check)
    assert not failed, res
    assert res["changed"] is False
    assert res["status"] == 200
    assert res["json"] == {"system": {"comfyui_version": "0.0.1"}}
    assert 1.0 <= res["elapsed"] < LONG / 2 and took < LONG / 2
    assert res["attempts"] >= 2
    assert res["restarts"] == 0


def test_503_then_200():
    with Server([(503, {"error": "loading"}), (503, {"error": "loading"}), (200, {"ok": True})]) as srv:
        failed, res, _ = run({"url": srv.url, "timeout": LONG, "interval": 0.1})
    assert not failed, res
    assert res["status"] == 200 and res["attempts"] == 3
    assert len(srv.requests) == 3
    assert "content" not in res and "json" not in res


def test_other_status_codes_and_plain_body():
    with Server([(401, b"login first")]) as srv:
        failed, res, _ = run({"url": srv.url, "timeout": LONG, "status_code": [200, 401], "return_content": True})
    assert not failed, res
    assert res["status"] == 401 and res["content"] == "login first" and "json" not in res


def test_no_proxy_even_when_the_environment_names_one(monkeypatch):
    with refusing_port() as proxy_url:
        monkeypatch.setenv("http_proxy", proxy_url.rsplit("/", 1)[0])
        monkeypatch.setenv("HTTP_PROXY", proxy_url.rsplit("/", 1)[0])
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        with Server([(200, {})]) as srv:
            failed, res, _ = run({"url": srv.url, "timeout": 5})
    assert not failed, res
    assert len(srv.requests) == 1


@pytest.mark.parametrize("port", [refusing_port, silent_port], ids=["refused", "silent"])
def test_never_answers_fails_at_the_deadline(port):
    """A deadline, not a count: a silent server's attempts (request_timeout 30) are cut to the time left."""
    timeout = 2.0
    with port() as url:
        failed, res, took = run({"url": url, "timeout": timeout, "interval": 0.5, "request_timeout": 30, "name": "ComfyUI"})
    assert failed
    assert timeout <= res["elapsed"] < timeout + DEADLINE_SLACK, res
    assert timeout <= took < timeout + DEADLINE_SLACK
    assert res["msg"].startswith("ComfyUI did not answer on %s within 2s: " % url), res["msg"]
    assert "the last one " in res["msg"]
    assert res["status"] == -1


def test_503_until_the_deadline_names_the_last_status():
    with Server([(503, {"error": "loading"})]) as srv:
        failed, res, _ = run({"url": srv.url, "timeout": 1.0, "interval": 0.2})
    assert failed
    assert res["msg"].startswith("Nothing answered on %s within 1s: " % srv.url), res["msg"]
    assert "the last one answered HTTP 503" in res["msg"]
    assert res["status"] == 503


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"interval": -1}, {"max_restarts": -1}, {"url": "ftp://x"},
                                 {"status_code": []}, {"journal_lines": 0}])
def test_bad_arguments(bad):
    failed, res, took = run(dict({"url": "http://127.0.0.1:1/"}, **bad))
    assert failed and took < EARLY, res


# --- with a systemd unit (fake systemctl / journalctl) ------------------------------------------------------------


@pytest.mark.parametrize("sub", ["running", "auto-restart"])
def test_crash_loop_fails_early_with_the_journal(tmp_path, monkeypatch, sub):
    """NRestarts grows by 1 per poll: with max_restarts 2 the wait gives up after about 2 polls, not at 30 s."""
    fake = FakeSystemd(tmp_path, monkeypatch, active="activating", sub=sub, step=1, result="exit-code", status="2")
    with refusing_port() as url:
        failed, res, took = run({"url": url, "unit": "comfyui", "name": "ComfyUI", "timeout": LONG, "interval": 0.2})
    assert failed
    assert took < EARLY and res["elapsed"] < EARLY, res
    msg = res["msg"]
    assert msg.startswith("ComfyUI (unit comfyui) crash-looped while waiting for %s: it exited 2 times" % url), msg
    assert "before the 30s deadline" in msg
    assert "unrecognized arguments: --no-such-flag" in msg
    assert all(line in msg for line in JOURNAL)
    assert res["exits"] == 2
    assert res["restarts"] == 2
    if sub == "auto-restart":
        assert "last exit: exit status 2, result exit-code" in msg
    assert fake.calls("systemctl")[0] == "show -p LoadState,ActiveState,SubState,NRestarts,MainPID,ExecMainStatus,Result comfyui"
    (journal_call,) = fake.calls("journalctl")
    assert journal_call.startswith("-u comfyui --no-pager --quiet -n 60 --since ")


def test_one_exit_is_counted_once(tmp_path, monkeypatch):
    """systemd bumps NRestarts when it schedules the restart, while SubState is still auto-restart: that is
    the same exit, not a second one (seen on a real host: a single exit was reported as a crash loop)."""
    fake = FakeSystemd(tmp_path, monkeypatch, active="activating", sub="auto-restart", result="exit-code", status="2")

    calls = fake.dir / "systemctl.calls"

    def seen(n):  # the module has looked at the unit n times (not a guess by wall clock: a loaded machine is slow)
        wait_until(lambda: count_lines(calls) >= n)

    def restart_once():
        seen(1)  # it saw the exit
        fake.set("nrestarts", 1)  # restart scheduled, still auto-restart
        seen(count_lines(calls) + 1)  # it saw the scheduled restart
        fake.set("sub", "running")  # started again, and it comes up
        fake.set("active", "active")

    flipper = threading.Thread(target=restart_once, daemon=True)
    with Server([(200, {"ok": True})], listen_after=2.0) as srv:
        flipper.start()
        failed, res, _ = run({"url": srv.url, "unit": "comfyui", "timeout": LONG, "interval": 0.2})
    flipper.join()
    assert not failed, res
    assert res["exits"] == 1 and res["restarts"] == 1


def test_failed_unit_fails_at_once(tmp_path, monkeypatch):
    FakeSystemd(tmp_path, monkeypatch, active="failed", sub="failed", result="exit-code", status="1")
    with refusing_port() as url:
        failed, res, took = run({"url": url, "unit": "a1111", "name": "AUTOMATIC1111", "timeout": LONG})
    assert failed and took < EARLY, res
    assert res["msg"].startswith("AUTOMATIC1111 (unit a1111) failed while waiting for %s: systemd reports it failed/failed "
                                 "(exit status 1, result exit-code; restarted 0 times), so it gave up after " % url), res["msg"]
    assert JOURNAL[1] in res["msg"]
    assert res["attempts"] == 0


def test_stopped_unit_fails_early(tmp_path, monkeypatch):
    FakeSystemd(tmp_path, monkeypatch, active="inactive", sub="dead")
    with refusing_port() as url:
        failed, res, took = run({"url": url, "unit": "comfyui", "timeout": LONG, "interval": 0.2})
    assert failed and took < EARLY, res
    assert res["msg"].startswith("unit comfyui stopped while waiting for %s: systemd reports it inactive/dead" % url), res["msg"]


def test_unknown_unit_fails_at_once(tmp_path, monkeypatch):
    FakeSystemd(tmp_path, monkeypatch, active="inactive", sub="dead", load="not-found")
    with refusing_port() as url:
        failed, res, took = run({"url": url, "unit": "nosuch", "timeout": LONG})
    assert failed and took < EARLY, res
    assert res["msg"].startswith("unit nosuch is not a loaded systemd unit (LoadState=not-found)"), res["msg"]


def test_timeout_with_a_unit_carries_its_state_and_journal(tmp_path, monkeypatch):
    """A running unit that never answers: the deadline, with the unit's state and journal in the message."""
    fake = FakeSystemd(tmp_path, monkeypatch, active="active", sub="running", step=0)
    timeout = 1.5
    with refusing_port() as url:
        failed, res, _ = run({"url": url, "unit": "comfyui", "name": "ComfyUI", "timeout": timeout, "interval": 0.3,
                              "journal_lines": 5})
    assert failed
    assert timeout <= res["elapsed"] < timeout + DEADLINE_SLACK, res
    msg = res["msg"]
    assert msg.startswith("ComfyUI (unit comfyui) did not answer on %s within 1.5s: " % url), msg
    assert "unit comfyui is active/running, restarted 0 times during the wait" in msg
    assert "Its journal since the wait began (journalctl -u comfyui --since '" in msg
    assert JOURNAL[1] in msg
    assert fake.calls("journalctl")[0].startswith("-u comfyui --no-pager --quiet -n 5 --since ")


def test_journal_falls_back_to_the_last_lines(tmp_path, monkeypatch):
    """Nothing logged since the wait began: the message carries the unit's last lines instead."""
    fake = FakeSystemd(tmp_path, monkeypatch, active="failed", sub="failed", result="signal", status="9",
                       journal_since=False)
    with refusing_port() as url:
        failed, res, _ = run({"url": url, "unit": "comfyui", "timeout": LONG, "journal_lines": 2})
    assert failed
    assert "killed by signal 9, result signal" in res["msg"]
    assert "Nothing in its journal since the wait began; its last 2 lines (journalctl -u comfyui -n 2):" in res["msg"]
    assert JOURNAL[2] in res["msg"] and JOURNAL[0] not in res["msg"]  # the last journal_lines lines only
    assert [c.split(" --since")[0] for c in fake.calls("journalctl")] == ["-u comfyui --no-pager --quiet -n 2"] * 2


def test_healthy_unit_succeeds_and_reports_restarts(tmp_path, monkeypatch):
    """One restart during the wait (below max_restarts) does not fail it; the count is returned."""
    fake = FakeSystemd(tmp_path, monkeypatch, active="active", sub="running", step=1)
    with Server([(503, {}), (200, {"ok": True})]) as srv:
        failed, res, _ = run({"url": srv.url, "unit": "comfyui", "timeout": LONG, "interval": 0.1, "max_restarts": 5})
    assert not failed, res
    assert res["restarts"] == 1 and res["unit_status"]["ActiveState"] == "active"
    assert fake.calls("journalctl") == []


def test_max_restarts_zero_turns_the_crash_loop_check_off(tmp_path, monkeypatch):
    """A unit that restarts on every look (NRestarts + 1 per systemctl call) and answers only after the module has
    looked at it five times: with max_restarts 0 it is waited for (the default, 2, gives up after the second)."""
    fake = FakeSystemd(tmp_path, monkeypatch, active="activating", sub="auto-restart", step=1)
    calls = fake.dir / "systemctl.calls"
    with Server([(200, {"ok": True})], listen_when=lambda: count_lines(calls) >= 5) as srv:
        failed, res, _ = run({"url": srv.url, "unit": "comfyui", "timeout": LONG, "interval": 0.1, "max_restarts": 0})
    assert not failed, res
    assert res["restarts"] >= 4 and res["status"] == 200
