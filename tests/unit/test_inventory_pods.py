"""The inventory plugin lists RunPod and vast.ai pods (through Backend.list_instances, as the modules do) with
SSH on the port the provider mapped: run in-process through Ansible's plugin loader against both stand-ins."""

import json

import pytest
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import inventory_loader
from podtest import API_KEY, KEY, ROOT, fast, runner  # noqa: F401 - fast is a fixture
from runpod_server import RunpodStandin
from vast_server import VastStandin


@pytest.fixture
def pods(fast, monkeypatch, tmp_path):  # noqa: F811 - the fixture above
    """Both stand-ins with one running pod each, the keys and endpoints in the environment."""
    with RunpodStandin(slots=["10.10.0.5:40022"], api_key=API_KEY) as rp, \
            VastStandin(slots=["10.11.0.5:41022"], api_key=API_KEY) as vast:
        for provider, standin in (("runpod", rp), ("vastai", vast)):
            failed, res = runner(provider, standin.url)(gpu="nvidia-rtx-4090", ssh_public_key=KEY, spot=False,
                                                        wait_timeout=10)
            assert not failed, res["msg"]
        monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
        monkeypatch.setenv("VAST_API_KEY", API_KEY)
        monkeypatch.setenv("SDCLOUD_RUNPOD_ENDPOINT", rp.url)
        monkeypatch.setenv("SDCLOUD_VAST_ENDPOINT", vast.url)
        monkeypatch.setenv("SDCLOUD_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
        yield rp, vast


def _inventory(tmp_path, providers):
    path = tmp_path / "sdcloud.yml"
    path.write_text(json.dumps({"plugin": "sdcloud", "deployment": "sd", "providers": providers}))
    inventory_loader.add_directory(str(ROOT / "plugins" / "inventory"))
    inv = InventoryData()
    inventory_loader.get("sdcloud").parse(inv, DataLoader(), str(path), cache=False)
    return inv


def test_pods_are_hosts_with_their_mapped_ssh_port(pods, tmp_path):
    inv = _inventory(tmp_path, ["runpod", "vastai"])
    hosts = {name: inv.get_host(name).get_vars() for name in inv.hosts}
    assert set(hosts) == {"sd.runpod", "sd.vastai"}
    rp, vast = hosts["sd.runpod"], hosts["sd.vastai"]
    assert (rp["ansible_host"], rp["ansible_port"], rp["ansible_user"]) == ("10.10.0.5", 40022, "root")
    assert (vast["ansible_host"], vast["ansible_port"], vast["ansible_user"]) == ("10.11.0.5", 41022, "root")
    assert rp["sdcloud_host_key_alias"] == f"sdcloud-runpod-{rp['sdcloud_instance']['id']}"
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in vast["ansible_ssh_common_args"]
    groups = {g: sorted(h.name for h in inv.groups[g].get_hosts()) for g in inv.groups}
    assert groups["provider_runpod"] == ["sd.runpod"] and groups["provider_vastai"] == ["sd.vastai"]
    assert groups["sdcloud_target"] == ["sd.runpod", "sd.vastai"]


def test_a_provider_without_a_key_is_a_warning_not_a_failure(pods, tmp_path, monkeypatch):
    monkeypatch.delenv("VAST_API_KEY")
    inv = _inventory(tmp_path, ["runpod", "vastai"])
    assert set(inv.hosts) == {"sd"} and inv.get_host("sd").get_vars()["sdcloud_provider"] == "runpod"
