"""The filters the playbooks validate and wire with (plugins/filter/sdcloud.py)."""

import pytest

from plugins.filter.sdcloud import (
    sdcloud_api_key_var,
    sdcloud_bad_zones,
    sdcloud_cidrs_containing,
    sdcloud_host_cidr,
    sdcloud_https_url,
    sdcloud_invalid_cidrs,
    sdcloud_ipv6_cidrs,
    sdcloud_other_providers_message,
    sdcloud_pod_self_stop,
    sdcloud_port_problems,
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


def test_port_problems_name_the_setting():
    ok = {"ui": 8188, "other_ui": "7860", "https": 443}
    assert sdcloud_port_problems(ok, unprivileged=["ui", "other_ui"]) == []
    problems = sdcloud_port_problems(
        {"ui": 80, "other_ui": 70000, "https": 22, "https2": "x", "a": 9000, "b": 9000}, unprivileged=["ui"])
    assert problems == [
        "ui is 80: the UI runs as its own user, which cannot listen below 1024; choose a port from 1024 to 65535",
        "other_ui is 70000: give a TCP port, a whole number from 1 to 65535",
        "https is 22, the SSH port: choose another port",
        "https2 is 'x': give a TCP port, a whole number from 1 to 65535",
        "b and a are both 9000: give each its own port",
    ]


def test_https_url():
    assert sdcloud_https_url(443, "203.0.113.7") == "https://203.0.113.7"
    assert sdcloud_https_url("7443", "203.0.113.7") == "https://203.0.113.7:7443"
    assert sdcloud_https_url(8443, "2001:db8::1") == "https://[2001:db8::1]:8443"
    # pods: the provider's proxy URL of an http port (RunPod), the public mapping of a tcp port (vast.ai)
    runpod = {"22": {"ip": "198.51.100.4", "port": 40022, "type": "tcp", "url": None},
              "443": {"ip": None, "port": None, "type": "http", "url": "https://abc123-443.proxy.runpod.net"}}
    assert sdcloud_https_url(443, "198.51.100.4", runpod) == "https://abc123-443.proxy.runpod.net"
    vast = {"443": {"ip": "203.0.113.9", "port": 41443, "type": "tcp", "url": "http://203.0.113.9:41443"}}
    assert sdcloud_https_url("443", "203.0.113.9", vast) == "https://203.0.113.9:41443"
    # a port the pod does not map, or none given: the host's own
    assert sdcloud_https_url(7443, "203.0.113.9", vast) == sdcloud_https_url(7443, "203.0.113.9", None) == "https://203.0.113.9:7443"


def test_ipv6_cidrs():
    assert sdcloud_ipv6_cidrs(["203.0.113.7/32", "2001:db8::/64", "junk", "::/0"]) == ["2001:db8::/64", "::/0"]


def test_other_providers_message_names_each_machine_and_the_fix():
    others = [{"inventory_hostname": "demo.gcp", "sdcloud_instance": {"provider": "gcp", "state": "stopped"}},
              {"inventory_hostname": "box", "sdcloud_instance": {"provider": "static", "state": "running"}}]
    assert sdcloud_other_providers_message(others, "demo", "aws") == (
        "deployment demo also has demo.gcp (gcp, stopped), box (static, running), while sdcloud_provider is aws. "
        "Delete the gcp one (ansible-playbook playbooks/teardown.yml -e sdcloud_provider=gcp) or work on it with "
        "-e sdcloud_provider=gcp, or give this deployment another name (export SDCLOUD_NAME=...). "
        "Give static host(s) box their own `deployment:` in static_hosts (inventory/sdcloud.yml), or give this "
        "deployment another name (export SDCLOUD_NAME=...).")


def test_bad_zones_per_provider():
    assert sdcloud_bad_zones(["us-central1-a", "us-central1", "US-KS-2"], "gcp") == ["us-central1", "US-KS-2"]
    assert sdcloud_bad_zones(["us-east-1", "us-east-1b", "us-central1-a"], "aws") == ["us-central1-a"]
    # pods: RunPod data center ids, vast.ai country codes, `any` for anywhere; a cloud's zone is neither
    assert sdcloud_bad_zones(["US-KS-2", "EU-RO-1", "CA-MTL-1", "any", "us-east-1", "US"], "runpod") == ["us-east-1", "US"]
    assert sdcloud_bad_zones(["US", "de", "ANY", "US-KS-2", "usa"], "vastai") == ["US-KS-2", "usa"]
    assert sdcloud_bad_zones(None, "runpod") == []


def test_api_key_var_is_the_backends():
    from plugins.module_utils.sdcloud import runpod, vastai  # noqa: PLC0415 - the names' owners

    assert (sdcloud_api_key_var("runpod"), sdcloud_api_key_var("vastai")) == (runpod.ENV_KEY, vastai.ENV_KEY)
    assert (runpod.ENV_KEY, vastai.ENV_KEY) == ("RUNPOD_API_KEY", "VAST_API_KEY")
    assert sdcloud_api_key_var("gcp") == sdcloud_api_key_var("static") == ""


def test_pod_self_stop_is_the_backends_request_at_this_computers_endpoint(monkeypatch):
    monkeypatch.delenv("SDCLOUD_RUNPOD_ENDPOINT", raising=False)
    monkeypatch.setenv("SDCLOUD_VAST_ENDPOINT", "http://10.87.15.1:9999")
    assert sdcloud_pod_self_stop("runpod") == {
        "method": "POST", "path": "/v2/pods/{id}/action", "body": {"action": "stop"}, "key_var": "RUNPOD_API_KEY",
        "id_var": "RUNPOD_POD_ID", "endpoint": "https://api.runpod.io"}
    vast = sdcloud_pod_self_stop("vastai")
    assert (vast["method"], vast["path"], vast["body"]) == ("PUT", "/api/v0/instances/{id}/", {"state": "stopped"})
    assert (vast["key_var"], vast["id_var"], vast["endpoint"]) == ("CONTAINER_API_KEY", "CONTAINER_ID", "http://10.87.15.1:9999")
    with pytest.raises(Exception, match="'gcp' is not a pod provider"):
        sdcloud_pod_self_stop("gcp")
