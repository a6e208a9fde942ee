"""The machine role's cloud tasks (roles/machine/tasks/cloud.yml, one file for GCP and AWS) through a real
ansible-playbook run on localhost against the cloud stand-ins (tests/standins: the GCE REST stand-in, moto):
running makes the firewall and the instance - GCP's rule before the instance, AWS's after it - a second run
changes nothing, absent deletes everything and lists nothing again. The stand-ins' instances get TEST-NET-3
addresses nobody contacts: the role itself never connects (provision.yml's SSH play does)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))

import gce_server  # noqa: E402
import moto_faults  # noqa: E402

ZONES = {"gcp": ["us-central1-a"], "aws": ["us-east-1"]}
FIREWALL_FIRST = {"gcp": True, "aws": False}
# GCP opens to the whole internet, as sdcloud_allow_world: true asks (provision.yml hands it to the role, which
# hands it to cloud_firewall; it never reached the module before, so 0.0.0.0/0 was refused after the preflight
# had let it through); AWS to one address
CIDRS = {"gcp": ["0.0.0.0/0"], "aws": ["203.0.113.7/32"]}
PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: machine
      machine_name: roletest
      machine_provider: {provider}
      machine_state: "{{{{ state }}}}"
      machine_ssh_key_path: {key}
      machine_known_hosts_file: {known_hosts}
      machine_gcp_project: sdcloud-roletest
      machine_gpu: nvidia-l4
      machine_zones: {zones}
      machine_disk_size_gb: 50
      machine_ssh_cidrs: {cidrs}
      machine_allow_world: {world}
      machine_host_keys_timeout: 0
      machine_wait_timeout: 120
  post_tasks:
    - name: Write down what the role recorded (for the test, not a change)
      ansible.builtin.copy:
        content: "{{{{ {{'instance': machine_instance, 'remaining': machine_remaining | default([])}} | to_json }}}}"
        dest: {recorded}
        mode: "0600"
      changed_when: false
"""


@pytest.fixture
def cloud(request, tmp_path, monkeypatch):
    provider = request.param
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_INVENTORY_ENABLED="host_list",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), PATH=str(ROOT / ".venv/bin") + ":" + os.environ["PATH"])
    if provider == "gcp":
        server = gce_server.GceStandin(accelerators={"us-central1-a": ["nvidia-l4"]}, op_seconds=0.2).start()
        env.update(SDCLOUD_GCP_ENDPOINT=server.url, GOOGLE_CLOUD_PROJECT="sdcloud-roletest")
    else:
        ctl = moto_faults.prepare_aws(monkeypatch)
        env.update(AWS_ENDPOINT_URL=ctl.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
            env.pop(var, None)
    play = tmp_path / "machine.yml"
    play.write_text(PLAY.format(provider=provider, key=tmp_path / "keys" / "id_ed25519", known_hosts=tmp_path / "known_hosts",
                                zones=json.dumps(ZONES[provider]), recorded=tmp_path / "recorded.json",
                                cidrs=json.dumps(CIDRS[provider]), world=json.dumps(provider == "gcp")))

    def run(state, *extra, ok=True):
        res = subprocess.run(["ansible-playbook", "-i", "localhost,", "-e", "ansible_python_interpreter=" + sys.executable,
                              "-e", "state=" + state, *extra, str(play)], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        out = res.stdout + res.stderr
        if not ok:
            assert res.returncode != 0, out[-4000:]
            return out, None, None
        assert res.returncode == 0, out[-4000:]
        recorded = json.loads((tmp_path / "recorded.json").read_text())
        changed = int(re.search(r"^localhost\s+: ok=\d+\s+changed=(\d+)", out, re.M).group(1))
        return out, recorded, changed

    try:
        yield provider, run
    finally:
        if provider == "gcp":
            server.stop()


def tasks(out):
    return [t for t in re.findall(r"^TASK \[(?:machine : )?(.*?)\] ", out, re.M)]


@pytest.mark.parametrize("cloud", ["gcp", "aws"], indirect=True)
def test_one_task_file_for_both_clouds(cloud):
    provider, run = cloud
    out, recorded, changed = run("running")
    assert recorded["instance"]["state"] == "running" and recorded["instance"]["provider"] == provider, recorded
    assert changed >= 2, out[-3000:]  # the key, the instance, the firewall
    ran = tasks(out)
    firewall = ran.index(next(t for t in ran if t.startswith("Allow SSH (and machine_open_ports)")))
    instance = ran.index("Make the instance running")
    assert (firewall < instance) == FIREWALL_FIRST[provider], ran
    assert "Wait until SSH answers on the instance" not in ran, "the role does not connect; the SSH play waits"

    out, recorded, changed = run("running")
    assert changed == 0, out[-3000:]

    out, recorded, _ = run("absent")
    assert recorded["instance"] is None and recorded["remaining"] == [], out[-3000:]


@pytest.mark.parametrize("cloud", ["gcp"], indirect=True)
def test_a_missing_image_is_refused_before_the_firewall_rule(cloud):
    """GCP makes its firewall rule before the instance: an image family that does not exist was found only by the
    create, after the rule existed. The read-only plan asks first."""
    _, run = cloud
    out, _, _ = run("running", "-e", "machine_image=projects/sdcloud-roletest/global/images/family/no-such-family",
                    ok=False)
    assert "image family 'no-such-family' not found in project 'sdcloud-roletest'" in out, out[-3000:]
    ran = tasks(out)
    assert "Check the image and the zones before anything is created" in ran, ran
    assert not any(t.startswith("Allow SSH (and machine_open_ports)") for t in ran), ran
