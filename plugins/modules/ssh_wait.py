#!/usr/bin/python
"""Ansible module: wait, against a deadline, until a machine accepts an SSH login; give up early on a refusal that will not change."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ssh_wait
short_description: Wait until a machine accepts an SSH login, giving up early when the refusal will not change
description:
  - Runs C(ssh -o BatchMode=yes ... true) against I(host) every I(interval) seconds, with the connection
    options the inventory gives the host (user, port, private key, I(ssh_args)), until a login works or
    I(timeout) seconds of wall-clock time (a monotonic deadline) have passed.
  - Reads what ssh printed on each attempt and gives up at once, naming the setting to fix, when the refusal
    will not change by waiting - the private key is readable by others (C(UNPROTECTED PRIVATE KEY FILE)) or
    missing, the host key differs from the one pinned in the known_hosts file (C(REMOTE HOST IDENTIFICATION
    HAS CHANGED)) or strict checking has no key for the host, or the key is refused
    (C(Permission denied), publickey) for longer than I(denied_timeout).
  - Gives up before the deadline when every attempt for I(refused_timeout) seconds was refused
    (C(Connection refused)) - the machine is running, so sshd does not start - and, with I(unanswered_timeout),
    when nothing answered at all (no route, a timeout, a name that does not resolve) for that long - a host
    that should already be up, such as a static host.
  - Transient answers (refusals in the first seconds of a boot, timeouts while a cloud machine's network
    comes up, a connection closed while sshd starts) keep the wait going until the deadline.
  - "Runs on the controller (C(delegate_to: localhost)), where the ssh client and the operator's key are."
version_added: "1.2.0"
author: sdcloud
options:
  host:
    description: Address (or name) to connect to; the host's C(ansible_host).
    type: str
    required: true
  port:
    description: SSH port.
    type: int
    default: 22
  user:
    description: Login user; the host's C(ansible_user).
    type: str
    required: true
  private_key_file:
    description: Private key to log in with (C(-o IdentityFile)); without it ssh uses its default keys and agent.
    type: path
  ssh_args:
    description:
      - Further ssh options as one string, the way C(ansible_ssh_common_args) writes them
        (C(-o HostKeyAlias=sdcloud-gcp-123 -o UserKnownHostsFile=/home/me/.ssh/sdcloud_known_hosts)); split like
        a shell line.
    type: str
    default: ""
  provider:
    description: The machine's sdcloud provider; it chooses the fix the messages give.
    type: str
    choices: [local, static, gcp, aws, runpod, vastai]
    required: true
  name:
    description: The machine's inventory name, for the messages (a static host's C(static_hosts) entry).
    type: str
    required: true
  timeout:
    description: Wall-clock seconds the whole wait may take (the playbooks pass C(sdcloud_wait_timeout)).
    type: float
    default: 600
  interval:
    description: Seconds from the start of one attempt to the start of the next.
    type: float
    default: 2
  connect_timeout:
    description: Seconds one attempt may take to connect (C(-o ConnectTimeout)); never more than the time left.
    type: int
    default: 10
  refused_timeout:
    description:
      - Give up when every attempt for this many seconds was refused (C(Connection refused)). A running machine
        whose port 22 refuses that long has no sshd coming up.
    type: float
    default: 90
  denied_timeout:
    description:
      - Give up when the key has been refused (C(Permission denied)) for this many seconds. C(0) gives up at the
        first refusal; on clouds and pods a little grace covers an image that adds the key after sshd starts.
    type: float
    default: 0
  unanswered_timeout:
    description:
      - Give up when nothing answered at all (no route, timed out, a name that does not resolve) for this many
        seconds. C(0) waits until the deadline (a cloud machine whose network is still coming up).
    type: float
    default: 0
requirements:
  - the OpenSSH client (C(ssh)) on the controller
notes:
  - C(changed) is always false. The module only connects, so it also runs, and really waits, in check mode.
  - ControlMaster is off for the attempts (C(-o ControlMaster=no -o ControlPath=none)), so no attempt leaves a
    master connection behind or reuses one made with other options.
attributes:
  check_mode:
    support: full
    details: Only connects; waits in check mode as in a normal run.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Wait for a working SSH login, giving up early on a refusal that will not change
  ssh_wait:
    host: "{{ ansible_host }}"
    user: "{{ ansible_user }}"
    private_key_file: "{{ ansible_ssh_private_key_file | default(omit) }}"
    ssh_args: "{{ ansible_ssh_common_args | default('') }}"
    provider: "{{ sdcloud_provider }}"
    name: "{{ inventory_hostname }}"
    timeout: 600
  delegate_to: localhost
"""

RETURN = r"""
changed:
  description: Always false; the module only connects.
  returned: always
  type: bool
elapsed:
  description: Seconds the wait took (monotonic clock).
  returned: always
  type: float
  sample: 3.207
attempts:
  description: ssh attempts made.
  returned: always
  type: int
last:
  description:
    - What the last attempt got - C(ok), C(denied), C(unprotected_key), C(missing_key), C(host_key_changed),
      C(host_key_unknown), C(host_key_failed), C(refused), C(unanswered), C(closed), C(hung) or C(other).
  returned: always
  type: str
  sample: ok
stderr:
  description: What ssh printed on the last failed attempt.
  returned: failure
  type: str
"""

import re
import shlex
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

# What ssh prints (OpenSSH 8-9: ssh.c, sshconnect.c, sshconnect2.c, authfile.c), checked in this order:
# the first pattern that matches names the kind. A refused key on a machine whose host key changed prints
# both warnings; the host key one is the cause.
KINDS = (
    ("host_key_changed", re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for \S+ has changed")),
    ("host_key_unknown", re.compile(r"No \S+ host key is known for \S+ and you have requested strict checking")),
    ("unprotected_key", re.compile(r"UNPROTECTED PRIVATE KEY FILE")),
    ("missing_key", re.compile(r"Identity file .* not accessible")),
    ("denied", re.compile(r"Permission denied \(|Too many authentication failures")),
    ("refused", re.compile(r"Connection refused")),
    ("unanswered", re.compile(r"Connection timed out|No route to host|Network is unreachable|Host is unreachable"
                              r"|Could not resolve hostname")),
    ("closed", re.compile(r"Connection closed by|Connection reset by|kex_exchange_identification|Broken pipe")),
    ("host_key_failed", re.compile(r"Host key verification failed")),
)
ATTEMPT_SLACK = 5.0  # an attempt may run this much past its ConnectTimeout (key exchange, login, `true`)
MIN_ATTEMPT = 1  # seconds: the shortest ConnectTimeout an attempt gets, right at the deadline


class GaveUp(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        self.msg = msg


def classify(rc, stderr):
    """(kind, stderr) of one attempt: `ok` for rc 0, else the first of KINDS whose pattern is in stderr, else `other`."""
    if rc == 0:
        return "ok"
    for kind, pattern in KINDS:
        if pattern.search(stderr or ""):
            return kind
    return "other"


def first(pattern, text, default=""):
    m = re.search(pattern, text or "")
    return m.group(1) if m else default


def seconds(value):
    return "%.0fs" % value if value >= 10 else "%.1fs" % value


class Waiter:
    def __init__(self, module, ssh):
        self.p = module.params
        self.ssh = ssh
        self.start = time.monotonic()
        self.deadline = self.start + self.p["timeout"]
        self.attempts = 0
        self.last = "none"
        self.stderr = ""
        self.since = {}  # kind -> when the run of attempts of that kind began (monotonic)

    def elapsed(self):
        return time.monotonic() - self.start

    def remaining(self):
        return self.deadline - time.monotonic()

    def argv(self, connect_timeout):
        p = self.p
        argv = [self.ssh, "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % connect_timeout,
                "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "User=%s" % p["user"], "-p", str(p["port"])]
        if p["private_key_file"]:
            argv += ["-o", "IdentityFile=%s" % p["private_key_file"]]
        argv += shlex.split(p["ssh_args"] or "")
        return argv + [p["host"], "true"]

    def attempt(self):
        """One login; returns its kind."""
        remaining = self.remaining()
        connect = max(MIN_ATTEMPT, min(self.p["connect_timeout"], int(remaining)))
        self.attempts += 1
        try:
            proc = subprocess.run(self.argv(connect), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=max(float(MIN_ATTEMPT), min(remaining, connect + ATTEMPT_SLACK)),
                                  check=False)
        except subprocess.TimeoutExpired:
            self.stderr = "ssh connected but did not finish the login within %ds" % (connect + ATTEMPT_SLACK)
            return "hung"
        self.stderr = proc.stderr.strip()
        return classify(proc.returncode, proc.stderr)

    # -- the messages: what ssh said, why waiting will not help, and the setting to fix -------------------
    def where(self):
        p = self.p
        return "%s@%s port %d" % (p["user"], p["host"], p["port"])

    def key_setting(self):
        p = self.p
        key = p["private_key_file"]
        if p["provider"] == "static":
            if key:
                return "the key %s (ssh_private_key_file of static_hosts entry %s in inventory/sdcloud.yml)" % (key, p["name"])
            return ("your default keys and agent (static_hosts entry %s in inventory/sdcloud.yml names no "
                    "ssh_private_key_file)" % p["name"])
        if p["provider"] == "local" and key:
            return "the key %s (sdcloud_ssh_key_path when the machine was made; the local provider records it)" % key
        return "the key %s (sdcloud_ssh_key_path, inventory/group_vars/all/access.yml)" % (key or "ssh's default")

    def denied_fix(self):
        p = self.p
        key = p["private_key_file"] or "<your key>"
        if p["provider"] == "static":
            return ("put %s.pub into ~%s/.ssh/authorized_keys on the host, or set ssh_private_key_file of static_hosts "
                    "entry %s to a key it accepts" % (key, p["user"], p["name"]))
        if p["provider"] == "local":
            return ("a key made anew at %s since the machine was created is not the one it knows: put the old key back, "
                    "or run playbooks/teardown.yml and provision.yml to make the machine with the new one" % key)
        return ("check that sdcloud_ssh_key_path names the key this machine was given (its .pub went to the cloud "
                "when the machine was made), that %s.pub is the public half of %s, and that the image lets %s log "
                "in with a key" % (key, key, p["user"]))

    def host_setting(self):
        p = self.p
        if p["provider"] == "static":
            return "static_hosts entry %s (address %s, port %d) in inventory/sdcloud.yml" % (p["name"], p["host"], p["port"])
        return "machine %s at %s" % (p["name"], p["host"])

    def give_up(self, kind, attempt_began):
        """Raise GaveUp when `kind` (that of the attempt begun at `attempt_began`) will not change by waiting."""
        p, err = self.p, self.stderr
        for k in list(self.since):
            if k != kind:
                del self.since[k]
        lasted = time.monotonic() - self.since.setdefault(kind, attempt_began)
        said = "ssh said: %s" % err.splitlines()[-1] if err else "ssh said nothing"
        if kind == "unprotected_key":
            key = first(r"Load key \"([^\"]+)\": bad permissions", err) or p["private_key_file"]
            perms = first(r"Permissions (\d+) for", err, "?")
            raise GaveUp("SSH to %s: ssh ignores the private key %s because others can read it (mode %s; "
                         "UNPROTECTED PRIVATE KEY FILE), so no login can work: `chmod 600 %s` (the key of %s)"
                         % (self.where(), key, perms, key, self.key_setting()))
        if kind == "missing_key":
            key = first(r"Identity file (.*) not accessible", err) or p["private_key_file"]
            raise GaveUp("SSH to %s: the private key %s does not exist (%s), so no login can work: name the right "
                         "file, or run provision.yml, which makes sdcloud_ssh_key_path when it is missing"
                         % (self.where(), key, self.key_setting()))
        if kind == "host_key_changed":
            known = first(r"Offending \S+ key in (.+):\d+", err) or first(r"Add correct host key in (.+) to get rid", err) or "?"
            line = first(r"Offending \S+ key in .+:(\d+)", err)
            alias = first(r"Host key for (\S+) has changed", err) or p["host"]
            raise GaveUp("SSH to %s: the host key it shows differs from the one pinned for %s in %s%s (REMOTE HOST "
                         "IDENTIFICATION HAS CHANGED), so ssh refuses it and waiting will not help. If the machine was "
                         "made anew or reinstalled, remove the old entry with `ssh-keygen -f \"%s\" -R \"%s\"` and run "
                         "again; if it was not, someone may be between you and it: do not connect"
                         % (self.where(), alias, known, (" (line %s)" % line) if line else "", known, alias))
        if kind == "host_key_unknown":
            alias = first(r"host key is known for (\S+) and", err) or p["host"]
            raise GaveUp("SSH to %s: no host key is recorded for %s and strict host key checking is on, so ssh refuses "
                         "it: add the machine's key to the known_hosts file its ssh_args name, or let sdcloud record "
                         "it on first use (StrictHostKeyChecking=accept-new, the inventory's default)" % (self.where(), alias))
        if kind == "host_key_failed":
            raise GaveUp("SSH to %s: host key verification failed (%s): check the known_hosts file the host's ssh_args "
                         "name (sdcloud_known_hosts_file)" % (self.where(), said))
        if kind == "denied" and lasted >= p["denied_timeout"]:
            raise GaveUp("SSH to %s: the machine refuses %s (%s)%s, so waiting will not help: %s"
                         % (self.where(), self.key_setting(), said,
                            " for %s" % seconds(lasted) if p["denied_timeout"] else "", self.denied_fix()))
        if kind == "refused" and lasted >= p["refused_timeout"]:
            raise GaveUp("SSH to %s: every connection for %s was refused (%s) while the machine runs: sshd is not "
                         "starting on it%s. Look at the machine's console or its sshd (systemctl status ssh)%s"
                         % (self.where(), seconds(lasted), said,
                            "" if p["provider"] != "static" else " (or listens on another port)",
                            ", or set the port of " + self.host_setting() if p["provider"] == "static" else ""))
        if kind == "unanswered" and p["unanswered_timeout"] and lasted >= p["unanswered_timeout"]:
            raise GaveUp("SSH to %s: nothing answered for %s (%s): check %s - the address, and that the host is on "
                         "and reachable from this computer" % (self.where(), seconds(lasted), said, self.host_setting()))

    def timed_out(self):
        raise GaveUp("SSH to %s: no login within %gs (%d attempts; the last %s: %s)%s"
                     % (self.where(), self.p["timeout"], self.attempts, self.last,
                        self.stderr.splitlines()[-1] if self.stderr else "nothing printed",
                        ": check %s" % self.host_setting()))

    def wait(self):
        while True:
            began = time.monotonic()
            if self.remaining() <= 0:
                return self.timed_out()
            self.last = self.attempt()
            if self.last == "ok":
                return None
            self.give_up(self.last, began)
            remaining = self.remaining()
            if remaining <= 0:
                return self.timed_out()
            time.sleep(min(max(0.0, began + self.p["interval"] - time.monotonic()), remaining))

    def facts(self):
        return {"elapsed": round(self.elapsed(), 3), "attempts": self.attempts, "last": self.last}


def main():
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "port": {"type": "int", "default": 22},
            "user": {"type": "str", "required": True},
            "private_key_file": {"type": "path"},
            "ssh_args": {"type": "str", "default": ""},
            "provider": {"type": "str", "required": True, "choices": ["local", "static", "gcp", "aws", "runpod", "vastai"]},
            "name": {"type": "str", "required": True},
            "timeout": {"type": "float", "default": 600},
            "interval": {"type": "float", "default": 2},
            "connect_timeout": {"type": "int", "default": 10},
            "refused_timeout": {"type": "float", "default": 90},
            "denied_timeout": {"type": "float", "default": 0},
            "unanswered_timeout": {"type": "float", "default": 0},
        },
        supports_check_mode=True,
    )
    p = module.params
    for key in ("timeout", "interval", "connect_timeout"):
        if p[key] <= 0:
            module.fail_json(msg="%s must be more than 0 seconds, got %s" % (key, p[key]))
    for key in ("refused_timeout", "denied_timeout", "unanswered_timeout"):
        if p[key] < 0:
            module.fail_json(msg="%s must be 0 or more seconds, got %s" % (key, p[key]))
    try:
        shlex.split(p["ssh_args"] or "")
    except ValueError as exc:
        module.fail_json(msg="ssh_args %r do not split like a shell line (%s): check ansible_ssh_common_args" % (p["ssh_args"], exc))
    ssh = module.get_bin_path("ssh")
    if not ssh:
        module.fail_json(msg="ssh_wait needs the OpenSSH client on the controller: install openssh-client")
    waiter = Waiter(module, ssh)
    try:
        waiter.wait()
    except GaveUp as exc:
        module.fail_json(msg=exc.msg, changed=False, stderr=waiter.stderr, **waiter.facts())
    module.exit_json(changed=False, **waiter.facts())


if __name__ == "__main__":
    main()
