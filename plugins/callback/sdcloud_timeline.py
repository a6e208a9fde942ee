"""Where a playbook run's time went, phase by phase: measured here, shown by playbooks/summary.yml."""

from __future__ import annotations

DOCUMENTATION = r"""
name: sdcloud_timeline
type: aggregate
short_description: Measure how long each phase of a playbook run took, for sdcloud's summary
description:
  - Splits the wall time of a playbook run into consecutive phases, so that they add up to the run's time,
    and counts per phase the tasks that changed something (a converged run shows C(nothing changed)
    everywhere).
  - "The first phase, C(start), runs from the start of the ansible-playbook process (read from /proc on
    Linux; elsewhere from when this callback loaded) to the first play: Python, and the inventory, which
    lists the cloud's instances."
  - "A task's phase is: the play's variable C(sdcloud_timeline_phase) when the play sets one (the phase
    markers in playbooks/*.yml); else its role's (C(machine), C(system) for base, C(driver), C(CUDA),
    C(ComfyUI install), C(AUTOMATIC1111 install), C(models), C(proxy), C(autostop), C(firewall)), where the
    tasks in tasks/service.yml of comfyui and a1111 and their handlers are C(ComfyUI first answer) /
    C(AUTOMATIC1111 first answer) (the start until the UI answered); Gathering Facts is C(facts); any other
    task continues the phase before it."
  - The C(machine) phase says what happened to the machine, from the machine role's results (created,
    started, stopped, already running).
  - "After every task start the timeline so far is in the environment of the ansible-playbook process, as
    JSON in C(SDCLOUD_TIMELINE): C(playbook), C(started) (UTC), C(seconds), C(phases) (C(name), C(seconds),
    C(tasks), C(changed), C(skipped), C(failed)) and C(lines), the timeline as text. Lookups in the playbooks
    read it there (C(lookup('ansible.builtin.env', 'SDCLOUD_TIMELINE'))): playbooks/summary.yml prints it
    and keeps the last provision's for status.yml."
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
"""

import datetime
import json
import os
import time

import ansible.module_utils
from ansible.plugins.callback import CallbackBase

_MU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)

from ansible.module_utils.sdcloud.download import human_seconds  # noqa: E402 - the one duration format

ENV = "SDCLOUD_TIMELINE"
ROLE_PHASES = {
    "machine": "machine",
    "base": "system",
    "nvidia_driver": "driver",
    "cuda": "CUDA",
    "comfyui": "ComfyUI install",
    "a1111": "AUTOMATIC1111 install",
    "models": "models",
    "proxy": "proxy",
    "autostop": "autostop",
    "firewall": "firewall",
}
UI_ROLES = {"comfyui": "ComfyUI", "a1111": "AUTOMATIC1111"}
FACTS = {"gather_facts", "setup", "ansible.builtin.gather_facts", "ansible.builtin.setup", "ansible.legacy.setup"}


def process_start(now=time.time):
    """When this process started (epoch seconds), from /proc; now when that cannot be read."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return now() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return now()


def machine_outcome(result):
    """What the machine role's module did, from its result (local_machine's diff, gpu_instance's msg)."""
    diff = result.get("diff") if isinstance(result.get("diff"), dict) else {}
    before = (diff.get("before") or {}).get("state") if isinstance(diff.get("before"), dict) else None
    after = (diff.get("after") or {}).get("state") if isinstance(diff.get("after"), dict) else None
    msg = str(result.get("msg") or "")
    if before == "absent" or msg.startswith("created"):
        return "created"
    if after == "stopped" or msg.startswith("stopped"):
        return "stopped"
    if before in ("stopped", "stopping", "pending") or msg.startswith("started"):
        return "started"
    if "instance" in result and not result.get("changed"):
        return "already running"
    return None


class Timeline:
    """Consecutive phases of one run; `switch` closes the open one. Times are epoch seconds."""

    def __init__(self, started):
        self.started = started
        self.phases = []  # dicts in order of first appearance
        self.by_name = {}
        self.current = None
        self.since = started
        self.switch("start", started)

    def phase(self, name):
        if name not in self.by_name:
            entry = {"name": name, "seconds": 0.0, "tasks": 0, "results": 0, "changed": 0, "skipped": 0, "failed": 0}
            self.by_name[name] = entry
            self.phases.append(entry)
        return self.by_name[name]

    def switch(self, name, now):
        if self.current is not None:
            self.current["seconds"] += now - self.since
        self.current = self.phase(name)
        self.since = now

    def snapshot(self, now, playbook="", note=None):
        phases = []
        for p in self.phases:
            seconds = p["seconds"] + (now - self.since if p is self.current else 0.0)
            phases.append(dict(p, seconds=round(seconds, 3)))
        total = now - self.started
        return {
            "playbook": playbook,
            "started": datetime.datetime.fromtimestamp(self.started, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": round(total, 3),
            "phases": phases,
            "lines": render(phases, total, note or {}),
        }


def render(phases, total, notes):
    labels = [p["name"] + (f" ({notes[p['name']]})" if notes.get(p["name"]) else "") for p in phases]
    width = max([len(label) for label in labels] + [5])
    out = []
    for label, p in zip(labels, phases, strict=True):
        if p["failed"]:
            what = "failed"
        elif p["changed"]:
            what = f"{p['changed']} changed"
        elif p["results"] and p["skipped"] == p["results"]:
            what = "skipped"
        elif p["results"]:
            what = "nothing changed"
        else:
            what = ""
        out.append(f"{label:<{width}}  {human_seconds(p['seconds'], tenths=True):>9}  {what}".rstrip())
    out.append(f"{'total':<{width}}  {human_seconds(total, tenths=True):>9}")
    return out


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "sdcloud_timeline"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clock = time.time
        self.timeline = Timeline(process_start())
        self.playbook = ""
        self.play_phase = None
        self.task_phase = {}
        self.notes = {}

    def _publish(self):
        os.environ[ENV] = json.dumps(self.timeline.snapshot(self.clock(), self.playbook, self.notes))

    def v2_playbook_on_start(self, playbook):
        self.playbook = os.path.basename(getattr(playbook, "_file_name", "") or "")

    def v2_playbook_on_play_start(self, play):
        marker = (getattr(play, "vars", None) or {}).get("sdcloud_timeline_phase")
        self.play_phase = str(marker) if marker else None
        if self.play_phase:
            self.timeline.switch(self.play_phase, self.clock())
        self._publish()

    def _phase_of(self, task, handler):
        if self.play_phase:
            return self.play_phase
        role = task._role.get_name(include_role_fqcn=False) if getattr(task, "_role", None) else None
        if role:
            path = (task.get_path() or "").rsplit(":", 1)[0]
            in_service = os.path.basename(path) == "service.yml" and os.path.basename(os.path.dirname(path)) == "tasks"
            if role in UI_ROLES and (handler or in_service):
                return f"{UI_ROLES[role]} first answer"
            return ROLE_PHASES.get(role, role)
        if task.action in FACTS:
            return "facts"
        return None

    def _task_start(self, task, handler=False):
        name = self._phase_of(task, handler) or self.timeline.current["name"]
        self.task_phase[task._uuid] = name
        if name != self.timeline.current["name"]:
            self.timeline.switch(name, self.clock())
        self.timeline.current["tasks"] += 1
        self._publish()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._task_start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._task_start(task, handler=True)

    def _count(self, result, key=None):
        name = self.task_phase.get(result.task._uuid, self.timeline.current["name"])
        entry = self.timeline.phase(name)
        entry["results"] += 1
        if key:
            entry[key] += 1
        elif result.result.get("changed"):
            entry["changed"] += 1
        if name == "machine" or (getattr(result.task, "_role", None) and result.task._role.get_name(include_role_fqcn=False) == "machine"):
            outcome = machine_outcome(result.result)
            if outcome and (outcome != "already running" or name not in self.notes):
                self.notes[name] = outcome

    def v2_runner_on_ok(self, result):
        self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result, None if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result):
        self._count(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._count(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        self._publish()
