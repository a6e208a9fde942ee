"""One placement vocabulary: the same fault on GCP and on AWS gives the same attempts (result, code) and
a summary of the same shape. gpu_instance's main() runs against both stand-ins (the Compute Engine
stand-in in-process, moto with its fault middleware), each given the fault as that cloud sends it."""

import pathlib
import re
import sys

import pytest
from ansible.module_utils.sdcloud import base, errors

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import gce_server  # noqa: E402
import moto_faults  # noqa: E402

gpu_instance = moto_faults.load_module("gpu_instance")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"
# Two zones of one region per cloud, and a zone that does not offer the T4 machine: us-central1-f has no
# GPUs in the stand-in; moto's offerings data has no g4dn.xlarge in us-east-1e.
ZONES = {"gcp": ["us-central1-a", "us-central1-b"], "aws": ["us-east-1a", "us-east-1b"]}
NOT_OFFERING = {"gcp": "us-central1-f", "aws": "us-east-1e"}
# The same fault, as each cloud sends it.
STOCKOUT = {"gcp": "ZONE_RESOURCE_POOL_EXHAUSTED", "aws": "InsufficientInstanceCapacity"}
QUOTA = {"gcp": "QUOTA_EXCEEDED", "aws": "VcpuLimitExceeded"}


@pytest.fixture
def clouds(monkeypatch):
    """Both stand-ins; `fault(cloud, kind, zone=None, spot=None)` injects a stockout or a regional quota."""
    moto = moto_faults.prepare_aws(monkeypatch)
    monkeypatch.setattr(errors, "RETRY_BASE", 0.01)
    accels = {"us-central1-a": ["nvidia-tesla-t4"], "us-central1-b": ["nvidia-tesla-t4"], "us-central1-f": []}
    with gce_server.GceStandin(accelerators=accels) as gce:
        def fault(cloud, kind, zone=None, spot=None):
            if cloud == "gcp":
                where = {"zone": zone} if zone else {"region": "us-central1"}
                # the stand-in cannot tell spot from on-demand inserts: a fallback test faults each zone once
                gce.add_fault("insert", (STOCKOUT if kind == "stockout" else QUOTA)[cloud], **where,
                              **({"count": 1} if spot else {}))
            else:
                market = {True: "spot", False: "on-demand"}.get(spot)
                moto.fault("RunInstances", (STOCKOUT if kind == "stockout" else QUOTA)[cloud],
                           **({"zone": zone} if zone else {}), **({"market": market} if market else {}))

        def run(cloud, zones=None, **over):
            args = {"provider": cloud, "name": "sd", "gpu": "nvidia-t4", "zones": zones or ZONES[cloud],
                    "ssh_public_key": KEY, "wait_timeout": 30, **over}
            if cloud == "gcp":
                args.update(project="proj-vocab", endpoint=gce.url, image_family="ubuntu-os-cloud/ubuntu-2204-lts")
            return moto_faults.run_module(gpu_instance.main, args)

        yield fault, run


def outcomes(res):
    return [(a["spot"], a["result"], a["code"]) for a in res["attempts"]]


def shape(msg):
    """The summary with what differs by cloud taken out: zone names, machine types, the cloud's reasons,
    and the quota help (its console URL and command are the cloud's)."""
    head, rest = msg.split(" Tried: ", 1)
    tried, fixes = rest.split(". To fix: ", 1)
    head = re.sub(r"\(\S+\)", "(MACHINE)", head)
    steps = [re.sub(r"^\S+ ", "ZONE ", step.split(" - ", 1)[0]) for step in tried.split("; ")]
    fixes = ["QUOTA HELP" if "quota" in f and ("gcloud" in f or "aws service-quotas" in f)
             else re.sub(r"offers \S+:", "offers MACHINE:", f) for f in fixes.rstrip(".").split("; ")]
    return head, steps, fixes


def both(run, **over):
    return {cloud: run(cloud, **over) for cloud in ("gcp", "aws")}


def test_stockout_then_success(clouds):
    fault, run = clouds
    for cloud in ("gcp", "aws"):
        fault(cloud, "stockout", zone=ZONES[cloud][0])
    res = both(run)
    for cloud, (failed, r) in res.items():
        assert not failed, r["msg"]
        assert outcomes(r) == [(True, "failed", "NoCapacity"), (True, "created", None)], cloud
        assert r["attempts"][0]["cloud_code"] == STOCKOUT[cloud]


def test_stockout_everywhere_same_summary(clouds):
    fault, run = clouds
    for cloud in ("gcp", "aws"):
        fault(cloud, "stockout")
    res = both(run)
    assert all(failed for failed, _ in res.values())
    assert outcomes(res["gcp"][1]) == outcomes(res["aws"][1]) == [(True, "failed", "NoCapacity")] * 2
    assert shape(res["gcp"][1]["msg"]) == shape(res["aws"][1]["msg"]) == (
        "could not create nvidia-t4 (MACHINE) for deployment 'sd' in any zone.",
        ["ZONE (spot): failed NoCapacity"] * 2,
        ["add more zones or regions to `zones`", "set spot_fallback: on-demand to try on-demand capacity"])
    assert res["gcp"][1]["code"] == res["aws"][1]["code"] == "NoCapacity"


def test_zone_not_offering_the_type(clouds):
    _fault, run = clouds
    res = {cloud: run(cloud, zones=[NOT_OFFERING[cloud], ZONES[cloud][0]]) for cloud in ("gcp", "aws")}
    for cloud, (failed, r) in res.items():
        assert not failed, r["msg"]
        assert outcomes(r) == [(True, "skipped", "NotOffered"), (True, "created", None)], cloud
        assert r["attempts"][0]["cloud_code"] is None  # nothing was asked of the cloud
    res = {cloud: run(cloud, zones=[NOT_OFFERING[cloud]], name="sd2") for cloud in ("gcp", "aws")}
    assert shape(res["gcp"][1]["msg"]) == shape(res["aws"][1]["msg"]) == (
        "could not create nvidia-t4 (MACHINE) for deployment 'sd2' in any zone.",
        ["ZONE (spot): skipped NotOffered"],
        ["none of the zones offers MACHINE: choose other zones, or another gpu"])
    assert res["gcp"][1]["code"] == res["aws"][1]["code"] == "NotOffered"


def test_regional_quota_skips_the_region(clouds):
    fault, run = clouds
    for cloud in ("gcp", "aws"):
        fault(cloud, "quota")
    res = both(run)
    assert outcomes(res["gcp"][1]) == outcomes(res["aws"][1]) == [
        (True, "failed", "QuotaExceeded"), (True, "skipped", "QuotaExceeded")]
    assert shape(res["gcp"][1]["msg"]) == shape(res["aws"][1]["msg"])
    assert shape(res["aws"][1]["msg"])[2] == ["QUOTA HELP"]
    for cloud, (_failed, r) in res.items():
        assert r["attempts"][1]["reason"].endswith(f"exhausted in {'us-central1' if cloud == 'gcp' else 'us-east-1'}")
        assert r["code"] == "QuotaExceeded"


def test_spot_fallback_walks_the_zones_again_on_demand(clouds):
    fault, run = clouds
    for cloud in ("gcp", "aws"):
        for zone in ZONES[cloud]:
            fault(cloud, "stockout", zone=zone, spot=True)
    res = both(run, spot_fallback="on-demand")
    for cloud, (failed, r) in res.items():
        assert not failed, r["msg"]
        assert outcomes(r) == [(True, "failed", "NoCapacity"), (True, "failed", "NoCapacity"),
                               (False, "created", None)], cloud
        assert r["instance"]["spot"] is False


def test_every_code_is_in_the_vocabulary(clouds):
    fault, run = clouds
    for cloud in ("gcp", "aws"):
        fault(cloud, "quota")
    for _failed, r in both(run, zones=None).values():
        assert {a["code"] for a in r["attempts"]} <= set(base.ATTEMPT_CODES)
        assert {a["result"] for a in r["attempts"]} <= {base.ATTEMPT_CREATED, base.ATTEMPT_FAILED, base.ATTEMPT_SKIPPED}
