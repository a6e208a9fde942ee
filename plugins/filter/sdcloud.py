"""Filters the playbooks use to validate input up front."""

from __future__ import annotations

import ipaddress


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


class FilterModule:
    def filters(self):
        return {"sdcloud_invalid_cidrs": sdcloud_invalid_cidrs, "sdcloud_world_cidrs": sdcloud_world_cidrs}
