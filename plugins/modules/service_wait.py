#!/usr/bin/python
"""Ansible module: wait, against a wall-clock deadline, until a service answers over HTTP; fail early on a crash loop."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: service_wait
short_description: Wait until a local service answers over HTTP, with a deadline, failing early when its unit crash-loops
description:
  - Polls I(url) every I(interval) seconds until it answers with one of I(status_code), or until
    I(timeout) seconds of wall-clock time have passed. The deadline is a deadline, not a retry count;
    each HTTP attempt's own timeout (I(request_timeout)) is cut to the time that is left.
  - With I(unit), reads the systemd unit's state on every poll (C(systemctl show -p
    LoadState,ActiveState,SubState,NRestarts,MainPID,ExecMainStatus,Result)) and gives up early, without
    waiting for the deadline, when the unit entered C(failed), stopped for good (C(inactive) on two polls
    in a row), is not loaded at all, or crash-loops (exited I(max_restarts) times since the wait began).
  - With I(program) (and I(supervisorctl)), the same for a program of supervisord, where systemd is not init (a
    container). It reads C(supervisorctl status <program>) on every poll and gives up early when the program is
    C(FATAL) (supervisord gave up starting it), crash-loops (entered C(BACKOFF), or came back with a new PID, I(max_restarts)
    times since the wait began), stopped for good (C(STOPPED) or C(EXITED) on two polls in a row), or is unknown to supervisord.
  - Every failure message says what it waited for, for how long and why it gave up; with I(unit) it carries
    the last I(journal_lines) lines of C(journalctl -u <unit>) since the wait began (the last lines of the
    unit's journal when nothing was logged since); with I(program), the same lines of I(log_file).
  - Never uses a proxy, whatever C(http_proxy)/C(https_proxy) say; the service is asked directly.
  - Runs on the managed host; Python standard library only (Python 3.8 or later).
version_added: "1.1.0"
author: sdcloud
options:
  url:
    description: URL to poll with C(GET), usually on C(127.0.0.1).
    type: str
    required: true
  status_code:
    description: HTTP status codes that count as an answer. Any other status, and no answer, means poll again.
    type: list
    elements: int
    default: [200]
  timeout:
    description: Wall-clock seconds the whole wait may take (a deadline measured with a monotonic clock).
    type: float
    default: 300
  interval:
    description: Seconds from the start of one poll to the start of the next.
    type: float
    default: 1
  request_timeout:
    description: Seconds one HTTP attempt may take; never more than the time left before the deadline.
    type: float
    default: 10
  unit:
    description:
      - systemd unit of the service (C(comfyui), C(a1111.service)). Enables the early failures and the
        journal in the messages. Without it the module only polls I(url) until the deadline.
    type: str
  program:
    description:
      - supervisord program of the service (C(comfyui)), for hosts without systemd. Enables the early failures, with
        I(log_file) in the messages. Needs I(supervisorctl); mutually exclusive with I(unit).
    type: str
  supervisorctl:
    description:
      - The supervisorctl command line to ask supervisord with, e.g. C([/opt/sdcloud/supervisor/venv/bin/supervisorctl, -c,
        /opt/sdcloud/supervisor/supervisord.conf]).
    type: list
    elements: str
  log_file:
    description: With I(program), the file the program's output goes to (its C(stdout_logfile)), quoted in failure messages.
    type: path
  max_restarts:
    description:
      - Give up as crash-looping once the unit has exited this many times since the wait began (each time it
        is seen entering C(SubState=auto-restart), or the growth of systemd's C(NRestarts) where that is more,
        which counts restarts between two polls).
      - C(0) turns the crash-loop check off (C(failed) and the other unit checks still apply).
    type: int
    default: 2
  journal_lines:
    description: How many lines of the unit's journal a failure message carries at most.
    type: int
    default: 60
  name:
    description: Human name of the service for the messages (C(ComfyUI)). Defaults to the unit, or the URL.
    type: str
  return_content:
    description: Return the body of the answer as C(content), and parsed as C(json) when it is JSON.
    type: bool
    default: false
  validate_certs:
    description: Verify TLS certificates of an C(https://) I(url).
    type: bool
    default: true
requirements:
  - python >= 3.8 on the managed host
  - systemd (C(systemctl), C(journalctl)) on the managed host, only with I(unit)
  - supervisord running, only with I(program)
notes:
  - C(changed) is always false. The module only reads, so it also runs, and really waits, in check mode.
  - Reading another unit's journal needs root or membership of C(systemd-journal)/C(adm) (use C(become)).
  - systemd resets C(NRestarts) when a unit is started by hand, so the count starts at the value read when
    the wait begins.
attributes:
  check_mode:
    support: full
    details: Only reads; waits in check mode as in a normal run.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Wait until ComfyUI answers (a crash loop fails in seconds, with the journal)
  service_wait:
    url: http://127.0.0.1:8188/system_stats
    unit: comfyui
    name: ComfyUI
    timeout: 300
    return_content: true
  register: comfyui_register_stats

- name: Show the version it reports
  ansible.builtin.debug:
    msg: "{{ comfyui_register_stats.json.system.comfyui_version }}"

- name: Wait until ComfyUI answers, run by supervisord (a container without systemd)
  service_wait:
    url: http://127.0.0.1:8188/system_stats
    program: comfyui
    supervisorctl: [/workspace/sdcloud/supervisor/venv/bin/supervisorctl, -c, /workspace/sdcloud/supervisor/supervisord.conf]
    log_file: /workspace/comfyui/logs/comfyui.log
    name: ComfyUI

- name: Wait for an endpoint that answers 401 without a login, no unit checks
  service_wait:
    url: http://127.0.0.1:8080/api
    status_code: [200, 401]
    timeout: 60
    interval: 2
"""

RETURN = r"""
changed:
  description: Always false; the module only reads.
  returned: always
  type: bool
url:
  description: The URL that was polled.
  returned: always
  type: str
name:
  description: The name used in messages.
  returned: always
  type: str
elapsed:
  description: Seconds the wait took (monotonic clock).
  returned: always
  type: float
  sample: 4.318
attempts:
  description: HTTP attempts made.
  returned: always
  type: int
status:
  description: HTTP status of the last answer; C(-1) when nothing answered the last attempt.
  returned: always
  type: int
  sample: 200
restarts:
  description: How many times systemd restarted the unit (growth of C(NRestarts)), or supervisord the program, during the wait.
  returned: always
  type: int
exits:
  description: How many times the unit exited during the wait (restarts plus a pending restart).
  returned: always
  type: int
unit_status:
  description: The unit's properties at the last poll, as C(systemctl show) printed them.
  returned: when unit is set and systemctl answered
  type: dict
  sample: {ActiveState: active, SubState: running, NRestarts: "0", MainPID: "4242", ExecMainStatus: "0", Result: success}
program_status:
  description: The program's line of C(supervisorctl status) at the last poll, split into C(state) and C(detail).
  returned: when program is set and supervisorctl answered
  type: dict
  sample: {state: RUNNING, detail: "pid 4242, uptime 0:00:12"}
content:
  description: Body of the answer.
  returned: success, when return_content is true
  type: str
json:
  description: Body of the answer, parsed.
  returned: success, when return_content is true and the body is JSON
  type: raw
"""

import contextlib
import datetime
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

SHOW_PROPERTIES = ("LoadState", "ActiveState", "SubState", "NRestarts", "MainPID", "ExecMainStatus", "Result")
COMMAND_TIMEOUT = 10.0  # seconds one systemctl / journalctl call may take
MIN_ATTEMPT_TIMEOUT = 0.1  # an attempt right at the deadline still gets this long to connect


class WaitFailed(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg


def times(count, word="time"):
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def describe_error(exc, attempt_timeout):
    """One attempt's failure in a few words."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.timeout):  # noqa: UP041 - socket.timeout is not TimeoutError before Python 3.10
        return "got no answer within %.1fs" % attempt_timeout
    if isinstance(reason, ConnectionRefusedError):
        return "was refused (nothing listens on the port)"
    if isinstance(reason, ConnectionResetError):
        return "was reset by the server"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "was closed by the server without an answer"
    return "failed: %s" % (reason,)


def http_get(opener, url, attempt_timeout):
    """One GET. Returns (status or None, body or None, what went wrong or None)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json, */*;q=0.5"})
    try:
        with opener.open(request, timeout=attempt_timeout) as response:
            return response.getcode(), response.read(), None
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except (OSError, http.client.HTTPException):
            body = b""
        return exc.code, body, "answered HTTP %d" % exc.code
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
        return None, None, describe_error(exc, attempt_timeout)


def build_opener(validate_certs):
    handlers = [urllib.request.ProxyHandler({})]  # never a proxy, whatever http_proxy says
    if not validate_certs:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def run_command(args, timeout):
    """Run a read-only command with a bound; (rc, stdout, stderr), rc None when it did not finish."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                              env=dict(os.environ, LC_ALL="C", SYSTEMD_PAGER="", SYSTEMD_COLORS="0"),
                              errors="replace")
    except subprocess.TimeoutExpired:
        return None, "", "did not finish within %.0fs" % timeout
    except OSError as exc:
        return None, "", str(exc)
    return proc.returncode, proc.stdout, proc.stderr


def unit_show(systemctl, unit, timeout):
    """The unit's properties as a dict, or None when systemctl did not answer."""
    rc, out, _ = run_command([systemctl, "show", "-p", ",".join(SHOW_PROPERTIES), unit], timeout)
    if rc != 0:
        return None
    props = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props if "ActiveState" in props else None


def as_int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def exit_description(props):
    result = props.get("Result", "")
    status = props.get("ExecMainStatus", "")
    signalled = result in ("signal", "core-dump")
    what = "killed by signal %s" % status if signalled else "exit status %s" % (status or "unknown")
    return "%s, result %s" % (what, result or "unknown")


def journal(journalctl, unit, since, lines):
    """(heading, lines) for the failure message: the unit's journal since the wait began, else its last lines."""
    if not journalctl:
        return "journalctl was not found, so no journal of unit %s" % unit, []
    base = [journalctl, "-u", unit, "--no-pager", "--quiet", "-n", str(lines)]
    rc, out, _ = run_command(base + ["--since", since], COMMAND_TIMEOUT)
    got = [line for line in out.splitlines() if line.strip() and not line.startswith("-- No entries --")]
    if rc == 0 and got:
        return "Its journal since the wait began (journalctl -u %s --since '%s'):" % (unit, since), got[-lines:]
    rc, out, err = run_command(base, COMMAND_TIMEOUT)
    got = [line for line in out.splitlines() if line.strip() and not line.startswith("-- No entries --")][-lines:]
    if got:
        return "Nothing in its journal since the wait began; its last %s (journalctl -u %s -n %d):" % (
            times(len(got), "line"), unit, lines), got
    why = (err or "").strip().splitlines()
    return "journalctl -u %s printed nothing%s" % (
        unit, (" (%s)" % why[0]) if why else " (reading another unit's journal needs root: become: true)"), []


def program_status(argv, program, timeout):
    """The program's state in supervisord as {state, detail}: a supervisord state (RUNNING, BACKOFF, FATAL, ...),
    NOT_LOADED when supervisord has no such program, NO_SUPERVISORD when it does not answer; None when
    supervisorctl did not finish."""
    rc, out, err = run_command(list(argv) + ["status", program], timeout)
    if rc is None:
        return None
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] == program and parts[1].isalpha() and parts[1].isupper():
            return {"state": parts[1], "detail": parts[2].strip() if len(parts) > 2 else ""}
        if parts and parts[0] == program + ":" and "no such process" in line.lower():
            return {"state": "NOT_LOADED", "detail": line.strip()}
    return {"state": "NO_SUPERVISORD", "detail": " ".join((out + " " + err).split())[:300]}


def program_pid(status):
    detail = status.get("detail", "")
    if status.get("state") == "RUNNING" and detail.startswith("pid "):
        return detail[4:].split(",", 1)[0].strip()
    return None


def log_size(path):
    try:
        return os.path.getsize(path)
    except (OSError, TypeError):
        return 0


def log_tail(path, offset, lines):
    """(heading, lines) for the failure message: the program's log since the wait began, else its last lines."""
    if not path:
        return "no log_file was given, so no log of the program", []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return "its log %s could not be read (%s)" % (path, exc.strerror or exc), []
    since = data[offset:] if len(data) >= offset else data  # a rotated log starts again at 0
    got = [line for line in since.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if got:
        return "Its log since the wait began (%s):" % path, got[-lines:]
    got = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()][-lines:]
    if got:
        return "Nothing in its log since the wait began; its last %s (tail -n %d %s):" % (
            times(len(got), "line"), lines, path), got
    return "Its log %s is empty" % path, []


class Waiter:
    def __init__(self, module):
        self.module = module
        params = module.params
        self.url = params["url"]
        self.unit = params["unit"]
        self.program = params["program"]
        self.supervisorctl = params["supervisorctl"]
        self.log_file = params["log_file"]
        self.timeout = params["timeout"]
        self.interval = params["interval"]
        self.request_timeout = params["request_timeout"]
        self.max_restarts = params["max_restarts"]
        self.journal_lines = params["journal_lines"]
        self.status_codes = params["status_code"]
        self.name = params["name"] or self.unit or self.program or self.url
        if params["name"] and self.unit and params["name"] != self.unit:
            self.who = "%s (unit %s)" % (params["name"], self.unit)
        elif self.unit:
            self.who = "unit %s" % self.unit
        elif params["name"] and self.program and params["name"] != self.program:
            self.who = "%s (supervisord program %s)" % (params["name"], self.program)
        elif self.program:
            self.who = "supervisord program %s" % self.program
        else:
            self.who = params["name"]
        self.opener = build_opener(params["validate_certs"])
        self.systemctl = self.journalctl = None
        if self.unit:
            self.systemctl = module.get_bin_path("systemctl")
            self.journalctl = module.get_bin_path("journalctl")
            if not self.systemctl:
                raise WaitFailed("unit %s was given, but systemctl was not found on the host: "
                                 "drop unit to only poll %s" % (self.unit, self.url))
        self.start = time.monotonic()
        self.deadline = self.start + self.timeout
        self.since = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.attempts = 0
        self.status = -1
        self.last_error = None
        self.props = None
        self.base_restarts = None
        self.restarts = 0
        self.exits = 0
        self.auto_restart_entries = 0
        self.in_auto_restart = False
        self.inactive_polls = 0
        self.log_offset = log_size(self.log_file)
        self.pstatus = None
        self.last_pid = None
        self.backoff_entries = 0
        self.in_backoff = False
        self.pid_changes = 0
        self.stopped_polls = 0

    def elapsed(self):
        return time.monotonic() - self.start

    def remaining(self):
        return self.deadline - time.monotonic()

    def facts(self):
        out = {"url": self.url, "name": self.name, "elapsed": round(self.elapsed(), 3), "attempts": self.attempts,
               "status": self.status, "restarts": self.restarts, "exits": self.exits}
        if self.props is not None:
            out["unit_status"] = self.props
        if self.pstatus is not None:
            out["program_status"] = self.pstatus
        return out

    def with_journal(self, msg):
        """Raise WaitFailed with msg and, with a unit, its journal (with a program, its log)."""
        if self.program:
            heading, lines = log_tail(self.log_file, self.log_offset, self.journal_lines)
        elif not self.unit:
            raise WaitFailed(msg)
        else:
            heading, lines = journal(self.journalctl, self.unit, self.since, self.journal_lines)
        raise WaitFailed("%s\n%s\n%s" % (msg, heading, "\n".join(lines)) if lines else "%s\n%s" % (msg, heading))

    def check_unit(self):
        """Read the unit's state; give up early when it will not come up."""
        props = unit_show(self.systemctl, self.unit, max(1.0, min(COMMAND_TIMEOUT, self.remaining())))
        if props is None:  # systemctl did not answer this time: keep polling, the deadline still holds
            return
        self.props = props
        nrestarts = as_int(props.get("NRestarts"))
        if self.base_restarts is None:
            self.base_restarts = nrestarts
        # NRestarts is reset when the unit is started by hand: never count backwards
        self.base_restarts = min(self.base_restarts, nrestarts)
        self.restarts = nrestarts - self.base_restarts
        active, sub = props.get("ActiveState", ""), props.get("SubState", "")
        # An exit shows as SubState=auto-restart for RestartSec; systemd bumps NRestarts while still in it
        # (when it schedules the restart), so one exit can look like "restarted once and exiting again".
        # Count each entry into auto-restart once, and restarts seen between two polls (RestartSec=0).
        if sub == "auto-restart" and not self.in_auto_restart:
            self.auto_restart_entries += 1
        self.in_auto_restart = sub == "auto-restart"
        self.exits = max(self.auto_restart_entries, self.restarts)
        gave_up = "so it gave up after %.1fs, before the %gs deadline." % (self.elapsed(), self.timeout)
        if props.get("LoadState") == "not-found":
            self.with_journal("%s is not a loaded systemd unit (LoadState=not-found), so nothing will answer on %s; "
                              "gave up at once." % (self.who, self.url))
        if active == "failed":
            self.with_journal("%s failed while waiting for %s: systemd reports it %s/%s (%s; restarted %s), %s"
                              % (self.who, self.url, active, sub, exit_description(props), times(self.restarts), gave_up))
        if self.max_restarts and self.exits >= self.max_restarts:
            # ExecMainStatus/Result describe the last exit only while the restart is pending
            last = "; last exit: %s" % exit_description(props) if sub == "auto-restart" else ""
            self.with_journal("%s crash-looped while waiting for %s: it exited %s (systemd restarted it %s%s), %s"
                              % (self.who, self.url, times(self.exits), times(self.restarts), last, gave_up))
        self.inactive_polls = self.inactive_polls + 1 if (active, sub) == ("inactive", "dead") else 0
        if self.inactive_polls >= 2:
            self.with_journal("%s stopped while waiting for %s: systemd reports it inactive/dead (%s) and nothing "
                              "restarts it, %s" % (self.who, self.url, exit_description(props), gave_up))

    def check_program(self):
        """Read the program's state in supervisord; give up early when it will not come up."""
        status = program_status(self.supervisorctl, self.program, max(1.0, min(COMMAND_TIMEOUT, self.remaining())))
        if status is None:  # supervisorctl did not answer this time: keep polling, the deadline still holds
            return
        self.pstatus = status
        state, detail = status["state"], status["detail"]
        gave_up = "so it gave up after %.1fs, before the %gs deadline." % (self.elapsed(), self.timeout)
        if state == "NO_SUPERVISORD":
            raise WaitFailed("%s cannot be checked: `%s status %s` did not reach supervisord (%s), so nothing will start "
                             "it; gave up at once. Start supervisord (the pod's start hook runs it)." % (
                                 self.who, " ".join(self.supervisorctl), self.program, detail))
        if state == "NOT_LOADED":
            self.with_journal("%s is not a program supervisord has loaded (%s), so nothing will answer on %s; gave up at "
                              "once." % (self.who, detail, self.url))
        if state == "BACKOFF" and not self.in_backoff:
            self.backoff_entries += 1
        self.in_backoff = state == "BACKOFF"
        pid = program_pid(status)
        if pid and self.last_pid and pid != self.last_pid:
            self.pid_changes += 1  # it exited and supervisord started it again between two polls
        self.last_pid = pid or self.last_pid
        self.exits = self.restarts = self.backoff_entries + self.pid_changes
        if state == "FATAL":
            self.with_journal("%s failed while waiting for %s: supervisord reports it FATAL (%s: it gave up starting it; "
                              "restarted %s), %s" % (self.who, self.url, detail or "exited too quickly", times(self.restarts),
                                                     gave_up))
        if self.max_restarts and self.exits >= self.max_restarts:
            self.with_journal("%s crash-looped while waiting for %s: it exited %s (supervisord reports it %s%s), %s"
                              % (self.who, self.url, times(self.exits), state, (" - " + detail) if detail else "", gave_up))
        self.stopped_polls = self.stopped_polls + 1 if state in ("STOPPED", "EXITED") else 0
        if self.stopped_polls >= 2:
            self.with_journal("%s stopped while waiting for %s: supervisord reports it %s (%s) and nothing restarts it, %s"
                              % (self.who, self.url, state, detail or "no detail", gave_up))

    def check(self):
        if self.unit:
            self.check_unit()
        elif self.program:
            self.check_program()

    def timed_out(self):
        last = "the last one %s" % self.last_error if self.last_error else "none made"
        msg = "%s on %s within %gs: %s, %s" % (
            "%s did not answer" % self.who if self.who else "Nothing answered", self.url, self.timeout,
            times(self.attempts, "attempt"), last)
        if self.unit:
            if self.props is not None:
                msg += "; unit %s is %s/%s, restarted %s during the wait" % (
                    self.unit, self.props.get("ActiveState"), self.props.get("SubState"), times(self.restarts))
            else:
                msg += "; systemctl show %s did not answer" % self.unit
        elif self.program:
            if self.pstatus is not None:
                msg += "; supervisord reports program %s %s%s, restarted %s during the wait" % (
                    self.program, self.pstatus["state"], (" (%s)" % self.pstatus["detail"]) if self.pstatus["detail"] else "",
                    times(self.restarts))
            else:
                msg += "; supervisorctl status %s did not answer" % self.program
        self.with_journal(msg + ".")

    def wait(self):
        while True:
            poll_start = time.monotonic()
            self.check()
            remaining = self.remaining()
            if remaining <= 0:
                break
            attempt_timeout = max(MIN_ATTEMPT_TIMEOUT, min(self.request_timeout, remaining))
            self.attempts += 1
            status, body, error = http_get(self.opener, self.url, attempt_timeout)
            self.status = status if status is not None else -1
            if status is not None and status in self.status_codes:
                return body
            self.last_error = error or "answered HTTP %d" % status
            remaining = self.remaining()
            if remaining <= 0:
                break
            time.sleep(min(max(0.0, poll_start + self.interval - time.monotonic()), remaining))
        # a last look: a crash right at the deadline is still reported as what it is
        self.check()
        return self.timed_out()


def validate(module):
    params = module.params
    for key in ("timeout", "interval", "request_timeout"):
        if params[key] <= 0:
            module.fail_json(msg="%s must be more than 0 seconds, got %s" % (key, params[key]))
    if params["max_restarts"] < 0:
        module.fail_json(msg="max_restarts must be 0 (no crash-loop check) or more, got %d" % params["max_restarts"])
    if params["journal_lines"] < 1:
        module.fail_json(msg="journal_lines must be 1 or more, got %d" % params["journal_lines"])
    if not params["url"].startswith(("http://", "https://")):
        module.fail_json(msg="url must start with http:// or https://, got %s" % params["url"])
    if not params["status_code"]:
        module.fail_json(msg="status_code must list at least one HTTP status")
    if params["program"] and not params["supervisorctl"]:
        module.fail_json(msg="program %s was given without supervisorctl: give the supervisorctl command line "
                             "(with -c <supervisord.conf>) that reaches its supervisord" % params["program"])


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "status_code": {"type": "list", "elements": "int", "default": [200]},
            "timeout": {"type": "float", "default": 300},
            "interval": {"type": "float", "default": 1},
            "request_timeout": {"type": "float", "default": 10},
            "unit": {"type": "str"},
            "program": {"type": "str"},
            "supervisorctl": {"type": "list", "elements": "str"},
            "log_file": {"type": "path"},
            "max_restarts": {"type": "int", "default": 2},
            "journal_lines": {"type": "int", "default": 60},
            "name": {"type": "str"},
            "return_content": {"type": "bool", "default": False},
            "validate_certs": {"type": "bool", "default": True},
        },
        mutually_exclusive=[("unit", "program")],
        supports_check_mode=True,
    )
    validate(module)
    waiter = None
    try:
        waiter = Waiter(module)
        body = waiter.wait()
    except WaitFailed as exc:
        details = waiter.facts() if waiter else {}
        module.fail_json(msg=exc.msg, changed=False, **details)
    result = dict(waiter.facts(), changed=False)
    if module.params["return_content"]:
        result["content"] = body.decode("utf-8", errors="replace")
        with contextlib.suppress(ValueError):
            result["json"] = json.loads(result["content"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
