"""The filters the playbooks validate and wire with (plugins/filter/sdcloud.py)."""

import pytest

from plugins.filter.sdcloud import (
    sdcloud_cidrs_containing,
    sdcloud_host_cidr,
    sdcloud_invalid_cidrs,
    sdcloud_tcp_rules,
)


def test_cidrs_containing_the_address():
    cidrs = ["10.0.0.0/8", "not-a-cidr", "192.0.2.0/24", "2001:db8::/32"]
    assert sdcloud_cidrs_containing(cidrs, "10.1.2.3\n") == ["10.0.0.0/8"]
    assert sdcloud_cidrs_containing(cidrs, "2001:db8::7") == ["2001:db8::/32"]
    assert sdcloud_cidrs_containing(cidrs, "198.51.100.1") == []
    assert sdcloud_cidrs_containing(cidrs, "<html>") == [], "an answer that is not an address is in no CIDR"


def test_tcp_rules_for_the_firewall():
    assert sdcloud_tcp_rules([443, "7443"], ["203.0.113.7/32"]) == [
        {"port": 443, "proto": "tcp", "sources": ["203.0.113.7/32"]},
        {"port": 7443, "proto": "tcp", "sources": ["203.0.113.7/32"]}]
    assert sdcloud_tcp_rules([], ["203.0.113.7/32"]) == [], "tunnel access opens nothing"


def test_host_cidr_and_invalid_cidrs():
    assert sdcloud_host_cidr(" 203.0.113.7\n") == "203.0.113.7/32"
    assert sdcloud_host_cidr("2001:db8::1") == "2001:db8::1/128"
    with pytest.raises(Exception, match="is not an IP address"):
        sdcloud_host_cidr("<html>")
    assert sdcloud_invalid_cidrs(["10.0.0.1/8", "10.0.0.0/8"]) == ["10.0.0.1/8"]
