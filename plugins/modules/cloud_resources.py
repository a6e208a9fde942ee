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
  - The proof also lists every other kind that can carry the labels, GCP, snapshots, images and global addresses;
    AWS, whatever the Resource Groups Tagging API finds (snapshots, AMIs, other services' resources; it needs
    C(tag:GetResources)).
  - With O(state=absent) deletes the kinds sdcloud creates in dependency order, lists again, and fails if anything
    is left, naming each resource and how to delete it. Snapshots, images and other kinds sdcloud never creates
    (a user, a backup policy copying a volume's tags, or another tool labelled them) are never deleted, only named.
    It also cleans up after a provisioning run that failed half-way.
version_added: "0.1.0"
author: sdcloud
extends_documentation_fragment: [cloud]
options:
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
    kind:
      description:
        - V(instance), V(disk), V(address), V(firewall), V(key_pair) or V(spot_request) (deleted by O(state=absent));
          V(snapshot), V(image) or V(other) (an AWS resource of another type; its id is the ARN), never deleted.
      type: str
    id: {description: Cloud id (AWS) or name (GCP); the ARN for V(other)., type: str}
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

from ansible.module_utils.sdcloud.base import KEPT_KINDS, SdcloudError
from ansible.module_utils.sdcloud.module import cloud_module, run


def _labels(res) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(res.labels.items()) if k.startswith("sdcloud-")) or "no labels"


def _remains(backend, left: list) -> str:
    """The failure for what is still there: each resource, its labels, and how to delete it."""
    parts = [f"{r.kind} {r.id} in {r.location} (labelled {_labels(r)}): sdcloud never creates a {r.kind} and does "
             f"not delete one; {backend.delete_hint(r)}, or remove its sdcloud-managed and sdcloud-deployment "
             "labels to keep it" for r in left if r.kind in KEPT_KINDS]
    parts += [f"{r.kind} {r.id} in {r.location} (labelled {_labels(r)}): still there after its delete; re-run in a "
              "minute, or delete it in the cloud console" for r in left if r.kind not in KEPT_KINDS]
    many = len(left) > 1
    return f"teardown incomplete, {len(left)} resource{'s remain' if many else ' remains'}: " + "; ".join(parts)


def ensure(module, backend) -> dict:
    p = module.params
    found = backend.list_resources(p["name"])
    result = {"changed": False, "resources": [r.to_dict() for r in found], "count": len(found)}
    listing = ", ".join(f"{r.kind} {r.id}" for r in found)
    doomed = [r for r in found if r.kind not in KEPT_KINDS]  # what sdcloud creates; the rest is only named
    if p["state"] == "listed" or not found:
        result["msg"] = f"found {len(found)} sdcloud resources" + (f": {listing}" if found else "")
        if p["state"] == "absent":
            result["remaining"] = []
        return result
    result["changed"] = bool(doomed)
    if module.check_mode:
        kept = ", ".join(f"{r.kind} {r.id}" for r in found if r.kind in KEPT_KINDS)
        result["msg"] = (f"would delete {len(doomed)} resources: {', '.join(f'{r.kind} {r.id}' for r in doomed)}"
                         + (f"; would leave, and fail on: {kept}" if kept else ""))
        return result
    if doomed:
        backend.delete_resources(doomed, p["wait_timeout"])
    left = backend.list_resources(p["name"])
    result["remaining"] = [r.to_dict() for r in left]
    if left:
        raise SdcloudError(_remains(backend, left), remaining=result["remaining"], resources=result["resources"],
                           changed=result["changed"])
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
