#!/usr/bin/python
"""Ansible module: the cloud firewall of an sdcloud deployment (GCP firewall rule / AWS security group)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cloud_firewall
short_description: Allow SSH (and chosen tcp ports) to an sdcloud deployment only from given addresses
description:
  - GCP, a firewall rule targeting the deployment's network tag. AWS, the deployment's security group
    C(sdcloud-<name>) in the region of its instance (created if missing and attached to the instance).
  - Opens tcp 22 plus O(ports) from O(source_ranges) only, and removes every other rule, so re-running with the
    operator's new IP address replaces the old one.
  - Labelled / tagged C(sdcloud-managed=true), C(sdcloud-deployment=<name>). Supports check mode and diff mode.
  - RunPod and vast.ai have no firewall resource (the provider maps only the ports asked for at creation); the
    module changes nothing and says so in C(msg), with O(firewall) null, so a playbook can call it for every
    provider.
version_added: "0.1.0"
author: sdcloud
extends_documentation_fragment: [cloud]
options:
  name:
    description: The deployment name.
    type: str
    required: true
  state:
    description: V(present) creates or updates the rule; V(absent) deletes it.
    type: str
    default: present
    choices: [present, absent]
  source_ranges:
    description:
      - CIDRs allowed in, e.g. the operator's address as V(203.0.113.7/32). A bare address gets C(/32).
      - Required with O(state=present). V(0.0.0.0/0) is refused unless O(allow_world) is set.
    type: list
    elements: str
    default: []
  ports:
    description: Extra tcp ports to open besides 22 (e.g. V(443) for the TLS proxy when public access is asked).
    type: list
    elements: int
    default: []
  allow_world:
    description: Permit V(0.0.0.0/0) in O(source_ranges).
    type: bool
    default: false
  zones:
    description: Same list as for M(gpu_instance); AWS uses the regions it names to find and place the group.
    type: list
    elements: str
    default: []
  labels:
    description: Extra labels / tags.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: SSH from my current address only
  cloud_firewall:
    provider: aws
    name: sd1
    zones: [us-east-1]
    source_ranges: ["{{ sdcloud_operator_ip }}/32"]

- name: SSH and HTTPS (public access through the TLS proxy)
  cloud_firewall:
    provider: gcp
    project: my-project
    name: sd1
    source_ranges: [203.0.113.7/32]
    ports: [443]
"""

RETURN = r"""
firewall:
  description: The rule / security group after the change (null when absent, and for pods, which have none).
  returned: always
  type: dict
  contains:
    name: {description: Rule or group name., type: str}
    id: {description: Cloud id., type: str}
    ports: {description: Open tcp ports., type: list, elements: int}
    source_ranges: {description: Allowed CIDRs., type: list, elements: str}
    region: {description: AWS region (null for GCP)., type: str}
msg:
  description: What was done (for pods, that there is no firewall and what protects the pod instead).
  returned: always
  type: str
supported:
  description: False when the provider has no firewall resource (RunPod, vast.ai); nothing was done then.
  returned: always
  type: bool
"""

import ipaddress

from ansible.module_utils.sdcloud.base import FirewallSpec, SdcloudError
from ansible.module_utils.sdcloud.module import cloud_module, run

SSH_PORT = 22


def normalise_sources(sources, allow_world: bool) -> list:
    out = set()
    for src in sources:
        try:
            net = ipaddress.ip_network(src.strip(), strict=False)
        except ValueError as exc:
            raise SdcloudError(f"source_ranges: {src!r} is not an address or CIDR ({exc}): use e.g. 203.0.113.7/32") \
                from exc
        if net.version != 4:
            raise SdcloudError(f"source_ranges: {src!r} is IPv6; only IPv4 ranges are supported")
        if net.prefixlen == 0 and not allow_world:
            raise SdcloudError("source_ranges contains 0.0.0.0/0 (the whole internet): give your own address "
                               "(e.g. from `curl -s https://checkip.amazonaws.com`), or set allow_world: true")
        out.add(str(net))
    return sorted(out, key=lambda c: (ipaddress.ip_network(c).network_address, c))


def _view(fw) -> dict:
    return {"ports": fw.ports, "source_ranges": fw.source_ranges} if fw else {"state": "absent"}


def ensure(module, backend) -> dict:
    p = module.params
    if not backend.has_firewall:
        return {"changed": False, "firewall": None, "supported": False,
                "msg": backend.no_firewall_reason.format(provider=p["provider"])}
    current = backend.get_firewall(p["name"])
    result = {"changed": False, "firewall": current.to_dict() if current else None, "supported": True}
    before = _view(current)
    if p["state"] == "absent":
        after = {"state": "absent"}
        if current:
            result["changed"] = True
            if not module.check_mode:
                backend.delete_firewall(current)
            result["firewall"] = None
            result["msg"] = f"{'would delete' if module.check_mode else 'deleted'} {current.name}"
        else:
            result["msg"] = "no firewall rule for this deployment"
    else:
        if not p["source_ranges"]:
            raise SdcloudError("source_ranges is empty: give the operator's address, e.g. [203.0.113.7/32]")
        spec = FirewallSpec(name=p["name"], ports=sorted({SSH_PORT, *p["ports"]}),
                            source_ranges=normalise_sources(p["source_ranges"], p["allow_world"]),
                            labels=dict(p["labels"] or {}))
        after = {"ports": spec.ports, "source_ranges": spec.source_ranges}
        same = current and current.exact and current.ports == spec.ports and \
            current.source_ranges == spec.source_ranges
        if same:
            result["msg"] = f"{current.name} allows tcp {spec.ports} from {', '.join(spec.source_ranges)}"
        else:
            result["changed"] = True
            verb = "update" if current else "create"
            if module.check_mode:
                result["msg"] = f"would {verb} the rule: tcp {spec.ports} from {', '.join(spec.source_ranges)}"
            else:
                fw = backend.update_firewall(current, spec) if current else backend.create_firewall(spec)
                result["firewall"] = fw.to_dict()
                result["msg"] = f"{verb}d {fw.name}: tcp {fw.ports} from {', '.join(fw.source_ranges)}"
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    return result


def main():
    module = cloud_module(
        {
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "source_ranges": {"type": "list", "elements": "str", "default": []},
            "ports": {"type": "list", "elements": "int", "default": []},
            "allow_world": {"type": "bool", "default": False},
            "labels": {"type": "dict", "default": {}},
        },
    )
    run(module, ensure)


if __name__ == "__main__":
    main()
