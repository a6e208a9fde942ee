"""The autostop script's decisions (roles/autostop/files/sdcloud-autostop), without a machine."""

import importlib.machinery
import importlib.util
import json
import os
import pathlib
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "roles" / "autostop" / "files" / "sdcloud-autostop"
_loader = importlib.machinery.SourceFileLoader("sdcloud_autostop", str(SCRIPT))
_spec = importlib.util.spec_from_loader("sdcloud_autostop", _loader)
autostop = importlib.util.module_from_spec(_spec)
_loader.exec_module(autostop)


def test_activity_moves_the_stop_forward():
    s = autostop.decide({"boot_id": "b", "last_activity": 1000.0}, [1500.0], 1600.0, 300, "b")
    assert s["last_activity"] == 1500.0 and s["stop_at"] == 1800.0 and not s["stopping"]


def test_idle_long_enough_stops():
    s = autostop.decide({"boot_id": "b", "last_activity": 1000.0}, [900.0], 1300.0, 300, "b")
    assert s["stopping"] and s["idle_for"] == 300.0


def test_a_new_boot_counts_as_activity():
    s = autostop.decide({"boot_id": "old", "last_activity": 1.0}, [], 5000.0, 300, "new")
    assert s["last_activity"] == 5000.0 and not s["stopping"]


def test_first_run_starts_counting_now():
    s = autostop.decide({}, [], 5000.0, 60, "b")
    assert s["last_activity"] == 5000.0 and s["stop_at"] == 5060.0


def test_access_log_last_request(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("2026-11-22T14:05:56+00:00 10.0.0.2 200 GET /system_stats 12 0.001\n"
                   "2026-11-22T14:07:00+00:00 10.0.0.2 401 GET /queue 0 0.000\n")
    assert autostop.last_log_time(str(log)) == 1795356420.0
    assert autostop.last_log_time(str(tmp_path / "missing.log")) is None


class _UI(BaseHTTPRequestHandler):
    queue = {"queue_running": [], "queue_pending": []}
    progress = {"state": {"job_count": 0}}

    def do_GET(self):  # noqa: N802
        body = json.dumps(self.queue if self.path.startswith("/queue") else self.progress).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def ui():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _UI)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % srv.server_address[1], _UI
    srv.shutdown()
    _UI.queue = {"queue_running": [], "queue_pending": []}
    _UI.progress = {"state": {"job_count": 0}}


def test_jobs_are_activity_and_dead_uis_are_not(ui):
    url, handler = ui
    cfg = {"comfyui_url": url, "a1111_url": url, "access_log": "", "gpu_util_threshold": None}
    assert autostop.observe(cfg, 100.0) == ([], [])
    handler.queue = {"queue_running": [[0, "p1"]], "queue_pending": []}
    handler.progress = {"state": {"job_count": 1}}
    assert autostop.observe(cfg, 100.0) == ([100.0, 100.0], ["comfyui job", "a1111 job"])
    dead = {"comfyui_url": "http://127.0.0.1:9", "a1111_url": "", "access_log": "", "gpu_util_threshold": None}
    assert autostop.observe(dead, 100.0) == ([], [])


def test_gpu_utilisation(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 3\necho 55\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert autostop.gpu_busy(10) is True
    assert autostop.gpu_busy(60) is False


def test_check_powers_off_only_when_idle(tmp_path, capsys):
    marker = tmp_path / "powered-off"
    cfg = {"enabled": True, "idle_seconds": 60, "state_dir": str(tmp_path), "access_log": "", "comfyui_url": "",
           "a1111_url": "", "gpu_util_threshold": None,
           "poweroff_command": [sys.executable, "-c", "open(%r, 'w').close()" % str(marker)]}
    autostop.check(cfg)
    assert not marker.exists()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["stop_at"] == pytest.approx(time.time() + 60, abs=5)
    status["last_activity"] -= 120
    (tmp_path / "status.json").write_text(json.dumps(status))
    autostop.check(cfg)
    assert marker.exists()
    assert "powering off" in capsys.readouterr().out


def test_an_idle_pod_asks_its_provider_to_stop_it_with_its_own_key(tmp_path, capsys, monkeypatch):
    """A pod cannot power off: check() sends the config's stop_request with the pod-scoped key and id from the
    pod's environment (PID 1's where it has them, as the provider injects them there; here, this process's), and
    prints neither the key nor anything when not yet idle."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Authorization"], json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(autostop, "pod_env", lambda names: {"RUNPOD_API_KEY": "pod-key-1", "RUNPOD_POD_ID": "p1"})
    request = {"method": "POST", "path": "/v2/pods/{id}/action", "body": {"action": "stop"},
               "key_var": "RUNPOD_API_KEY", "id_var": "RUNPOD_POD_ID",
               "endpoint": "http://127.0.0.1:%d/" % server.server_address[1]}
    cfg = {"enabled": True, "idle_seconds": 60, "state_dir": str(tmp_path), "access_log": "", "comfyui_url": "",
           "a1111_url": "", "gpu_util_threshold": None, "poweroff_command": ["false"], "stop_request": request}
    try:
        autostop.check(cfg)
        assert seen == []
        status = json.loads((tmp_path / "status.json").read_text())
        status["last_activity"] -= 120
        (tmp_path / "status.json").write_text(json.dumps(status))
        autostop.check(cfg)
    finally:
        server.shutdown()
    assert seen == [("/v2/pods/p1/action", "Bearer pod-key-1", {"action": "stop"})]
    out = capsys.readouterr().out
    assert "stopping the pod" in out and "asked POST" in out and "pod-key-1" not in out


def test_a_pod_without_its_key_says_which_variables_are_missing(monkeypatch):
    monkeypatch.setattr(autostop, "pod_env", lambda names: dict.fromkeys(names, ""))
    with pytest.raises(RuntimeError, match="CONTAINER_API_KEY and CONTAINER_ID are not in its environment"):
        autostop.stop_through_api({"method": "PUT", "path": "/api/v0/instances/{id}/", "body": {"state": "stopped"},
                                   "key_var": "CONTAINER_API_KEY", "id_var": "CONTAINER_ID", "endpoint": "http://x"})


def test_pod_env_reads_pid_1_and_falls_back_to_this_process(monkeypatch):
    monkeypatch.setenv("SDCLOUD_TEST_ONLY_HERE", "here")
    got = autostop.pod_env(["SDCLOUD_TEST_ONLY_HERE", "SDCLOUD_TEST_NOWHERE"])
    assert got == {"SDCLOUD_TEST_ONLY_HERE": "here", "SDCLOUD_TEST_NOWHERE": ""}


def test_boot_id_changes_with_the_container_start():
    """The kernel's boot id and PID 1's start time: a restarted container (same kernel) is a new boot."""
    boot, _, started = autostop.boot_id().partition("/")
    assert boot == pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert started.isdigit()
