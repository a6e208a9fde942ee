"""Bad input is refused before anything is created, with a message that names the setting the user wrote and the fix.

provision.yml on the local provider (its own bridge, SDCLOUD_NET=1), as a user runs it, with one bad setting at a
time; each case asserts the message, that it came in seconds, and that no machine exists afterwards. (The model
list's shape, mirror, provider and CIDR cases live in test_local_e2e.py, next to the machine they would otherwise make;
the model entries' own refusals - plugins/filter/models.py's sdcloud_model_problems - are here.)
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NET = "1"
NAME = "badinput"
sys.path.insert(0, str(pathlib.Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests" / "standins"))

import e2e_util  # noqa: E402
from runpod_server import RunpodStandin  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="local machines need root (systemd-nspawn)"),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    e = dict(os.environ, SDCLOUD_NET=NET)
    try:
        e = e2e_util.local_env(tmp, NET, NAME)
        e["TMP"] = str(tmp)
        yield e
    finally:
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=e, capture_output=True, check=False)


def machines(env):
    return list(e2e_util.machines(env))


def refused(env, needle, *args, **env_extra):
    t0 = time.monotonic()
    rc, out = e2e_util.run_play(dict(env, **env_extra), "provision.yml", *args, check=False, vars_file="upstream-vars.yml")
    assert rc != 0, out[-3000:]
    assert needle in out, out[-3000:]
    assert time.monotonic() - t0 < 60, "bad input must be refused in seconds"
    left = e2e_util.machines(env)
    assert left == {}, f"nothing may be created: {left}"
    return out


def key(env, name, mode=0o600, pub=True):
    """A real ed25519 key pair below the test's temp dir."""
    path = pathlib.Path(env["TMP"], name)
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    path.chmod(mode)
    if not pub:
        pathlib.Path(str(path) + ".pub").unlink()
    return str(path)


@pytest.mark.parametrize(("name", "needle"), [
    ("gpu-", "not ending with -"),
    ("a" * 42, "use 1 to 41"),
    ("Gpu", "lowercase letters"),
])
def test_deployment_name(env, name, needle):
    refused(env, needle, SDCLOUD_NAME=name)


@pytest.mark.parametrize(("models", "needle"), [
    ([{"kind": "checkpoints", "source": "hf://org/repo/m.safetensors"}],
     "sdcloud_models[0] (m.safetensors): hf://org/repo/m.safetensors has no @revision, which would silently follow the main "
     "branch: pin it as hf://org/repo/m.safetensors@<commit or tag>, or end it in @main"),
    ([{"kind": "loras", "name": "l.safetensors", "source": "civitai://detail-tweaker"}],
     "civitai://detail-tweaker is not a Civitai model version id: write civitai://<model version id>, digits only"),
    ([{"kind": "checkpoint", "source": "https://example.invalid/a.safetensors"}], "unknown kind 'checkpoint': 'checkpoints'?"),
    ([{"kind": "vae", "source": "ftp://example.invalid/a.pt"}], "ftp://example.invalid/a.pt is not a source sdcloud can download"),
    ([{"kind": "vae", "source": "https://example.invalid/a.pt"}] * 2, "sdcloud_models[1] (a.pt): vae/a.pt is declared twice"),
    ([{"kind": "vae", "source": "https://example.invalid/a.pt", "sha256": "abc"}], "sha256 must be 64 hex digits"),
], ids=["hf-no-revision", "civitai-not-an-id", "unknown-kind", "unknown-scheme", "duplicate", "sha256"])
def test_model_list(env, models, needle):
    refused(env, needle, "-e", json.dumps({"sdcloud_models": models}))


def test_key_path_with_a_blank(env):
    k = key(env, "with blank/id_ed25519")
    refused(env, "contains a blank: use a path without spaces", "-e", json.dumps({"sdcloud_ssh_key_path": k}))


def test_key_without_its_pub(env):
    k = key(env, "nopub/id_ed25519", pub=False)
    out = refused(env, f"has no {k}.pub: write it with `ssh-keygen -y -f {k} > {k}.pub`", "-e", json.dumps({"sdcloud_ssh_key_path": k}))
    assert not pathlib.Path(k + ".pub").exists(), out[-2000:]


def test_key_readable_by_others(env):
    k = key(env, "open/id_ed25519", mode=0o644)
    refused(env, f"is readable by others (mode 0644), which ssh refuses: `chmod 600 {k}`", "-e", json.dumps({"sdcloud_ssh_key_path": k}))
    assert pathlib.Path(k).stat().st_mode & 0o777 == 0o644, "the user's key is theirs: sdcloud does not chmod it"


def test_key_path_is_a_directory(env):
    d = pathlib.Path(env["TMP"], "keydir")
    d.mkdir()
    refused(env, f"sdcloud_ssh_key_path {d} is not a file", "-e", json.dumps({"sdcloud_ssh_key_path": str(d)}))


def test_a_first_provision_that_fails_leaves_the_firewall_up(env):
    """The host firewall comes before anything that listens: a first provision that fails in a UI role (here the
    ComfyUI stand-in crash-looping on a bad flag) leaves a default-deny machine, not an open one."""
    key_path = key(env, "fw/id_ed25519")
    xv = {"sdcloud_ssh_key_path": key_path, "comfyui_extra_args": ["--no-such-flag"], "comfyui_wait_timeout": 60}
    try:
        rc, out = e2e_util.run_play(env, "provision.yml", "-e", json.dumps(xv), check=False)
        assert rc != 0 and "crash-looped" in out, out[-3000:]
        (m,) = e2e_util.machines(env).values()
        ruleset = subprocess.run(["ssh", "-i", key_path, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                  "-o", "LogLevel=ERROR", "root@" + m["address"], "nft list ruleset"],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
        assert "policy drop" in ruleset and "dport 22 " in ruleset, ruleset
    finally:
        e2e_util.run_play(env, "teardown.yml", "-e", json.dumps(xv), check=False)
    assert machines(env) == []


@pytest.mark.parametrize(("extra", "key", "needle"), [
    ({}, None, "sdcloud_provider runpod needs an API key in RUNPOD_API_KEY, which is not set: export RUNPOD_API_KEY="),
    ({"sdcloud_access": "public", "sdcloud_access_cidrs": ["198.51.100.0/24"]}, "k",
     "sdcloud_access_cidrs is 198.51.100.0/24, but runpod pods have no firewall: the provider exposes the proxy's port "
     "to everyone, and only the access token guards it. Set sdcloud_access_cidrs: []"),
    ({"sdcloud_zones": ["us-east-1"]}, "k", "data centers to try in order, e.g. [US-KS-2, EU-RO-1], or [] for anywhere"),
    ({"sdcloud_gpu": "nvidia-t4"}, "k", "sdcloud_gpu is 'nvidia-t4': on runpod use one of"),
], ids=["no-api-key", "public-cidrs", "zone", "gpu"])
def test_pod_settings_are_refused_before_a_pod_exists(env, extra, key, needle):
    """A pod is rented only once its settings pass: against the RunPod stand-in (tests/standins/runpod_server.py,
    TEST STAND-IN of RunPod's REST API v2), no create request may arrive."""
    settings = {"sdcloud_provider": "runpod", "sdcloud_gpu": "nvidia-rtx-4090", **extra}
    with RunpodStandin(api_key="k") as standin:
        run_env = {k: v for k, v in env.items() if k != "RUNPOD_API_KEY"}
        run_env.update(SDCLOUD_INVENTORY_PROVIDERS="runpod", SDCLOUD_RUNPOD_ENDPOINT=standin.url, **(
            {"RUNPOD_API_KEY": key} if key else {}))
        refused(run_env, needle, "-e", json.dumps(settings))
        assert standin.requests_for("POST") == [], "no pod may be created"
