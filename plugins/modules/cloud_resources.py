#!/usr/bin/python
"""Ansible module: list (and delete) every resource sdcloud labelled, to prove teardown left nothing."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cloud_resources
short_description: List or delete every sdcloud-labelled cloud resource (teardown sweep)
description:
  - Lists every resource labelled / tagged C(sdcloud-managed=true) (and C(sdcloud-deployment=<name>) when
    O(name) is given), instances, disks / EBS volumes, addresses / elastic IPs, firewall rules / security groups,
    key pairs and (AWS) spot requests. RunPod and vast.ai pods have no labels and no other resources; it lists the
    pods whose name (RunPod) or label (vast.ai) is C(sdcloud:<name>), each pod with its volume.
  - With O(state=absent) deletes them in dependency order, lists again, and fails if anything is left, naming it.
    It also cleans up after a provisioning run that failed half-way.
version_added: "0.1.0"
author: sdcloud
options:
  provider:
    description: Which cloud or pod marketplace.
    type: str
    required: true
    choices: [gcp, aws, runpod, vastai]
  name:
    description: Deployment name; unset means every sdcloud deployment.
    type: str
  state:
    description: V(listed) only reports; V(absent) deletes what it found and proves nothing is left.
    type: str
    default: listed
    choices: [listed, absent]
  zones:
    description:
      - Same list as for M(gpu_instance). AWS searches the regions it names (give every region the deployment
        ever used). GCP backends may search all zones of the project. RunPod and vast.ai list the whole account.
    type: list
    elements: str
    default: []
  endpoint:
    description:
      - API endpoint override; defaults to E(SDCLOUD_GCP_ENDPOINT) (GCP), E(AWS_ENDPOINT_URL) (AWS),
        E(SDCLOUD_RUNPOD_ENDPOINT) (RunPod), E(SDCLOUD_VAST_ENDPOINT) (vast.ai).
    type: str
  project:
    description: GCP project id. Required for GCP.
    type: str
  credentials_file:
    description: GCP service account JSON key file.
    type: path
  profile:
    description: AWS profile name.
    type: str
  api_key:
    description: RunPod or vast.ai API key; unset, E(RUNPOD_API_KEY) / E(VAST_API_KEY) from the environment. Never logged.
    type: str
  wait_timeout:
    description: Seconds to wait for instances to be gone before deleting what they used.
    type: int
    default: 600
"""

EXAMPLES = r"""
- name: Delete everything of deployment sd1 and prove nothing is left
  cloud_resources:
    provider: aws
    name: sd1
    zones: [us-east-1, us-west-2]
    state: absent
  register: cloud_resources_sweep

- name: List what sdcloud has in the project
  cloud_resources:
    provider: gcp
    project: my-project
"""

RETURN = r"""
resources:
  description: What was found (before deleting, with state=absent).
  returned: always
  type: list
  elements: dict
  contains:
    kind: {description: "instance, disk, address, firewall, key_pair or spot_request.", type: str}
    id: {description: Cloud id (AWS) or name (GCP)., type: str}
    name: {description: Display name., type: str}
    location: {description: Zone, region or global., type: str}
    labels: {description: Labels / tags., type: dict}
    state: {description: Resource state when known., type: str}
remaining:
  description: What is still there after deleting (empty on success).
  returned: when state is absent
  type: list
  elements: dict
count:
  description: Number of resources found.
  returned: always
  type: int
"""

from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.module import cloud_module, run


def ensure(module, backend) -> dict:
    p = module.params
    found = backend.list_resources(p["name"])
    result = {"changed": False, "resources": [r.to_dict() for r in found], "count": len(found)}
    listing = ", ".join(f"{r.kind} {r.id}" for r in found)
    if p["state"] == "listed" or not found:
        result["msg"] = f"found {len(found)} sdcloud resources" + (f": {listing}" if found else "")
        if p["state"] == "absent":
            result["remaining"] = []
        return result
    result["changed"] = True
    if module.check_mode:
        result["msg"] = f"would delete {len(found)} resources: {listing}"
        return result
    backend.delete_resources(found, p["wait_timeout"])
    left = backend.list_resources(p["name"])
    result["remaining"] = [r.to_dict() for r in left]
    if left:
        raise SdcloudError(
            "teardown incomplete, still there: " + ", ".join(f"{r.kind} {r.id} ({r.location})" for r in left)
            + " -- re-run in a minute, or delete them in the cloud console", remaining=result["remaining"],
            resources=result["resources"])
    result["msg"] = f"deleted {len(found)} resources ({listing}); none left"
    return result


def main():
    module = cloud_module(
        {
            "name": {"type": "str"},
            "state": {"type": "str", "default": "listed", "choices": ["listed", "absent"]},
            "wait_timeout": {"type": "int", "default": 600},
        },
    )
    run(module, ensure)


if __name__ == "__main__":
    main()
