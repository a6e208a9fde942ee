"""The deployment's shape (playbooks/vars/shape.yml), computed by ansible-playbook from the real settings
(inventory/group_vars/all) and the real inventory, as every play computes it; and the preflight's refusals
of port and model-directory settings (playbooks/preflight.yml), which fail before anything exists."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLAYBOOK = str(pathlib.Path(sys.executable).parent / "ansible-playbook")

pytestmark = pytest.mark.slow

PROBE = """
- name: Compute the shape
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - @ROOT@/playbooks/vars/shape.yml
  tasks:
    - name: Write it
      ansible.builtin.copy:
        dest: @OUT@
        mode: "0600"
        content: >-
          {{ {'public_ports': sdcloud_public_ports, 'uis': sdcloud_uis, 'ssh': sdcloud_effective_ssh_cidrs,
                'ui_cidrs': sdcloud_ui_cidrs, 'on_cloud': sdcloud_on_cloud, 'gpu_present': sdcloud_gpu_present,
                'cert': sdcloud_access_cert_file} | to_json }}
"""


def _env(tmp_path):
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), HOME=str(tmp_path),
               SDCLOUD_INVENTORY_PROVIDERS="static", ANSIBLE_NOCOLOR="1")
    env.pop("SDCLOUD_NAME", None)
    return env


def shape(tmp_path, **extra):
    out = tmp_path / "shape.json"
    play = tmp_path / "probe.yml"
    play.write_text(PROBE.replace("@ROOT@", str(ROOT)).replace("@OUT@", str(out)))
    args = [PLAYBOOK, str(play), "-e", json.dumps(extra)]
    r = subprocess.run(args, check=False, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text())


def test_public_access_opens_the_proxy_port_of_each_ui_that_runs(tmp_path):
    # the bug this file fixed: with ComfyUI alone, 7443 (AUTOMATIC1111's proxy port) was opened too
    s = shape(tmp_path, sdcloud_access="public", sdcloud_access_cidrs=["198.51.100.0/24"],
              sdcloud_ssh_cidrs=["203.0.113.7/32"])
    assert s["public_ports"] == [443]
    assert [u["id"] for u in s["uis"]] == ["comfyui"] and s["uis"][0]["port"] == 8188
    assert s["ssh"] == ["203.0.113.7/32"] and s["ui_cidrs"] == ["198.51.100.0/24"]
    assert s["cert"] == str(tmp_path / ".config/sdcloud/tokens/sdcloud.crt")

    s = shape(tmp_path, sdcloud_access="public", sdcloud_ui=["comfyui", "a1111"], sdcloud_https_port=8443,
              sdcloud_a1111_port=7861, sdcloud_operator_cidrs=["192.0.2.1/32"])
    assert s["public_ports"] == [8443, 7443]
    assert [(u["id"], u["port"]) for u in s["uis"]] == [("comfyui", 8188), ("a1111", 7861)]
    assert s["ssh"] == ["192.0.2.1/32"] and s["ui_cidrs"] == ["192.0.2.1/32"], "[] = the operator's address"


def test_tunnel_access_opens_nothing_and_clouds_get_the_gpu_build(tmp_path):
    s = shape(tmp_path, sdcloud_ui=["a1111"])
    assert s["public_ports"] == [] and [u["id"] for u in s["uis"]] == ["a1111"]
    assert s["on_cloud"] is False and s["gpu_present"] is False
    s = shape(tmp_path, sdcloud_provider="aws")
    assert s["on_cloud"] is True and s["gpu_present"] is True


def preflight(tmp_path, **extra):
    args = [PLAYBOOK, str(ROOT / "playbooks/preflight.yml"),
            "-e", json.dumps({"sdcloud_provider": "static", "sdcloud_preflight_ssh_key": False, **extra})]
    r = subprocess.run(args, check=False, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("extra, words", [
    ({"sdcloud_comfyui_port": 70000}, "sdcloud_comfyui_port is 70000: give a TCP port"),
    ({"sdcloud_comfyui_port": 80}, "sdcloud_comfyui_port is 80: the UI runs as its own user"),
    ({"sdcloud_a1111_port": 22}, "sdcloud_a1111_port is 22, the SSH port"),
    ({"sdcloud_a1111_port": 8188}, "sdcloud_a1111_port and sdcloud_comfyui_port are both 8188"),
    ({"sdcloud_https_port": 8188}, "sdcloud_https_port and sdcloud_comfyui_port are both 8188"),
    ({"comfyui_port": 9000}, "comfyui_port is set: set sdcloud_comfyui_port instead"),
    ({"models_dir": "/srv/m"}, "models_dir is set: set sdcloud_models_dir instead"),
    ({"sdcloud_models_dir": "models"}, 'sdcloud_models_dir is "models": give an absolute path'),
    ({"sdcloud_models_dir": "/srv/../etc"}, "sdcloud_models_dir is \"/srv/../etc\""),
    ({"sdcloud_name": "other"}, "sdcloud_name is other but the inventory lists deployment sdcloud"),
    ({"sdcloud_allow_world": "yes"}, "sdcloud_allow_world is \"yes\""),
])
def test_preflight_refuses_bad_shape_settings(tmp_path, extra, words):
    rc, out = preflight(tmp_path, **extra)
    assert rc != 0 and words in out, out[-3000:]


def test_preflight_accepts_the_defaults(tmp_path):
    rc, out = preflight(tmp_path)
    assert rc == 0, out[-3000:]


def test_preflight_does_not_print_a_model_setting_that_is_not_a_list(tmp_path):
    rc, out = preflight(tmp_path, sdcloud_models="https://u:pw-7d1@example.com/m.safetensors?token=tk-93a")
    assert rc != 0 and "sdcloud_models is a str, not a list" in out, out[-3000:]
    assert "pw-7d1" not in out and "tk-93a" not in out


STATIC_PROBE = """
- name: Compute the shape on each static host
  hosts: sdcloud_machines
  gather_facts: false
  vars_files:
    - @ROOT@/playbooks/vars/shape.yml
  tasks:
    - name: Write it (here, no connection to the host)
      ansible.builtin.copy:
        dest: "@OUT@.{{ inventory_hostname }}"
        mode: "0600"
        content: "{{ {'gpu_present': sdcloud_gpu_present} | to_json }}"
      delegate_to: localhost
"""


def test_a_static_host_listed_with_a_gpu_gets_the_gpu_build(tmp_path):
    out = tmp_path / "static"
    play = tmp_path / "static-probe.yml"
    play.write_text(STATIC_PROBE.replace("@ROOT@", str(ROOT)).replace("@OUT@", str(out)))
    inventory = tmp_path / "hosts.sdcloud.yml"
    inventory.write_text(json.dumps({"plugin": "sdcloud", "providers": ["static"], "static_hosts": [
        {"name": "gpubox", "address": "192.0.2.10", "gpu": "nvidia-rtx-4090"}, {"name": "cpubox", "address": "192.0.2.11"}]}))
    # the project's inventory for its group_vars, ours for the hosts
    args = [PLAYBOOK, "-i", str(ROOT / "inventory/sdcloud.yml"), "-i", str(inventory), str(play),
            "-e", json.dumps({"sdcloud_provider": "static"})]
    r = subprocess.run(args, check=False, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(pathlib.Path(f"{out}.gpubox").read_text()) == {"gpu_present": True}
    assert json.loads(pathlib.Path(f"{out}.cpubox").read_text()) == {"gpu_present": False}
