"""Ansible's default output, plus plain progress lines while a long step runs in the background."""

from __future__ import annotations

DOCUMENTATION = r"""
name: sdcloud_progress
type: stdout
short_description: The default output, plus progress lines while sdcloud's long steps run
description:
  - Ansible's default screen output (the same options, banners and recap), with one addition. sdcloud runs
    its long steps (model downloads, the C(uv pip install) of the PyTorch stack, pip installs, a driver
    install) in the background and polls them with the job_progress module in an C(until) loop. For such a
    poll this callback prints the lines the module returned, instead of the default's
    C(FAILED - RETRYING ... (N retries left)).
  - "Each line reads C([host] HH:MM:SS text), the time being this computer's when the line arrived. Plain
    lines only, without colour or cursor movement, so a terminal and a CI log show the same."
  - The lines of the poll that saw the step end are printed before the task's C(ok)/C(changed) line, when
    the step took more than one poll.
  - Every other task is shown exactly as the default callback shows it.
extends_documentation_fragment:
  - default_callback
  - result_format_callback
requirements:
  - set as the stdout callback (ansible.cfg C(stdout_callback = sdcloud_progress))
"""

import time

from ansible.plugins.callback.default import CallbackModule as DefaultCallback


def progress_lines(result):
    """The lines a job_progress poll returned, or None for any other result."""
    lines = result.get("progress") if isinstance(result, dict) else None
    if isinstance(lines, list) and "finished" in result:
        return [str(line) for line in lines]
    return None


class CallbackModule(DefaultCallback):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "sdcloud_progress"

    def _show_progress(self, result, lines):
        if self._last_task_banner != result.task._uuid:
            self._print_task_banner(result.task)
        stamp = time.strftime("%H:%M:%S")
        host = self.host_label(result)
        for line in lines:
            self._display.display(f"[{host}] {stamp} {line}")

    def v2_runner_retry(self, result):
        lines = progress_lines(result.result)
        if lines is None:
            super().v2_runner_retry(result)
        else:
            self._show_progress(result, lines)

    def _last_poll(self, result):
        lines = progress_lines(result.result)
        if lines and result.result.get("attempts", 1) > 1:
            self._show_progress(result, lines)

    def v2_runner_on_ok(self, result):
        self._last_poll(result)
        super().v2_runner_on_ok(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._last_poll(result)
        super().v2_runner_on_failed(result, ignore_errors=ignore_errors)
