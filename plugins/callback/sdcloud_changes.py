"""Say, at the end of a play run, how many tasks changed something - "0 changed: nothing to do"."""

from __future__ import annotations

DOCUMENTATION = r"""
name: sdcloud_changes
type: aggregate
short_description: Print how many tasks changed something, across all hosts
description:
  - "At the end of a playbook run prints C(sdcloud: N changed task(s)) or, when nothing changed,
    C(sdcloud: 0 changed tasks - everything was already as declared)."
requirements:
  - enabled in ansible.cfg (callbacks_enabled)
"""

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "sdcloud_changes"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_stats(self, stats):
        changed = sum(stats.changed.values())
        failed = sum(stats.failures.values()) + sum(stats.dark.values())
        if failed:
            return
        if changed:
            self._display.display("sdcloud: %d changed task(s)" % changed, color="yellow")
        else:
            self._display.display("sdcloud: 0 changed tasks - everything was already as declared", color="green")
