"""The sdcloud inventory plugin through `ansible-inventory`, and the preflight's one-provider-per-deployment
check through `ansible-playbook`, as a user runs them. AWS machines come from moto (tests/standins)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))
import moto_faults  # noqa: E402

sys.path.insert(0, str(ROOT / "plugins" / "inventory"))
from sdcloud import host_names  # noqa: E402

gpu_instance = moto_faults.load_module("gpu_instance")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"


def _inst(name, provider, zone="z", id_="i"):
    return {"name": name, "provider": provider, "zone": zone, "id": id_}


def test_host_names_unique_only_where_needed():
    insts = [_inst("sd", "gcp", "us-central1-a"), _inst("sd", "aws", "us-east-1a"), _inst("other", "aws"),
             _inst("twice", "aws", "us-east-1a", "i-1"), _inst("twice", "aws", "us-west-2a", "i-2"),
             _inst("same", "aws", "us-east-1a", "i-3"), _inst("same", "aws", "us-east-1a", "i-4")]
    assert host_names(insts) == ["sd.gcp", "sd.aws", "other", "twice.aws.us-east-1a", "twice.aws.us-west-2a",
                                 "same.aws.us-east-1a.i-3", "same.aws.us-east-1a.i-4"]


def _inventory(tmp_path, **config):
    inv = tmp_path / "inventory"
    inv.mkdir(exist_ok=True)
    if not (inv / "group_vars").exists():
        (inv / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    (inv / "sdcloud.yml").write_text(json.dumps({"plugin": "sdcloud", **config}))
    return inv / "sdcloud.yml"


def _env(tmp_path):
    return dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                SDCLOUD_KNOWN_HOSTS=str(tmp_path / "known_hosts"), SDCLOUD_STATE_DIR=str(tmp_path / "state"),
                PATH=str(ROOT / ".venv/bin") + ":" + os.environ["PATH"])


def _plain(v):
    """ansible-inventory --list marks strings from a plugin as {"__ansible_unsafe": value}; the value."""
    if isinstance(v, dict):
        return v["__ansible_unsafe"] if set(v) == {"__ansible_unsafe"} else {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, list) else v


def _list(tmp_path, path):
    res = subprocess.run(["ansible-inventory", "-i", str(path), "--list"], cwd=ROOT, env=_env(tmp_path),
                         capture_output=True, text=True, check=True)
    return _plain(json.loads(res.stdout)), res.stderr


def test_static_hosts_groups_and_target(tmp_path):
    path = _inventory(tmp_path, deployment="sd", providers=["static"], static_hosts=[
        {"name": "homebox", "address": "192.0.2.10", "user": "ubuntu", "gpu": "nvidia-rtx-4090", "port": 2222},
        {"name": "spare", "address": "192.0.2.11", "deployment": "other"}])
    inv, _ = _list(tmp_path, path)
    assert sorted(inv["sdcloud_machines"]["hosts"]) == ["homebox", "spare"]
    assert inv["sdcloud_target"]["hosts"] == ["homebox"]
    assert inv["deployment_other"]["hosts"] == ["spare"]
    assert inv["gpu_nvidia_rtx_4090"]["hosts"] == ["homebox"]
    hv = inv["_meta"]["hostvars"]["homebox"]
    assert (hv["ansible_host"], hv["ansible_user"], hv["ansible_port"], hv["sdcloud_provider"]) == ("192.0.2.10", "ubuntu", 2222, "static")
    assert "HostKeyAlias=sdcloud-static-homebox" in hv["ansible_ssh_common_args"]


def test_static_host_without_address_names_the_entry(tmp_path):
    path = _inventory(tmp_path, deployment="sd", providers=["static"], static_hosts=[{"name": "homebox"}])
    res = subprocess.run(["ansible-inventory", "-i", str(path), "--list"], cwd=ROOT, env=_env(tmp_path),
                         capture_output=True, text=True, check=False)
    assert "static_hosts[0] needs at least name and address" in res.stderr


@pytest.fixture
def moto(monkeypatch):
    return moto_faults.prepare_aws(monkeypatch)


@pytest.fixture
def two_providers(moto, tmp_path):
    """Deployment `sd` with a running AWS machine, and a static host that is also called `sd`."""
    failed, res = moto_faults.run_module(gpu_instance.main, {
        "provider": "aws", "name": "sd", "gpu": "nvidia-l4", "zones": ["us-east-1"], "ssh_public_key": KEY,
        "wait_timeout": 30})
    assert not failed, res["msg"]
    return _inventory(tmp_path, deployment="sd", providers=["static", "aws"], aws_regions=["us-east-1"],
                      static_hosts=[{"name": "sd", "address": "192.0.2.10"}])


def test_same_name_on_two_providers_is_two_hosts(tmp_path, two_providers):
    inv, stderr = _list(tmp_path, two_providers)
    assert sorted(inv["sdcloud_machines"]["hosts"]) == ["sd.aws", "sd.static"]
    assert inv["provider_aws"]["hosts"] == ["sd.aws"] and inv["provider_static"]["hosts"] == ["sd.static"]
    assert inv["_meta"]["hostvars"]["sd.aws"]["sdcloud_instance"]["zone"].startswith("us-east-1")
    assert "listed as sd.static, sd.aws" in " ".join(stderr.split())


def _preflight(tmp_path, inventory, *extra):
    xv = {"sdcloud_provider": "aws", "sdcloud_gpu": "nvidia-l4", "sdcloud_zones": ["us-east-1"],
          "sdcloud_ssh_key_path": str(tmp_path / "id_ed25519")}
    res = subprocess.run(["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks/preflight.yml"),
                          "-e", json.dumps(xv), *extra], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                         check=False)
    return res.returncode, " ".join((res.stdout + res.stderr).split())


def test_preflight_refuses_a_deployment_on_two_providers(tmp_path, two_providers):
    rc, out = _preflight(tmp_path, two_providers)
    assert rc != 0
    assert "deployment sd also has sd.static (static, running), while sdcloud_provider is aws" in out, out[-3000:]
    assert "Give static host(s) sd.static their own `deployment:` in static_hosts" in out, out[-3000:]


def test_preflight_names_the_cloud_teardown(tmp_path, two_providers):
    rc, out = _preflight(tmp_path, two_providers, "-e", "sdcloud_provider=static")
    assert rc != 0
    assert "deployment sd also has sd.aws (aws, running), while sdcloud_provider is static" in out, out[-3000:]
    assert "ansible-playbook playbooks/teardown.yml -e sdcloud_provider=aws" in out, out[-3000:]


def test_teardown_status_and_stop_only_warn(tmp_path, two_providers):
    rc, out = _preflight(tmp_path, two_providers, "-e", json.dumps({"sdcloud_preflight_other_providers_ok": True}))
    assert rc == 0, out[-3000:]
    assert "WARNING: deployment sd also has sd.static" in out, out[-3000:]


def test_preflight_passes_with_one_provider(tmp_path, moto):
    path = _inventory(tmp_path, deployment="sd", providers=["static", "aws"], aws_regions=["us-east-1"],
                      static_hosts=[{"name": "homebox", "address": "192.0.2.10", "deployment": "home"}])
    rc, out = _preflight(tmp_path, path)
    assert rc == 0, out[-3000:]
    assert "also has" not in out
