"""gpu_instance (provider aws) end to end: main() against moto in server mode with fault injection.

The stand-in is tests/standins/moto_faults.py (moto 5 + a middleware for capacity/quota/throttling faults).
"""

import pathlib
import sys

import boto3
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import moto_faults  # noqa: E402

gpu_instance = moto_faults.load_module("gpu_instance")

REGION = "us-east-1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"
MUTATING = {"RunInstances", "StartInstances", "StopInstances", "TerminateInstances", "CreateSecurityGroup",
            "ImportKeyPair", "DeleteSecurityGroup", "DeleteKeyPair", "AuthorizeSecurityGroupIngress",
            "RevokeSecurityGroupIngress", "CancelSpotInstanceRequests", "CreateTags"}


@pytest.fixture
def moto(monkeypatch):
    return moto_faults.prepare_aws(monkeypatch)


@pytest.fixture
def ec2(moto):
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)


def args(**over):
    base = {"provider": "aws", "name": "sd1", "gpu": "nvidia-t4", "zones": ["us-east-1a", "us-east-1b"],
            "ssh_public_key": KEY, "wait_timeout": 30}
    base.update(over)
    return base


def run(check=False, diff=False, **over):
    return moto_faults.run_module(gpu_instance.main, args(**over), check=check, diff=diff)


def live_instances(ec2):
    res = ec2.describe_instances(Filters=[{"Name": "instance-state-name",
                                           "Values": ["pending", "running", "stopping", "stopped"]}])
    return [i for r in res["Reservations"] for i in r["Instances"]]


def mutations(ctl):
    return [r for r in ctl.requests() if r["action"] in MUTATING]


def tags(resource):
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def test_lifecycle_create_rerun_stop_start_absent(moto, ec2):
    failed, res = run(diff=True)
    assert not failed, res["msg"]
    assert res["changed"] is True
    inst = res["instance"]
    assert inst["state"] == "running" and inst["public_ip"]
    assert inst["zone"] == "us-east-1a" and inst["machine_type"] == "g4dn.xlarge"
    assert inst["spot"] is True and inst["ssh_user"] == "ubuntu" and inst["gpu"] == "nvidia-t4"
    assert inst["hourly_price"] == pytest.approx(0.21)
    assert inst["image"] == "ami-0b6c3d8e4f0a20132"  # newest x86_64 DLAMI Ubuntu 22.04 in amis.json
    assert [a["result"] for a in res["attempts"]] == ["created"]
    assert res["diff"]["before"] == {"state": "absent"} and res["diff"]["after"]["state"] == "running"

    # what was asked: persistent spot that stops on interruption, tags on instance + volume, gp3 disk
    run_req = moto.requests("RunInstances")[0]["params"]
    assert run_req["InstanceMarketOptions.SpotOptions.SpotInstanceType"] == "persistent"
    assert run_req["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "stop"
    assert run_req["BlockDeviceMapping.1.Ebs.VolumeSize"] == "100"
    spec_types = {v for k, v in run_req.items() if k.startswith("TagSpecification.") and k.endswith("ResourceType")}
    assert {"instance", "volume"} <= spec_types

    described = live_instances(ec2)
    assert len(described) == 1
    assert tags(described[0])["sdcloud-managed"] == "true" and tags(described[0])["sdcloud-deployment"] == "sd1"
    vols = ec2.describe_volumes(Filters=[{"Name": "tag:sdcloud-deployment", "Values": ["sd1"]}])["Volumes"]
    assert len(vols) == 1 and vols[0]["Size"] == 100
    assert ec2.describe_key_pairs(Filters=[{"Name": "tag:sdcloud-deployment", "Values": ["sd1"]}])["KeyPairs"]
    sgs = ec2.describe_security_groups(Filters=[{"Name": "tag:sdcloud-deployment", "Values": ["sd1"]}])
    assert [g["GroupName"] for g in sgs["SecurityGroups"]] == ["sdcloud-sd1"]

    # re-run: no change, no RunInstances
    moto._call("DELETE", "/_requests")
    failed, res = run()
    assert not failed and res["changed"] is False
    assert res["instance"]["id"] == inst["id"]
    assert moto.requests("RunInstances") == [] and mutations(moto) == []

    # stop: disk cost reported
    failed, res = run(state="stopped")
    assert not failed and res["changed"] is True and res["instance"]["state"] == "stopped"
    assert res["disk_monthly_cost"] == pytest.approx(8.0)  # 100 GB gp3 at $0.08
    assert "$8.00/month" in res["msg"]
    failed, res = run(state="stopped")
    assert not failed and res["changed"] is False

    # present starts the stopped one (same id, no new RunInstances)
    failed, res = run(state="running")
    assert not failed and res["changed"] is True
    assert res["instance"]["id"] == inst["id"] and res["instance"]["state"] == "running"
    assert len(moto.requests("StartInstances")) == 1 and moto.requests("RunInstances") == []

    # absent: instance, key pair and security group gone; second run changes nothing
    failed, res = run(state="absent")
    assert not failed and res["changed"] is True
    kinds = sorted(d["kind"] for d in res["deleted"])
    assert kinds == ["firewall", "instance", "key_pair"]
    assert live_instances(ec2) == []
    assert ec2.describe_key_pairs(Filters=[{"Name": "tag:sdcloud-managed", "Values": ["true"]}])["KeyPairs"] == []
    assert ec2.describe_security_groups(Filters=[{"Name": "tag:sdcloud-managed", "Values": ["true"]}])[
        "SecurityGroups"] == []
    failed, res = run(state="absent")
    assert not failed and res["changed"] is False


@pytest.mark.parametrize("state", ["present", "stopped", "absent"])
def test_check_mode_changes_nothing(moto, ec2, state):
    if state != "present":
        failed, res = run()
        assert not failed
    before = [(i["InstanceId"], i["State"]["Name"]) for i in live_instances(ec2)]
    moto._call("DELETE", "/_requests")
    failed, res = run(check=True, diff=True, state=state)
    assert not failed, res["msg"]
    assert res["changed"] is True
    assert res["msg"].startswith("would ")
    assert mutations(moto) == []
    assert [(i["InstanceId"], i["State"]["Name"]) for i in live_instances(ec2)] == before
    if state == "present":
        assert res["plan"]["machine_type"] == "g4dn.xlarge"
        assert res["plan"]["zones"] == ["us-east-1a", "us-east-1b"]
        assert res["plan"]["image"] == "ami-0b6c3d8e4f0a20132"
        assert ec2.describe_security_groups(Filters=[{"Name": "tag:sdcloud-managed", "Values": ["true"]}])[
            "SecurityGroups"] == []


def test_zone_failover_reports_attempts(moto):
    moto.fault("RunInstances", "InsufficientInstanceCapacity", zone="us-east-1a")
    failed, res = run()
    assert not failed, res["msg"]
    assert res["instance"]["zone"] == "us-east-1b"
    assert [(a["zone"], a["result"], a["code"], a["cloud_code"]) for a in res["attempts"]] == [
        ("us-east-1a", "failed", "NoCapacity", "InsufficientInstanceCapacity"),
        ("us-east-1b", "created", None, None),
    ]
    assert "sufficient g4dn.xlarge capacity" in res["attempts"][0]["reason"]
    # the capacity error is not retried in the same zone (botocore would, HTTP 500): one call per zone
    assert [r["zone"] for r in moto.requests("RunInstances")] == ["us-east-1a", "us-east-1b"]


def test_zone_not_offering_type_is_skipped(moto):
    # moto's offerings data: us-east-1e offers no g4dn.xlarge (moto would launch it anyway)
    failed, res = run(zones=["us-east-1e", "us-east-1c"])
    assert not failed, res["msg"]
    assert res["instance"]["zone"] == "us-east-1c"
    assert res["attempts"][0] == {"zone": "us-east-1e", "spot": True, "result": "skipped",
                                  "reason": "us-east-1e does not offer g4dn.xlarge", "code": "NotOffered",
                                  "cloud_code": None}
    assert [r["zone"] for r in moto.requests("RunInstances")] == ["us-east-1c"]


def test_region_in_zones_expands_to_its_azs(moto):
    moto.fault("RunInstances", "InsufficientInstanceCapacity", zone="us-east-1a")
    failed, res = run(zones=["us-east-1"])
    assert not failed, res["msg"]
    assert res["instance"]["zone"] == "us-east-1b"


def test_spot_fallback_to_on_demand(moto, ec2):
    moto.fault("RunInstances", "InsufficientInstanceCapacity", market="spot")
    failed, res = run(spot_fallback="on-demand")
    assert not failed, res["msg"]
    assert res["instance"]["spot"] is False
    assert res["instance"]["hourly_price"] == pytest.approx(0.526)
    assert [(a["zone"], a["spot"], a["result"]) for a in res["attempts"]] == [
        ("us-east-1a", True, "failed"), ("us-east-1b", True, "failed"), ("us-east-1a", False, "created")]
    assert "InstanceMarketOptions.MarketType" not in moto.requests("RunInstances")[-1]["params"]


def test_no_spot_capacity_without_fallback_fails_with_fix(moto, ec2):
    moto.fault("RunInstances", "InsufficientInstanceCapacity", market="spot")
    failed, res = run()
    assert failed
    assert "could not create nvidia-t4 (g4dn.xlarge) for deployment 'sd1'" in res["msg"]
    assert "spot_fallback: on-demand" in res["msg"]
    assert [a["result"] for a in res["attempts"]] == ["failed", "failed"]
    assert live_instances(ec2) == []


def test_quota_names_quota_region_and_fix(moto):
    moto.fault("RunInstances", "VcpuLimitExceeded", market="spot")
    failed, res = run(zones=["us-east-1a", "us-east-1b", "us-east-1c"])
    assert failed
    msg = res["msg"]
    assert "All G and VT Spot Instance Requests" in msg and "L-3819A6DF" in msg
    assert "us-east-1" in msg and "4 vCPUs" in msg
    assert "aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-3819A6DF" in msg
    assert "https://us-east-1.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-3819A6DF" in msg
    # a regional quota: the other zones of the region are not tried
    assert len(moto.requests("RunInstances")) == 1
    assert [(a["result"], a["code"], a["cloud_code"]) for a in res["attempts"]] == [
        ("failed", "QuotaExceeded", "VcpuLimitExceeded"), ("skipped", "QuotaExceeded", None),
        ("skipped", "QuotaExceeded", None)]
    assert res["attempts"][1]["reason"] == "quota L-3819A6DF (All G and VT Spot Instance Requests) exhausted in us-east-1"
    assert res["code"] == "QuotaExceeded"


def test_on_demand_quota_names_on_demand_quota(moto):
    moto.fault("RunInstances", "VcpuLimitExceeded", market="on-demand")
    failed, res = run(spot=False, gpu="nvidia-a10g")
    assert failed
    assert "Running On-Demand G and VT instances" in res["msg"] and "L-DB2E81BA" in res["msg"]


def test_throttling_is_retried(moto):
    moto.fault("RunInstances", "RequestLimitExceeded", count=2)
    moto.fault("DescribeInstances", "RequestLimitExceeded", count=1)
    failed, res = run()
    assert not failed, res["msg"]
    runs = moto.requests("RunInstances")
    assert [r["faulted"] for r in runs] == ["RequestLimitExceeded", "RequestLimitExceeded", None]
    assert {r["zone"] for r in runs} == {"us-east-1a"}  # retried in place, not counted as no-capacity
    assert all(f["hits"] == f["count"] for f in moto.faults())


def test_unknown_gpu_lists_valid_names(moto):
    failed, res = run(gpu="nvidia-rtx-9090")
    assert failed
    assert "unknown GPU 'nvidia-rtx-9090'" in res["msg"] and "nvidia-t4" in res["msg"] and "nvidia-l4" in res["msg"]
    assert moto.requests() == []


def test_stopped_without_instance_is_not_an_error(moto):
    failed, res = run(state="stopped")
    assert not failed and res["changed"] is False and res["instance"] is None


def test_auth_error_names_the_fix(moto):
    moto.fault("DescribeInstances", "UnauthorizedOperation")
    failed, res = run()
    assert failed
    assert "UnauthorizedOperation" in res["msg"] and "ec2:DescribeInstances" in res["msg"]
    assert "Traceback" not in res["msg"]


def test_persistent_throttling_says_wait_not_more_zones(moto, ec2):
    # EC2 throttles per account and region: the region is given up after one zone's backoff, other regions tried
    moto.fault("RunInstances", "RequestLimitExceeded")
    failed, res = run(zones=["us-east-1"], spot_fallback="on-demand")
    assert failed
    assert "EC2 is throttling this account in us-east-1: wait a few minutes and re-run" in res["msg"]
    assert "on-demand" not in res["msg"].split("To fix:")[1] and "more zones" not in res["msg"]
    runs = moto.requests("RunInstances")
    assert {r["zone"] for r in runs} == {"us-east-1a"} and len(runs) == moto_faults.RETRY_TRIES()
    assert [a["result"] for a in res["attempts"]][:2] == ["failed", "skipped"]
    assert {a["code"] for a in res["attempts"]} - {"NotOffered"} == {"Throttled"} and res["code"] == "Throttled"
    assert live_instances(ec2) == []


def test_throttled_region_does_not_stop_another_region(moto):
    moto.fault("RunInstances", "RequestLimitExceeded", zone="us-east-1a")
    failed, res = run(zones=["us-east-1a", "us-east-1b", "us-west-2a"])
    assert not failed, res["msg"]
    assert res["instance"]["zone"] == "us-west-2a"
    assert [(a["zone"], a["result"]) for a in res["attempts"]] == [
        ("us-east-1a", "failed"), ("us-east-1b", "skipped"), ("us-west-2a", "created")]


@pytest.mark.parametrize("code", ["Server.SpotInstanceShutdown", "Server.SpotInstanceTermination"])
def test_spot_interrupted_during_the_create_wait_moves_on(moto, ec2, code):
    import time

    moto.interrupt(code, zone="us-east-1a")
    start = time.monotonic()
    failed, res = run(wait_timeout=60)
    assert not failed, res["msg"]
    assert time.monotonic() - start < 20 and res["instance"]["zone"] == "us-east-1b"
    assert [(a["zone"], a["result"], a["code"], a["cloud_code"]) for a in res["attempts"]] == [
        ("us-east-1a", "failed", "Preempted", code), ("us-east-1b", "created", None, None)]
    assert [i["Placement"]["AvailabilityZone"] for i in live_instances(ec2)] == ["us-east-1b"]  # the lost one went


def test_spot_interrupted_everywhere_fails_naming_it(moto, ec2):
    moto.interrupt(count=2)
    failed, res = run(wait_timeout=60)
    assert failed and res["code"] == "Preempted"
    assert "us-east-1a (spot): failed Preempted" in res["msg"] and "spot_fallback: on-demand" in res["msg"]
    assert live_instances(ec2) == []


NEW_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMi4EDuuQAk9KvzaZxqOiX77j9yp/VAEP6w3DPdpO5mB op@new-laptop"


def test_changed_key_replaces_the_key_pair_before_a_create(moto, ec2):
    # a run that failed after the key pair was made (no capacity), then the operator's key changed
    moto.fault("RunInstances", "InsufficientInstanceCapacity", count=2)
    failed, _ = run()
    assert failed and ec2.describe_key_pairs(KeyNames=["sdcloud-sd1"])["KeyPairs"]
    failed, res = run(ssh_public_key=NEW_KEY)
    assert not failed, res["msg"]
    pair = ec2.describe_key_pairs(KeyNames=["sdcloud-sd1"], IncludePublicKey=True)["KeyPairs"][0]
    assert pair["PublicKey"].split()[:2] == NEW_KEY.split()[:2] and tags(pair)["sdcloud-deployment"] == "sd1"
    assert [r["action"] for r in moto.requests() if r["action"] in ("DeleteKeyPair", "ImportKeyPair")] == [
        "ImportKeyPair", "DeleteKeyPair", "ImportKeyPair"]
    assert live_instances(ec2)[0]["KeyName"] == "sdcloud-sd1"


def test_changed_key_of_an_existing_instance_is_named(moto, ec2):
    failed, res = run()
    assert not failed, res["msg"]
    failed, res = run(ssh_public_key=NEW_KEY)
    assert failed and res["code"] == "KeyMismatch"
    assert f"instance {res_id(ec2)} of deployment 'sd1' was launched with key pair sdcloud-sd1" in res["msg"]
    assert "EC2 cannot change the key of an instance" in res["msg"] and "~ubuntu/.ssh/authorized_keys" in res["msg"]
    failed, res = run()  # the same key: fine
    assert not failed and res["changed"] is False


def res_id(ec2):
    return live_instances(ec2)[0]["InstanceId"]
