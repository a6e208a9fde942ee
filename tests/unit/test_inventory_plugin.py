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


@pytest.fixture
def gce_two(monkeypatch):
    """The Compute Engine stand-in with deployments `sd` (running) and `old` (stopped)."""
    import gce_server
    from ansible.module_utils.sdcloud import base, errors, gcp
    from ansible.module_utils.sdcloud.base import InstanceSpec

    monkeypatch.setattr(base, "POLL_INTERVAL", 0.02)
    monkeypatch.setattr(errors, "RETRY_BASE", 0.01)
    with gce_server.GceStandin(accelerators={"us-central1-a": ["nvidia-l4"]}) as gce:
        backend = gcp.GcpBackend("proj-inv", endpoint=gce.url)
        for name in ("sd", "old"):
            inst, _ = backend.create_instance(InstanceSpec(
                name=name, gpu="nvidia-l4", zones=["us-central1-a"], ssh_public_key=KEY,
                image_family="ubuntu-os-cloud/ubuntu-2204-lts"), wait_timeout=30)
        backend.stop_instance(inst, wait_timeout=30)
        yield gce


def test_gcp_lists_through_the_backend_without_loading_google_cloud_compute(gce_two):
    # what the plugin runs for gcp, in a fresh interpreter: google-cloud-compute and google.api_core (~2 s
    # of imports) stay unloaded
    code = ("import sys, ansible.module_utils as mu; mu.__path__.append(%r)\n"
            "from ansible.module_utils.sdcloud.base import backend_from_params\n"
            "found = backend_from_params({'provider': 'gcp', 'project': 'proj-inv', 'endpoint': %r}).list_instances()\n"
            "print(sorted((i.name, i.state, i.gpu) for i in found))\n"
            "print([m for m in ('google.cloud.compute_v1', 'google.api_core.exceptions', 'grpc') if m in sys.modules])\n"
            % (str(ROOT / "plugins" / "module_utils"), gce_two.url))
    res = subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.splitlines() == ["[('old', 'stopped', 'nvidia-l4'), ('sd', 'running', 'nvidia-l4')]", "[]"]


def test_gcp_inventory_and_its_cache(tmp_path, gce_two):
    path = _inventory(tmp_path, deployment="sd", providers=["gcp"], gcp_project="proj-inv", gcp_endpoint=gce_two.url,
                      cache=True, cache_plugin="ansible.builtin.jsonfile", cache_connection=str(tmp_path / "cache"))
    inv, _ = _list(tmp_path, path)
    assert sorted(inv["provider_gcp"]["hosts"]) == ["old", "sd"] and inv["sdcloud_target"]["hosts"] == ["sd"]
    assert inv["state_stopped"]["hosts"] == ["old"]
    hv = inv["_meta"]["hostvars"]["sd"]
    assert (hv["sdcloud_instance"]["zone"], hv["ansible_user"]) == ("us-central1-a", "ubuntu")
    assert hv["ansible_host"] == hv["sdcloud_instance"]["public_ip"]
    listed = len(gce_two.requests_for("instances.aggregatedList"))
    again, _ = _list(tmp_path, path)  # from the cache: the API is not asked again
    assert again == inv and len(gce_two.requests_for("instances.aggregatedList")) == listed
