"""job_progress and its module_utils: the lines each log format gives, one poll's bookkeeping, the job's result."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import pytest
from ansible.module_utils.sdcloud import progress

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import job_progress  # noqa: E402
from module_runner import run_main  # noqa: E402

# what uv 0.13 prints (UV_NO_PROGRESS=1) for a plan and an install, as captured from a real run
UV_PLAN = """Using Python 3.11.7 environment at: venv
Resolved 10 packages in 352ms
Would download 10 packages
Would install 10 packages
 + certifi==2026.10.19.post1
 + charset-normalizer==3.5.3
 + idna==3.20
 + numpy==2.4.6
 + pandas==3.1.1
 + python-dateutil==4.0.0
 + requests==2.34.2
 + scipy==1.17.1
 + tzdata==2026.6
 + urllib3==2.8.0
"""
UV_FETCHING = """Using Python 3.11.7 environment at: venv
Resolved 10 packages in 299ms
Downloading numpy (16.1MiB)
Downloading scipy (33.7MiB)
Downloading pandas (11.8MiB)
 Downloaded numpy
"""
UV_REST = """ Downloaded pandas
 Downloaded scipy
Prepared 10 packages in 1.03s
"""
UV_DONE = """Installed 10 packages in 117ms
 + certifi==2026.10.19.post1
"""


def ctx(**kw):
    return {"finished": False, "elapsed": 12.0, "plan": "", "venv": None, **kw}


def test_uv_says_what_is_fetched_then_what_is_in_place(tmp_path):
    lines = progress.uv_lines(UV_FETCHING, UV_FETCHING, ctx(plan=UV_PLAN))
    assert lines == [
        "uv: resolved 10 packages in 299ms",
        "uv: downloaded numpy (16.1MiB), large wheel 1 of 3",
        "uv: fetching 10 of the 10 packages to install: large wheels 1 of 3 done (16.1MiB of 61.6MiB), now scipy, pandas [12s]",
    ]
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    for d in ("numpy-2.4.6.dist-info", "charset_normalizer-3.5.3.dist-info", "idna-3.19.dist-info"):  # idna: the old one
        (site / d).mkdir(parents=True)
    text = UV_FETCHING + UV_REST
    lines = progress.uv_lines(text, UV_REST, ctx(plan=UV_PLAN, venv=str(tmp_path / "venv")))
    assert lines[:3] == ["uv: downloaded pandas (11.8MiB), large wheel 2 of 3", "uv: downloaded scipy (33.7MiB), large wheel 3 of 3",
                         "uv: prepared 10 packages in 1.03s"]
    assert lines[3] == "uv: installing 10 packages into the venv: 2 of 10 in place, 8 to go (certifi, idna, pandas, +5 more) [12s]"
    assert progress.uv_lines(text + UV_DONE, UV_DONE, ctx(plan=UV_PLAN, finished=True)) == ["uv: installed 10 packages in 117ms"]


def test_uv_installs_from_its_cache_right_after_the_resolution(tmp_path):
    plan = "Resolved 2 packages in 10ms\nWould install 2 packages\n + numpy==2.4.6\n + idna==3.20\n"  # nothing to download
    assert progress.uv_lines("", "", ctx(plan=plan)) == ["uv: resolving 2 packages [12s]"]
    (tmp_path / "venv/lib/python3.11/site-packages/idna-3.20.dist-info").mkdir(parents=True)
    log = "Resolved 2 packages in 9ms\n"
    assert progress.uv_lines(log, "", ctx(plan=plan, venv=str(tmp_path / "venv"))) == [
        "uv: installing 2 packages into the venv: 1 of 2 in place, 1 to go (numpy) [12s]"
    ]


def test_uv_without_a_plan_and_its_errors():
    assert progress.uv_lines("Resolved 3 packages in 1s\n", "", ctx()) == ["uv: fetching the packages [12s]"]
    err = "error: Failed to fetch: `https://user:hunter2@pypi.example/simple/torch/`\n  Caused by: timed out\n"
    assert progress.uv_lines(err, err, ctx(finished=True)) == ["uv: error: Failed to fetch: `https://user:hunter2@pypi.example/simple/torch/`"]


def test_model_sync_keeps_events_and_the_latest_line_per_file():
    new = "\n".join(
        [
            "2026-01-01T10:00:00 sync start: 2 models in /opt/sdcloud/models",
            "2026-01-01T10:00:00 checkpoints/a: fetching 6.9 GB from https://x/a (missing)",
            "2026-01-01T10:00:02 checkpoints/a: 1.0 GB/6.9 GB (14.5%) 100.0 MiB/s ETA 59s connections=8",
            "2026-01-01T10:00:02 all: 1.0 GB/7.0 GB (14.3%) 100.0 MiB/s ETA 1m00s, 0 of 2 files done",
            "2026-01-01T10:00:04 checkpoints/a: 1.2 GB/6.9 GB (17.4%) 100.0 MiB/s ETA 57s connections=8",
            "2026-01-01T10:00:04 loras/b: 1.0 MB/1.0 MB (100.0%) 1.0 MiB/s ETA 0s connections=1",
            "2026-01-01T10:00:04 loras/b: done 1.0 MB in 1.0s (1.0 MiB/s, 1 connections, sha256 ab)",
            "2026-01-01T10:00:04 all: 1.2 GB/7.0 GB (17.2%) 100.0 MiB/s ETA 58s, 1 of 2 files done",
            "2026-01-01T10:00:05 checkpoints/a [0-]: connection dropped; retry 1/5 in 1.0s",
        ]
    )
    assert progress.model_sync_lines(new, new, ctx()) == [
        "sync start: 2 models in /opt/sdcloud/models",
        "checkpoints/a: fetching 6.9 GB from https://x/a (missing)",
        "checkpoints/a: 1.2 GB/6.9 GB (17.4%) 100.0 MiB/s ETA 57s connections=8",
        "loras/b: done 1.0 MB in 1.0s (1.0 MiB/s, 1 connections, sha256 ab)",
        "all: 1.2 GB/7.0 GB (17.2%) 100.0 MiB/s ETA 58s, 1 of 2 files done",
        "checkpoints/a [0-]: connection dropped; retry 1/5 in 1.0s",
    ]


PIP_LOG = """2026-01-01T10:00:00,100 Using pip 23.0.1 from /opt/a1111/venv/lib/python3.11/site-packages/pip (python 3.11)
2026-01-01T10:00:00,200 Looking in indexes: https://download.pytorch.org/whl/cpu
2026-01-01T10:00:01,000 Collecting torch==2.1.2
2026-01-01T10:00:01,100   Downloading https://download.pytorch.org/whl/cpu/torch-2.1.2%2Bcpu-cp311-cp311-linux_x86_64.whl (184.9 MB)
2026-01-01T10:00:09,000 Requirement already satisfied: filelock in ./venv/lib/python3.11/site-packages (from torch==2.1.2) (3.13.1)
2026-01-01T10:00:09,100 Collecting sympy
"""


def test_pip_counts_what_it_collects_then_installs():
    assert progress.pip_lines(PIP_LOG, PIP_LOG, ctx()) == [
        "pip: downloading torch-2.1.2+cpu-cp311-cp311-linux_x86_64.whl (184.9 MB)",
        "pip: collecting requirements: 2 so far (1 already satisfied), 1 downloaded (184.9 MB), now sympy [12s]",
    ]
    more = "2026-01-01T10:00:20,000 Installing collected packages: sympy, torch\n"
    assert progress.pip_lines(PIP_LOG + more, more, ctx()) == ["pip: installing 2 packages: sympy, torch [12s]"]
    end = "2026-01-01T10:00:40,000 Successfully installed sympy-1.12 torch-2.1.2+cpu\n"
    assert progress.pip_lines(PIP_LOG + more + end, end, ctx(finished=True)) == [
        "pip: installed 2 packages: sympy-1.12, torch-2.1.2+cpu"
    ]


TERM_LOG = """
Log started: 2026-01-01  10:00:00
Selecting previously unselected package nvidia-kernel-open-dkms.
Preparing to unpack .../nvidia-kernel-open-dkms_535.216.01-1~deb12u1_amd64.deb ...
Unpacking nvidia-kernel-open-dkms (535.216.01-1~deb12u1) ...
Unpacking nvidia-driver (535.216.01-1~deb12u1) ...
Setting up nvidia-kernel-open-dkms (535.216.01-1~deb12u1) ...
Loading new nvidia-current-535.216.01 DKMS files...
Building for 6.1.0-28-cloud-amd64
"""


def test_apt_names_the_phase():
    assert progress.apt_lines("", "", ctx()) == ["apt: downloading packages [12s]"]
    head = TERM_LOG.split("Setting up", maxsplit=1)[0]
    assert progress.apt_lines(head, head, ctx()) == ["apt: unpacking nvidia-driver (2 unpacked, 0 set up so far) [12s]"]
    assert progress.apt_lines(TERM_LOG, "", ctx()) == ["apt: building the kernel module with DKMS (6.1.0-28-cloud-amd64) [12s]"]
    initramfs = TERM_LOG + "update-initramfs: Generating /boot/initrd.img-6.1.0-28-cloud-amd64\n"
    assert progress.apt_lines(initramfs, "", ctx()) == ["apt: rebuilding the initramfs (/boot/initrd.img-6.1.0-28-cloud-amd64) [12s]"]
    assert progress.apt_lines(initramfs, "", ctx(finished=True)) == ["apt: done: 2 packages unpacked, 1 set up"]


# ---------------------------------------------------------------- one poll


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


@pytest.fixture
def job(tmp_path):
    """A running async job as async_wrapper leaves it: <async dir>/<jid> holding the start record; its log."""
    jid = "123.456"
    results = tmp_path / ".ansible_async" / jid
    results.parent.mkdir()
    results.write_text(json.dumps({"started": True, "finished": False, "ansible_job_id": jid}))
    os.utime(results, (998, 998))  # its mtime is when the job started: 2 s before Clock's start
    log = tmp_path / "job.log"
    log.write_text("an earlier run's line\n")
    return {"ansible_job_id": jid, "results_file": str(results), "started": True, "finished": False}, log


def poll(job, log, **kw):
    clock = Clock()
    return progress.poll(job["results_file"], log=str(log), log_offset=len("an earlier run's line\n"), clock=clock,
                         sleep=clock.sleep, **kw)


def test_a_poll_returns_the_new_whole_lines_then_the_redacted_result(job):
    job, log = job
    res = poll(job, log, wait=2)
    assert res == {"changed": False, "finished": False, "progress": ["still working [4s]"], "elapsed": 4.0}
    with log.open("a") as f:
        f.write("fetching https://u:pw@h/x?token=tok123 ...\nhalf a li")
    res = poll(job, log, wait=0)
    assert res["progress"] == ["fetching https://REDACTED@h/x?token=REDACTED ..."] and not res["finished"]
    with log.open("a") as f:
        f.write("ne\nlast line\n")
    pathlib.Path(job["results_file"]).write_text(json.dumps(
        {"changed": True, "rc": 0, "stdout": "ok https://u:pw@h/", "invocation": {"module_args": {"token": "tok123"}}}))
    res = poll(job, log, wait=5)
    assert res["finished"] and res["changed"] and res["rc"] == 0 and "failed" not in res
    assert res["progress"] == ["half a line", "last line"]
    assert res["job"] == {"changed": True, "rc": 0, "stdout": "ok https://REDACTED@h/"}
    assert not pathlib.Path(job["results_file"]).exists() and not pathlib.Path(job["results_file"] + ".progress").exists()


def test_a_failed_job_fails_with_the_end_of_its_log(job):
    job, log = job
    with log.open("a") as f:
        f.write("Resolved 3 packages in 1s\nerror: Failed to fetch: `https://user:secret@idx/simple/torch/`\n")
    pathlib.Path(job["results_file"]).write_text(json.dumps({"changed": True, "rc": 2, "cmd": "uv pip install"}))
    res = poll(job, log, fmt="uv")
    assert res["failed"] and res["finished"] and res["rc"] == 2
    assert res["msg"].startswith(f"the job failed (rc=2); the end of {log}:\nResolved 3 packages in 1s\nerror: Failed to fetch")
    assert "secret" not in json.dumps(res) and "an earlier run" not in res["msg"]
    assert res["progress"] == ["uv: resolved 3 packages in 1s", "uv: error: Failed to fetch: `https://REDACTED@idx/simple/torch/`"]


def test_the_async_time_limit_is_a_failure_too(job):
    job, log = job
    pathlib.Path(job["results_file"]).write_text(json.dumps({"msg": "Timeout exceeded", "failed": True, "child_pid": 7}))
    res = poll(job, log)
    assert res["failed"] and res["msg"].startswith("Timeout exceeded")


def test_a_shorter_log_is_read_from_its_start_and_long_polls_are_cut(job):
    job, log = job
    log.write_text("x\n")  # rotated: shorter than where this run's output was to start
    res = poll(job, log, wait=0)
    assert res["progress"] == ["x"]
    with log.open("a") as f:
        f.write("".join(f"line {i}\n" for i in range(100)))
    res = poll(job, log, wait=0)
    assert len(res["progress"]) == progress.MAX_LINES and res["progress"][-1].startswith("(and 71 more lines in ")


@pytest.mark.parametrize(("job", "msg"), [
    ({"changed": False}, "job is not the registered result of an async task"),
    ({"ansible_job_id": "1.2", "results_file": "/root/.ansible_async/9.9"}, "does not belong to job 1.2"),
    ({"ansible_job_id": "1.2", "results_file": "/nonexistent/.ansible_async/1.2"}, "no async job result at"),
])
def test_the_module_refuses_what_is_not_a_job(job, msg):
    failed, res = run_main(job_progress.main, {"job": job, "wait": 0})
    assert failed and msg in res["msg"] and res["finished"] is True


def test_the_module_reports_a_running_job(job):
    job, log = job
    failed, res = run_main(job_progress.main, {"job": job, "log": str(log), "wait": 0, "format": "lines"})
    assert not failed and res["finished"] is False and res["progress"] == ["an earlier run's line"]
    assert res["elapsed"] > 1e6  # since the job started (the results file's mtime, 1970 here)
