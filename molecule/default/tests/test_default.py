"""Verifier for base + comfyui + firewall on a Debian 12 test host, probed from a second host.

ComfyUI here is the real program (../shared/upstream/ComfyUI.bundle at the product's default pin,
installed from its lock file with torch from PyPI, running with --cpu), not a stand-in."""

import json
import os
import pathlib
import re

import pytest
import testinfra
import yaml
from packaging.markers import Marker

ROLE = pathlib.Path(__file__).resolve().parents[3] / "roles" / "comfyui"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
COMMIT = DEFAULTS["comfyui_version"]
LOCK = (ROLE / "files" / "pip" / (COMMIT + ".txt")).read_text()
# node classes every ComfyUI has (nodes.py NODE_CLASS_MAPPINGS)
CORE_NODES = {"KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEDecode", "EmptyLatentImage", "SaveImage", "LoadImage"}

testinfra_hosts = ["ansible://sdc-mol-node"]


@pytest.fixture(scope="module")
def probe():
    return testinfra.get_host("ansible://sdc-mol-probe?ansible_inventory=" + os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="module")
def node_ip(host):
    return host.ansible.get_variables()["ansible_host"]


def reachable(probe, ip, port):
    """TCP connect from the probe host (bash /dev/tcp, 3 s): True if it connected."""
    return probe.run("timeout 3 bash -c '</dev/tcp/%s/%d'" % (ip, port)).rc == 0


def stats(host):
    out = host.check_output("curl -fsS --max-time 5 http://127.0.0.1:8188/system_stats")
    return json.loads(out)


def test_service_enabled_and_running_as_its_user(host):
    svc = host.service("comfyui")
    assert svc.is_enabled
    assert svc.is_running
    user = host.check_output("systemctl show -p User --value comfyui")
    assert user == "comfyui"
    assert host.user("comfyui").shell == "/usr/sbin/nologin"


def test_the_product_default_pin_is_what_runs(host):
    assert host.check_output("runuser -u comfyui -- git -C /opt/comfyui/app describe --tags") == "pin-" + COMMIT
    assert stats(host)["system"]["comfyui_version"] == "0.3.64"


def test_the_venv_holds_exactly_the_lock(host):
    # the lock's lines that apply to a Debian 12 test host (CPython 3.11 on Linux x86_64)
    env = {"python_full_version": "3.11.2", "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    pins = {n: v for n, v, marker in re.findall(r"^([A-Za-z0-9._-]+)==([^\s;]+)(?: ; (.*))?$", LOCK, re.M)
            if not marker or Marker(marker).evaluate(env)}
    assert len(pins) > 50 and "requests" in pins
    listed = host.check_output("/opt/comfyui/tools/bin/uv pip list --python /opt/comfyui/venv/bin/python --format json")
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(listed)}
    wrong = {n: (v, installed.get(n.lower().replace("_", "-"))) for n, v in pins.items()
             if installed.get(n.lower().replace("_", "-")) != v}
    assert not wrong, f"lock vs installed: {wrong}"
    # PyPI's torch is the CUDA build (2.8.0+cu128), which runs on CPU here
    assert host.check_output("/opt/comfyui/venv/bin/python -c 'import torch; print(torch.__version__)'").split("+")[0] == pins["torch"]
    # root's: the service cannot rewrite its own environment
    assert host.file("/opt/comfyui/venv/lib").user == "root"
    assert host.run("runuser -u comfyui -- touch /opt/comfyui/venv/lib/probe").rc != 0


def test_core_nodes_are_loaded(host):
    info = json.loads(host.check_output("curl -fsS --max-time 30 http://127.0.0.1:8188/object_info"))
    assert set(info) >= CORE_NODES, CORE_NODES - set(info)


def test_answers_on_loopback_only(host):
    data = stats(host)
    argv = data["system"]["argv"]
    assert "--cpu" in argv
    assert "/opt/comfyui/extra_model_paths.yaml" in argv
    assert host.socket("tcp://127.0.0.1:8188").is_listening
    assert not host.socket("tcp://0.0.0.0:8188").is_listening


def test_shared_model_dir_is_wired(host):
    host.check_output("touch /opt/sdcloud/models/checkpoints/verifier-probe.safetensors")
    try:
        listed = json.loads(host.check_output("curl -fsS http://127.0.0.1:8188/models/checkpoints"))
        assert "verifier-probe.safetensors" in listed
    finally:
        host.run("rm -f /opt/sdcloud/models/checkpoints/verifier-probe.safetensors")


def test_unattended_upgrades_spare_the_gpu_stack(host):
    conf = host.file("/etc/apt/apt.conf.d/51sdcloud-unattended-upgrades")
    assert conf.contains('"nvidia-"')
    assert conf.contains('"cuda-"')


def test_firewall_from_a_second_host(host, probe, node_ip):
    assert reachable(probe, node_ip, 22), "SSH must be open to the allowed CIDR"
    assert not reachable(probe, node_ip, 8188), "the UI port must be closed"
    # A listener on all addresses proves the firewall (not only the listen address) drops it.
    host.check_output("systemd-run --unit sdc-verify-listener python3 -m http.server 8189 --bind 0.0.0.0")
    try:
        host.check_output("timeout 10 bash -c 'until curl -fs -o /dev/null http://127.0.0.1:8189/; do sleep 0.2; done'")
        assert not reachable(probe, node_ip, 8189), "default deny inbound: 8189 must be dropped"
    finally:
        host.run("systemctl stop sdc-verify-listener")


def test_survives_a_reboot(host):
    before = host.check_output("cat /proc/sys/kernel/random/boot_id")
    host.ansible("ansible.builtin.reboot", "reboot_timeout=180", check=False, become=True)
    assert host.check_output("cat /proc/sys/kernel/random/boot_id") != before
    host.check_output("timeout 120 bash -c 'until curl -fs -o /dev/null http://127.0.0.1:8188/system_stats; do sleep 1; done'")
    assert host.service("comfyui").is_running
    assert host.check_output("nft list table inet sdcloud")
