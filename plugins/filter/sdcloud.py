"""Filters the playbooks use to validate input up front and to read the sdcloud catalog."""

from __future__ import annotations

import ipaddress
import os
import re

import ansible.module_utils
from ansible.errors import AnsibleFilterError

_MU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)

from ansible.module_utils.sdcloud import catalog  # noqa: E402
from ansible.module_utils.sdcloud.base import SdcloudError  # noqa: E402

_GCP_ZONE = re.compile(r"[a-z]+-[a-z]+\d+-[a-z]")
_AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_AWS_AZ = re.compile(r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)(?:[a-z]|-[a-z]+-\d+[a-z])")


def sdcloud_invalid_cidrs(values):
    """The items of `values` that are not valid IPv4/IPv6 networks (host bits must be zero)."""
    if isinstance(values, str):
        values = [values]
    bad = []
    for v in values or []:
        try:
            ipaddress.ip_network(str(v), strict=True)
        except ValueError:
            bad.append(v)
    return bad


def sdcloud_world_cidrs(values):
    """The items of `values` that open to the whole internet (0.0.0.0/0, ::/0)."""
    out = []
    for v in values or []:
        try:
            if ipaddress.ip_network(str(v), strict=False).prefixlen == 0:
                out.append(v)
        except ValueError:
            pass
    return out


def sdcloud_host_cidr(address):
    """'203.0.113.7' (or with whitespace/newline, as IP echo services answer) -> '203.0.113.7/32';
    IPv6 -> /128. Fails with a clear message when `address` is not an IP address."""
    text = str(address).strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise AnsibleFilterError(f"sdcloud_host_cidr: {text[:80]!r} is not an IP address") from exc
    return f"{ip}/{ip.max_prefixlen}"


def sdcloud_gpu_names(provider=None):
    """Neutral GPU names in the catalog (only those `provider` rents, when given)."""
    return catalog.gpu_names(provider or None)


def sdcloud_gpu_offer(gpu, provider):
    """The catalog entry for `gpu` on `provider` (machine type, prices...), or {} when not offered."""
    try:
        return catalog.offering(provider, gpu).to_dict()
    except SdcloudError:
        return {}


def sdcloud_bad_zones(zones, provider):
    """The items of `zones` that are not a zone (GCP: us-central1-a) or a region/availability zone
    (AWS: us-east-1, us-east-1b) of `provider`."""
    def ok(z):
        if provider == "gcp":
            return bool(_GCP_ZONE.fullmatch(z))
        return bool(_AWS_REGION.fullmatch(z) or _AWS_AZ.fullmatch(z))

    return [z for z in map(str, zones or []) if not ok(z)]


def sdcloud_aws_regions(zones):
    """AWS regions named by a list of regions and/or availability zones, in order, without duplicates."""
    out = []
    for z in map(str, zones or []):
        m = _AWS_AZ.fullmatch(z)
        region = z if _AWS_REGION.fullmatch(z) else (m.group("region") if m else None)
        if region and region not in out:
            out.append(region)
    return out


class FilterModule:
    def filters(self):
        return {
            "sdcloud_invalid_cidrs": sdcloud_invalid_cidrs,
            "sdcloud_world_cidrs": sdcloud_world_cidrs,
            "sdcloud_host_cidr": sdcloud_host_cidr,
            "sdcloud_gpu_names": sdcloud_gpu_names,
            "sdcloud_gpu_offer": sdcloud_gpu_offer,
            "sdcloud_bad_zones": sdcloud_bad_zones,
            "sdcloud_aws_regions": sdcloud_aws_regions,
        }
