"""ssh_wait: what OpenSSH printed, classified; and main() end to end against a stand-in `ssh` on PATH that answers
each attempt as the real client did (stderr and exit status recorded from OpenSSH 9.2p1, Debian 12, against a
Debian 12 test host), so the waits that must end early end early and the transient ones keep going.

Timing asserts give their margins explicitly: an early end is checked against a bound far below the timeout (LONG).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import stat
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import ssh_wait  # noqa: E402
from module_runner import run_main  # noqa: E402

LONG = 60.0
EARLY = 5.0  # an early end comes within this many seconds (plus the grace the case sets)

# Real OpenSSH 9.2p1 stderr, each from `ssh -o BatchMode=yes -o ConnectTimeout=5 ... root@10.87.3.10 true`.
DENIED = "root@10.87.3.10: Permission denied (publickey).\n"
UNPROTECTED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@         WARNING: UNPROTECTED PRIVATE KEY FILE!          @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Permissions 0644 for '/tmp/sw/kopen' are too open.
It is required that your private key files are NOT accessible by others.
This private key will be ignored.
Load key "/tmp/sw/kopen": bad permissions
root@10.87.3.10: Permission denied (publickey).
"""
MISSING_KEY = """\
Warning: Identity file /tmp/sw/nokey not accessible: No such file or directory.
root@10.87.3.10: Permission denied (publickey).
"""
HOST_KEY_CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:Cq0XFc96sCFNmxafCm6Qz7p6nmMya6FR6VkVDz7Uwsc.
Please contact your system administrator.
Add correct host key in /tmp/sw/kh to get rid of this message.
Offending ED25519 key in /tmp/sw/kh:1
  remove with:
  ssh-keygen -f "/tmp/sw/kh" -R "sdcloud-static-homebox"
Host key for sdcloud-static-homebox has changed and you have requested strict checking.
Host key verification failed.
"""
HOST_KEY_UNKNOWN = """\
No ED25519 host key is known for sdcloud-x and you have requested strict checking.
Host key verification failed.
"""
REFUSED = "ssh: connect to host 10.87.3.10 port 2222: Connection refused\n"
NO_ROUTE = "ssh: connect to host 10.87.3.250 port 22: No route to host\n"
TIMED_OUT = "ssh: connect to host 10.87.3.251 port 22: Connection timed out\n"
NO_NAME = "ssh: Could not resolve hostname no-such-host.invalid: Name or service not known\n"
# sshd closing a connection while it starts (MaxStartups, a boot in progress): OpenSSH's kex.c / sshconnect.c wording
CLOSED = "kex_exchange_identification: Connection closed by remote host\nConnection closed by 10.87.3.10 port 22\n"


@pytest.mark.parametrize(("stderr", "kind"), [
    (DENIED, "denied"),
    (UNPROTECTED, "unprotected_key"),
    (MISSING_KEY, "missing_key"),
    (HOST_KEY_CHANGED, "host_key_changed"),
    (HOST_KEY_UNKNOWN, "host_key_unknown"),
    (REFUSED, "refused"),
    (NO_ROUTE, "unanswered"),
    (TIMED_OUT, "unanswered"),
    (NO_NAME, "unanswered"),
    (CLOSED, "closed"),
    ("something new\n", "other"),
])
def test_classify_real_openssh_stderr(stderr, kind):
    assert ssh_wait.classify(255, stderr) == kind


def test_rc_0_is_a_login_whatever_ssh_printed():
    assert ssh_wait.classify(0, "Warning: Permanently added 'sdcloud-gcp-1' (ED25519) to the list of known hosts.\n") == "ok"


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    """A stand-in `ssh` first on PATH: attempt n answers answers[min(n, len - 1)] = (rc, stderr), and records its argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    state = tmp_path / "ssh-state.json"
    script = bindir / "ssh"
    script.write_text(f"""#!{sys.executable}
import json, sys
state = json.load(open({str(state)!r}))
n = len(state["calls"])
state["calls"].append(sys.argv[1:])
json.dump(state, open({str(state)!r}, "w"))
rc, err = state["answers"][min(n, len(state["answers"]) - 1)]
sys.stderr.write(err)
sys.exit(rc)
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    def answer(*answers):
        state.write_text(json.dumps({"answers": list(answers), "calls": []}))
        return lambda: json.loads(state.read_text())["calls"]

    return answer


def run(**over):
    args = {"host": "10.87.3.10", "user": "root", "provider": "local", "name": "sd", "timeout": LONG,
            "interval": 0.05, "private_key_file": "/home/me/.ssh/sdcloud_ed25519"}
    args.update(over)
    t0 = time.monotonic()
    failed, result = run_main(ssh_wait.main, args)
    return failed, result, time.monotonic() - t0


def test_a_login_after_a_boot_returns_with_the_inventorys_options(fake_ssh):
    calls = fake_ssh((255, NO_ROUTE), (255, REFUSED), (255, CLOSED), (0, ""))
    failed, result, _ = run(port=2200, ssh_args="-o HostKeyAlias=sdcloud-gcp-1 -o UserKnownHostsFile='/a b/kh'",
                            provider="gcp")
    assert not failed, result
    assert result["attempts"] == 4 and result["last"] == "ok" and result["changed"] is False
    argv = calls()[-1]
    for opt in ("BatchMode=yes", "User=root", "IdentityFile=/home/me/.ssh/sdcloud_ed25519", "ControlMaster=no",
                "HostKeyAlias=sdcloud-gcp-1", "UserKnownHostsFile=/a b/kh"):
        assert opt in argv, argv
    assert argv[argv.index("-p") + 1] == "2200" and argv[-2:] == ["10.87.3.10", "true"]


def test_check_mode_waits_too(fake_ssh):
    fake_ssh((255, REFUSED), (0, ""))
    failed, result = run_main(ssh_wait.main, {"host": "h", "user": "root", "provider": "local", "name": "sd",
                                              "timeout": LONG, "interval": 0.05}, check=True)
    assert not failed and result["attempts"] == 2, result


def test_a_refused_key_ends_at_once_naming_the_setting(fake_ssh):
    fake_ssh((255, DENIED))
    failed, result, took = run(provider="aws")
    assert failed and took < EARLY and result["attempts"] == 1, result
    assert "refuses the key /home/me/.ssh/sdcloud_ed25519 (sdcloud_ssh_key_path" in result["msg"]
    assert "Permission denied (publickey)" in result["msg"]


def test_a_refused_key_gets_the_grace_given_then_ends(fake_ssh):
    calls = fake_ssh((255, DENIED))
    failed, result, took = run(denied_timeout=1.0)
    assert failed and 1.0 <= took < 1.0 + EARLY and len(calls()) > 2, result
    assert re.search(r"\(publickey\)\.\) for 1\.\ds", result["msg"]), result["msg"]


def test_a_key_the_image_adds_late_is_waited_for(fake_ssh):
    fake_ssh((255, DENIED), (255, DENIED), (0, ""))
    failed, result, _ = run(denied_timeout=30)
    assert not failed and result["attempts"] == 3, result


def test_a_new_key_on_a_local_machine_says_what_to_do(fake_ssh):
    fake_ssh((255, DENIED))
    failed, result, _ = run(provider="local")
    assert failed and "the local provider records it" in result["msg"] and "teardown.yml and provision.yml" in result["msg"]


def test_a_static_host_that_refuses_the_key_names_its_entry(fake_ssh):
    fake_ssh((255, DENIED))
    failed, result, _ = run(provider="static", name="homebox", private_key_file="/k/box")
    assert failed and "ssh_private_key_file of static_hosts entry homebox in inventory/sdcloud.yml" in result["msg"]
    assert "put /k/box.pub into ~root/.ssh/authorized_keys" in result["msg"]


def test_an_unprotected_key_ends_at_once_with_the_chmod(fake_ssh):
    fake_ssh((255, UNPROTECTED))
    failed, result, took = run(denied_timeout=30, provider="gcp")
    assert failed and took < EARLY, result
    assert "`chmod 600 /tmp/sw/kopen`" in result["msg"] and "mode 0644" in result["msg"]


def test_a_missing_key_ends_at_once(fake_ssh):
    fake_ssh((255, MISSING_KEY))
    failed, result, took = run(denied_timeout=30)
    assert failed and took < EARLY and "the private key /tmp/sw/nokey does not exist" in result["msg"], result


def test_a_changed_host_key_names_the_file_and_the_command(fake_ssh):
    fake_ssh((255, HOST_KEY_CHANGED))
    failed, result, took = run(provider="static", name="homebox")
    assert failed and took < EARLY, result
    assert "pinned for sdcloud-static-homebox in /tmp/sw/kh (line 1)" in result["msg"]
    assert '`ssh-keygen -f "/tmp/sw/kh" -R "sdcloud-static-homebox"`' in result["msg"]


def test_strict_checking_without_a_key_ends_at_once(fake_ssh):
    fake_ssh((255, HOST_KEY_UNKNOWN))
    failed, result, took = run()
    assert failed and took < EARLY and "no host key is recorded for sdcloud-x" in result["msg"], result


def test_refused_for_long_ends_before_the_deadline(fake_ssh):
    calls = fake_ssh((255, REFUSED))
    failed, result, took = run(refused_timeout=1.0)
    assert failed and 1.0 <= took < 1.0 + EARLY and len(calls()) > 2, result
    assert re.search(r"every connection for 1\.\ds was refused", result["msg"]) and "sshd is not starting" in result["msg"]


def test_the_refusal_clock_restarts_when_something_else_answers(fake_ssh):
    # refused, then closed (sshd starting), then refused again: each run of refusals (3 attempts 0.5 s apart,
    # about 1.2 s) is shorter than refused_timeout, the two together (about 3.2 s) are not
    fake_ssh(*([(255, REFUSED)] * 3 + [(255, CLOSED)] + [(255, REFUSED)] * 3 + [(0, "")]))
    failed, result, _ = run(refused_timeout=2.0, interval=0.5)
    assert not failed and result["attempts"] == 8, result


def test_a_cloud_machine_that_does_not_answer_is_waited_for_until_the_deadline(fake_ssh):
    fake_ssh((255, TIMED_OUT))
    failed, result, took = run(provider="gcp", timeout=1.5)
    assert failed and 1.5 <= took < 1.5 + EARLY, result
    assert "no login within 1.5s" in result["msg"] and "Connection timed out" in result["msg"]


def test_a_static_host_that_does_not_answer_names_its_entry(fake_ssh):
    fake_ssh((255, NO_ROUTE))
    failed, result, took = run(provider="static", name="homebox", host="10.87.3.250", unanswered_timeout=1.0)
    assert failed and 1.0 <= took < 1.0 + EARLY, result
    assert "static_hosts entry homebox (address 10.87.3.250, port 22) in inventory/sdcloud.yml" in result["msg"]
    assert "No route to host" in result["msg"]


def test_bad_ssh_args_are_refused(fake_ssh):
    fake_ssh((0, ""))
    failed, result, _ = run(ssh_args="-o 'unclosed")
    assert failed and "check ansible_ssh_common_args" in result["msg"]


@pytest.mark.parametrize("provider", ["runpod", "vastai"])
def test_a_pod_gets_the_clouds_message(fake_ssh, provider):
    fake_ssh((255, DENIED))
    failed, result, _ = run(provider=provider, port=40022)
    assert failed and "port 40022: the machine refuses the key /home/me/.ssh/sdcloud_ed25519 (sdcloud_ssh_key_path" in result["msg"]
