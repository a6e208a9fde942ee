#!/usr/bin/python
"""Ensure a disposable local Debian 12 machine (the `local` provider) is running, stopped or absent."""

from __future__ import annotations

DOCUMENTATION = r"""
module: local_machine
short_description: A disposable Debian 12 machine on this computer, reached over SSH like a cloud VM
description:
  - Creates, starts, stops and deletes a systemd-nspawn machine on a private bridge of its own
    (C(10.87.<net>.0/24)), with sshd, systemd and no route out; apt and pip inside reach their
    registries only through a proxy that this module starts on the bridge address.
  - The machine's disk (an overlay on a cached Debian 12 base tree) survives C(stopped); C(absent)
    deletes it, and when the last machine of the bridge is gone, also the proxy and the bridge.
  - This is the C(local) provider of sdcloud and the test-host driver of its molecule scenarios and
    end-to-end tests. The first run builds the base tree with debootstrap (1-2 minutes).
  - "Must run on the controller as root (C(connection: local), C(become))."
  - A machine needs 20 GB free on the disk of its state dir when it is created (ComfyUI's Python
    environment, the package cache it shares with the other local machines, models); creation is
    refused with the fix otherwise.
version_added: "0.1.0"
author: sdcloud
options:
  name:
    description: Machine name (also its hostname). Lowercase letters, digits and C(-).
    type: str
    required: true
  state:
    description:
      - C(present) and C(running) create the machine if needed and make sure it runs.
      - C(stopped) powers it off and keeps its disk. C(absent) deletes it with its disk.
    type: str
    choices: [present, running, stopped, absent]
    default: present
  ssh_public_key:
    description: Public key authorized for root. Required when the machine must be created.
    type: str
  ssh_private_key_file:
    description: Path of the matching private key, recorded so the inventory plugin can connect.
    type: path
  labels:
    description: Labels recorded with the machine (the inventory plugin groups by them).
    type: dict
    default: {}
  net:
    description: Which isolated bridge (0-9) to use. Defaults to C(SDCLOUD_NET) or 0.
    type: int
  wait_timeout:
    description: Seconds to wait for sshd to answer after a start, or for the machine to power off.
    type: int
    default: 120
notes:
  - Supports check mode and diff mode.
requirements:
  - root, Linux with overlayfs; the Debian packages debootstrap, systemd-container and tinyproxy
    (installed by the module when missing).
"""

EXAMPLES = r"""
- name: Create and start the local machine
  local_machine:
    name: sdcloud
    ssh_public_key: "{{ lookup('ansible.builtin.file', '~/.ssh/sdcloud_ed25519.pub') }}"
    ssh_private_key_file: ~/.ssh/sdcloud_ed25519
    labels:
      sdcloud-deployment: sdcloud

- name: Stop it, keeping its disk
  local_machine:
    name: sdcloud
    state: stopped

- name: Delete it and everything it created
  local_machine:
    name: sdcloud
    state: absent
"""

RETURN = r"""
instance:
  description: The machine, in the provider-neutral shape every sdcloud provider returns.
  returned: always
  type: dict
  contains:
    name: {description: Machine name, type: str, returned: always}
    provider: {description: Always C(local), type: str, returned: always}
    state: {description: C(running), C(stopped) or C(absent), type: str, returned: always}
    public_ip: {description: Address on the private bridge (the one to SSH to), type: str, returned: when it exists}
    ssh_user: {description: SSH user, type: str, returned: when it exists}
    labels: {description: Labels, type: dict, returned: when it exists}
    hourly_price: {description: Always 0.0, type: float, returned: always}
bridge_removed:
  description: Whether the bridge and proxy were removed because no machine is left.
  returned: when state is absent
  type: bool
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.sdcloud import nspawn
    from ansible.module_utils.sdcloud.base import local_instance
except ImportError:  # pragma: no cover - only when module_utils is not on the path
    nspawn = None
    IMPORT_ERROR = traceback.format_exc()
else:
    IMPORT_ERROR = None


def neutral(machine):
    info = machine.info() if machine.exists() else {"state": "absent"}
    return local_instance(machine.name, info).to_dict()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "running", "stopped", "absent"]),
            ssh_public_key=dict(type="str"),
            ssh_private_key_file=dict(type="path"),
            labels=dict(type="dict", default={}),
            net=dict(type="int"),
            wait_timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="sdcloud module_utils not found: run from the project directory (ansible.cfg sets module_utils)",
                         exception=IMPORT_ERROR)
    p = module.params
    if os.geteuid() != 0:
        module.fail_json(msg="local_machine needs root (systemd-nspawn, overlayfs, a bridge): run the play with become: true or as root")
    try:
        net = nspawn.Network(net=p["net"])
        machine = net.machine(p["name"])
        before = machine.state
        want = {"present": "running", "running": "running"}.get(p["state"], p["state"])
        result = dict(changed=before != want, diff=dict(before={"state": before}, after={"state": want}))
        if module.check_mode or before == want:
            result["instance"] = neutral(machine)
            module.exit_json(**result)
        if want == "running":
            if not machine.exists():
                if not p["ssh_public_key"]:
                    module.fail_json(msg="machine {} does not exist: ssh_public_key is required to create it".format(p["name"]))
                machine.create(p["ssh_public_key"], labels=p["labels"], ssh_private_key_file=p["ssh_private_key_file"])
            machine.start(timeout=p["wait_timeout"])
        elif want == "stopped":
            if not machine.exists():
                module.fail_json(msg="machine {} does not exist, so it cannot be stopped: run provision.yml first".format(p["name"]))
            machine.stop(timeout=p["wait_timeout"])
        else:
            machine.destroy()
            result["bridge_removed"] = False
            if not net.machines():
                result["bridge_removed"] = net.down()
        result["instance"] = neutral(machine)
        module.exit_json(**result)
    except nspawn.MachineError as e:
        module.fail_json(msg=str(e))


if __name__ == "__main__":
    main()
