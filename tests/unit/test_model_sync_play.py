"""model_sync and roles/models through real ansible-playbook runs on localhost (connection local)."""

from __future__ import annotations

import getpass
import grp
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))

import model_server  # noqa: E402

pytestmark = pytest.mark.slow

SECRET = "civ_play_secret_token_42"


def blob(seed, size):
    return (hashlib.sha256(seed.encode()).digest() * (size // 32 + 1))[:size]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("play")
    bindir = pathlib.Path(sys.executable).parent
    # localhost plays the deployment's machine; the project's group_vars give the settings defaults
    (tmp / "inventory").mkdir()
    (tmp / "inventory" / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    (tmp / "inventory" / "hosts.ini").write_text(
        "[sdcloud_target]\nlocalhost ansible_connection=local ansible_python_interpreter="
        f"{sys.executable} ansible_become=false\n\n[all:vars]\nsdcloud_name=play\nsdcloud_inventory_deployment=play\n"
    )
    environ = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_INVENTORY=str(tmp / "inventory"),
        ANSIBLE_INVENTORY_ENABLED="ini",  # independent of the project's cloud inventory plugin
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        CIVITAI_TOKEN=SECRET,
        PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    environ.pop("HF_TOKEN", None)
    with model_server.ModelServer() as srv:
        yield tmp, environ, srv


def playbook(env, path, extra, *flags):
    tmp, environ, _srv = env
    (tmp / "extra.json").write_text(json.dumps(extra))
    cmd = [str(pathlib.Path(sys.executable).parent / "ansible-playbook"), str(path), "-e", f"@{tmp / 'extra.json'}"]
    proc = subprocess.run([*cmd, *flags], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False)
    recap = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", proc.stdout)
    assert recap, proc.stdout + proc.stderr
    return proc, {"ok": int(recap[1]), "changed": int(recap[2]), "failed": int(recap[3])}


def test_module_check_diff_then_real_then_idempotent(env):
    tmp, _environ, srv = env
    data = blob("play-direct", 200_000)
    url = srv.add("/play/direct.safetensors", data)
    models_dir = tmp / "direct"
    play = tmp / "direct.yml"
    play.write_text(
        "- name: Direct\n  hosts: sdcloud_target\n  gather_facts: false\n  tasks:\n"
        "    - name: Sync\n      model_sync:\n        models: '{{ wanted }}'\n        models_dir: '{{ dir }}'\n"
    )
    extra = {
        "dir": str(models_dir),
        "wanted": [
            {
                "name": "d.safetensors",
                "kind": "checkpoints",
                "source": url,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
    }
    proc, recap = playbook(env, play, extra, "--check", "--diff")
    assert recap == {"ok": 1, "changed": 1, "failed": 0}
    assert "+checkpoints/d.safetensors" in proc.stdout
    assert not models_dir.exists() and srv.requests("/play/direct.safetensors") == []
    proc, recap = playbook(env, play, extra, "--diff")
    assert recap["changed"] == 1 and recap["failed"] == 0
    assert (models_dir / "checkpoints" / "d.safetensors").read_bytes() == data
    srv.clear()
    for flags in (["--check"], []):
        proc, recap = playbook(env, play, extra, *flags)
        assert recap == {"ok": 1, "changed": 0, "failed": 0}, proc.stdout
    assert srv.requests() == []


def test_role_syncs_uploads_and_reports_failures_without_tokens(env):
    tmp, _environ, srv = env
    remote = blob("play-remote", 300_000)
    local = blob("play-local", 120_000)
    srv.add("/play/remote.safetensors", remote)
    (tmp / "operator").mkdir()
    (tmp / "operator" / "mine.safetensors").write_bytes(local)
    models_dir = tmp / "role-models"
    wanted = [
        {
            "name": "r.safetensors",
            "kind": "loras",
            "source": srv.url("/play/remote.safetensors"),
            "sha256": hashlib.sha256(remote).hexdigest(),
        },
        {
            "kind": "vae",
            "source": f"local:{tmp / 'operator' / 'mine.safetensors'}",
            "sha256": hashlib.sha256(local).hexdigest(),
        },
    ]
    extra = {
        "sdcloud_models": wanted,
        "sdcloud_models_dir": str(models_dir),
        "models_owner": getpass.getuser(),
        "models_group": grp.getgrgid(os.getgid()).gr_name,
    }
    # the same stand-in plays AUTOMATIC1111's API on 127.0.0.1
    srv.add("/sdapi/v1/refresh-checkpoints")
    srv.add("/sdapi/v1/refresh-loras")
    extra.update(models_notify_a1111=True, models_a1111_port=srv.port)
    book = ROOT / "playbooks" / "sync_models.yml"
    proc, recap = playbook(env, book, extra)
    assert recap["failed"] == 0, proc.stdout
    assert recap["changed"] >= 1
    posts = [e["path"] for e in srv.requests(method="POST")]
    assert posts == ["/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-loras"]
    assert (models_dir / "loras" / "r.safetensors").read_bytes() == remote
    assert (models_dir / "vae" / "mine.safetensors").read_bytes() == local
    assert not (models_dir / ".upload").exists()
    srv.clear()
    proc, recap = playbook(env, book, extra)
    assert recap["failed"] == 0 and recap["changed"] == 0, proc.stdout
    assert srv.requests() == []

    bad = [*wanted, {"name": "gone.safetensors", "kind": "loras", "source": srv.url(f"/play/gone?token={SECRET}")}]
    proc, recap = playbook(env, book, {**extra, "sdcloud_models": bad})
    assert recap["failed"] == 1
    assert "HTTP 404" in proc.stdout and "/play/gone?token=REDACTED" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr


def test_no_credential_in_the_output_at_any_verbosity(env):
    """A token in a URL's query and a password in its userinfo never show, not even at -vvv: not in the module's
    arguments, not in its results (a fetched file and a failed one), not in the machine's sync log or state file."""
    tmp, _environ, srv = env
    data = blob("play-vvv", 50_000)
    srv.add("/play/vvv.safetensors", data)
    password = "pw_hunter2_in_userinfo"
    url = srv.url(f"/play/vvv.safetensors?token={SECRET}").replace("http://", f"http://user:{password}@", 1)
    gone = srv.url(f"/play/vvv-gone.safetensors?token={SECRET}").replace("http://", f"http://user:{password}@", 1)
    models_dir = tmp / "vvv-models"
    extra = {
        "sdcloud_models": [
            {"name": "v.safetensors", "kind": "vae", "source": url, "sha256": hashlib.sha256(data).hexdigest()},
            {"name": "gone.safetensors", "kind": "vae", "source": gone},
            # a local: entry too: staging it used to set_fact the whole list, which -v prints
            {"kind": "embeddings", "source": f"local:{tmp / 'operator-vvv' / 'e@v1.pt'}"},
        ],
        "sdcloud_models_dir": str(models_dir),
        "models_owner": getpass.getuser(),
        "models_group": grp.getgrgid(os.getgid()).gr_name,
    }
    (tmp / "operator-vvv").mkdir()
    (tmp / "operator-vvv" / "e@v1.pt").write_bytes(b"embedding")
    proc, recap = playbook(env, ROOT / "playbooks" / "sync_models.yml", extra, "-vvv")
    out = proc.stdout + proc.stderr
    assert recap["failed"] == 1 and "HTTP 404" in out, proc.stdout[-3000:]
    assert (models_dir / "vae" / "v.safetensors").read_bytes() == data
    assert (models_dir / "embeddings" / "e@v1.pt").read_bytes() == b"embedding"
    assert "vae/v.safetensors: done" in (models_dir / ".sdcloud-sync.log").read_text()
    machine = {f.name: f.read_text() for f in (models_dir / ".sdcloud-sync.log", models_dir / ".sdcloud-state.json")}
    for where, text in {"the -vvv output": out, **machine}.items():
        leaks = [line for line in text.splitlines() if SECRET in line or password in line]
        assert not leaks, f"credentials in {where}:\n" + "\n".join(leaks[:10])
    assert "token=REDACTED" in machine[".sdcloud-sync.log"] and "user:" not in machine[".sdcloud-state.json"]
