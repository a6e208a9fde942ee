"""The sdcloud_progress and sdcloud_timeline callbacks in a real ansible-playbook run on localhost."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "callback"))

import sdcloud_timeline  # noqa: E402

pytestmark = pytest.mark.slow

PLAY = """
- name: Warm up
  hosts: localhost
  gather_facts: false
  vars:
    sdcloud_timeline_phase: warm-up
  tasks:
    - name: Wait a moment
      ansible.builtin.pause:
        seconds: 1

- name: Configure
  hosts: localhost
  gather_facts: true
  roles:
    - role: base
    - role: comfyui
  tasks:
    - name: Keep the timeline so far
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.env', 'SDCLOUD_TIMELINE') }}"
        dest: "{{ log }}.timeline.json"
        mode: "0600"
"""

ROLES = {
    "base/tasks/main.yml": """
        - name: Note where the log ends
          ansible.builtin.stat:
            path: "{{ log }}"
          register: base_log
        - name: Start a slow step in the background
          ansible.builtin.shell: >-
            for i in 1 2 3 4 5 6 7 8; do echo step $i of 8 https://u:pw-9f2@h/x?token=tk-31c; sleep 1.5; done >> {{ log }}
          async: 60
          poll: 0
          register: base_job
          changed_when: false
        - name: Run the slow step
          job_progress:
            job: "{{ base_job }}"
            log: "{{ log }}"
            log_offset: "{{ base_log.stat.size | default(0) }}"
            wait: 1
          register: base_wait
          until: base_wait.finished
          retries: 30
          delay: 0
        - name: A task that retries the ordinary way
          ansible.builtin.command: "true"
          register: base_try
          until: base_try.attempts > 1
          retries: 2
          delay: 0
          changed_when: false
    """,
    "comfyui/tasks/main.yml": """
        - name: Install
          ansible.builtin.command: "true"
          changed_when: true
          notify: Restart ComfyUI
        - name: Run
          ansible.builtin.include_tasks: service.yml
    """,
    "comfyui/tasks/service.yml": """
        - name: Apply pending restarts
          ansible.builtin.meta: flush_handlers
        - name: Wait for the first answer
          ansible.builtin.pause:
            seconds: 1
    """,
    "comfyui/handlers/main.yml": """
        - name: Restart ComfyUI
          ansible.builtin.pause:
            seconds: 1
    """,
}


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("callbacks")
    for path, text in ROLES.items():
        (tmp / "roles" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "roles" / path).write_text("---\n" + textwrap.dedent(text).lstrip("\n"))
    (tmp / "play.yml").write_text(PLAY)
    (tmp / "step.log").write_text("an earlier run's line\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_ROLES_PATH=str(tmp / "roles"),
               ANSIBLE_INVENTORY_ENABLED="ini", ANSIBLE_NOCOLOR="1", ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"))
    cmd = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"log={tmp / 'step.log'}", str(tmp / "play.yml")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic() - t0, line.rstrip("\n")) for line in proc.stdout]
    assert proc.wait() == 0, "\n".join(line for _t, line in lines)
    return lines, time.monotonic() - t0, json.loads((tmp / "step.log.timeline.json").read_text())


def test_progress_lines_come_while_the_step_runs(played):
    lines, _wall, _timeline = played
    out = "\n".join(line for _t, line in lines)
    start = next(i for i, (_t, line) in enumerate(lines) if line.startswith("TASK [base : Run the slow step]"))
    end = next(i for i in range(start, len(lines)) if lines[i][1] == "changed: [localhost]")
    polled = lines[start + 1:end]
    line = re.compile(r"^\[localhost\] \d\d:\d\d:\d\d step [1-8] of 8 https://REDACTED@h/x\?token=REDACTED$")
    # a poll that found no new line says so (progress.poll's heartbeat): the job writes every 1.5 s, and a poll
    # that came sooner after the last one - as happens on a loaded machine - finds nothing new
    heartbeat = re.compile(r"^\[localhost\] \d\d:\d\d:\d\d still working \[\d+s\]$")
    assert [ln for _t, ln in polled if not line.match(ln) and not heartbeat.match(ln)] == [], polled
    shown = [(t, ln) for t, ln in polled if line.match(ln)]
    assert [ln.rsplit(" ", 4)[-4] for _t, ln in shown] == [str(i) for i in range(1, 9)]  # each once, in order, this run's only
    # the step takes 12 s: lines come from several polls, the first well before the end
    assert len({round(t) for t, _l in shown}) >= 2 and shown[0][0] < lines[end][0] - 4, shown
    assert "pw-9f2" not in out and "tk-31c" not in out and "an earlier run" not in out
    assert "FAILED - RETRYING: [localhost]: A task that retries the ordinary way (2 retries left)." in out
    assert "FAILED - RETRYING: [localhost]: Run the slow step" not in out


def test_the_timeline_splits_the_run_into_phases_that_add_up(played):
    lines, wall, shown = played
    names = [p["name"] for p in shown["phases"]]
    # Gathering Facts ("facts") runs only when the fact cache holds no facts of localhost (gathering = smart)
    assert [n for n in names if n != "facts"] == ["start", "warm-up", "system", "ComfyUI install", "ComfyUI first answer"], shown
    phases = {p["name"]: p for p in shown["phases"]}
    assert phases["warm-up"]["seconds"] >= 1 and phases["system"]["seconds"] >= 12 and phases["ComfyUI first answer"]["seconds"] >= 2
    assert phases["system"]["changed"] == 1 and phases["ComfyUI install"]["changed"] == 1, phases
    assert abs(sum(p["seconds"] for p in shown["phases"]) - shown["seconds"]) < 0.01
    # the snapshot is the timeline at the start of the task that copied it: the play's wall time then
    copied = next(t for t, line in lines if line.startswith("TASK [Keep the timeline so far]"))
    assert abs(copied - shown["seconds"]) < 1.5 and shown["seconds"] < wall, (copied, wall, shown["seconds"])
    assert shown["playbook"] == "play.yml"
    assert shown["lines"][-1].startswith("total ") and any(re.match(r"system +\d+\.\ds  1 changed$", ln) for ln in shown["lines"])


def test_the_machine_phase_says_what_happened_and_durations_read_well():
    assert sdcloud_timeline.machine_outcome({"diff": {"before": {"state": "absent"}, "after": {"state": "running"}}}) == "created"
    assert sdcloud_timeline.machine_outcome({"msg": "started i-0abc in us-east-1a, ~$0.526/h", "changed": True}) == "started"
    running = {"instance": {}, "changed": False, "msg": "i-0abc is running in us-east-1a"}
    assert sdcloud_timeline.machine_outcome(running) == "already running"
    stopped = {"diff": {"before": {"state": "running"}, "after": {"state": "stopped"}}}
    assert sdcloud_timeline.machine_outcome(stopped) == "stopped"
    assert [sdcloud_timeline.human_seconds(s, tenths=True) for s in (0.04, 59.9, 61.0, 3725.0)] == ["0.0s", "59.9s", "1m01.0s", "1h02m05s"]
    assert [sdcloud_timeline.human_seconds(s) for s in (0.04, 59.9, 61.0, 3725.0)] == ["0s", "59s", "1m01s", "1h02m"]
    t = sdcloud_timeline.Timeline(100.0)
    t.switch("machine", 101.0)
    t.phase("machine").update(results=2, changed=1)
    t.switch("models", 103.5)
    t.phase("models").update(results=3, skipped=3)
    snap = t.snapshot(104.0, "provision.yml", {"machine": "created"})
    assert snap["lines"] == [
        "start                   1.0s",
        "machine (created)       2.5s  1 changed",
        "models                  0.5s  skipped",
        "total                   4.0s",
    ]
