"""cloud_firewall and cloud_resources (provider aws) end to end against moto (tests/standins/moto_faults.py)."""

import pathlib
import sys

import boto3
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import moto_faults  # noqa: E402

gpu_instance = moto_faults.load_module("gpu_instance")
cloud_firewall = moto_faults.load_module("cloud_firewall")
cloud_resources = moto_faults.load_module("cloud_resources")

REGION = "us-east-1"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"
BASE = {"provider": "aws", "name": "sd1", "zones": ["us-east-1a", "us-east-1b"]}


@pytest.fixture
def moto(monkeypatch):
    return moto_faults.prepare_aws(monkeypatch)


@pytest.fixture
def ec2(moto):
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)


def create_instance(**over):
    failed, res = moto_faults.run_module(gpu_instance.main, dict(BASE, gpu="nvidia-t4", ssh_public_key=KEY,
                                                                 wait_timeout=30, **over))
    assert not failed, res["msg"]
    return res["instance"]


def firewall(check=False, **over):
    return moto_faults.run_module(cloud_firewall.main, dict(BASE, **over), check=check, diff=True)


def sweep(check=False, **over):
    return moto_faults.run_module(cloud_resources.main, dict(BASE, **over), check=check)


def ingress(ec2):
    sg = ec2.describe_security_groups(Filters=[{"Name": "tag:sdcloud-deployment", "Values": ["sd1"]}])
    groups = sg["SecurityGroups"]
    assert len(groups) == 1
    return sorted((p["FromPort"], r["CidrIp"]) for p in groups[0]["IpPermissions"] for r in p["IpRanges"])


def test_firewall_follows_operator_ip(moto, ec2):
    inst = create_instance()
    assert ingress(ec2) == []  # gpu_instance's group starts closed

    failed, res = firewall(check=True, source_ranges=["198.51.100.7"])
    assert not failed and res["changed"] and res["msg"].startswith("would update")
    assert ingress(ec2) == []

    failed, res = firewall(source_ranges=["198.51.100.7"])
    assert not failed, res["msg"]
    assert res["changed"] and res["firewall"]["ports"] == [22]
    assert ingress(ec2) == [(22, "198.51.100.7/32")]
    failed, res = firewall(source_ranges=["198.51.100.7/32"])
    assert not failed and res["changed"] is False

    # the operator's IP changed and public access (443) was asked: old address revoked
    failed, res = firewall(source_ranges=["203.0.113.9/32"], ports=[443])
    assert not failed and res["changed"]
    assert ingress(ec2) == [(22, "203.0.113.9/32"), (443, "203.0.113.9/32")]
    assert res["diff"]["before"]["source_ranges"] == ["198.51.100.7/32"]

    # the group is the one the instance uses
    d = ec2.describe_instances(InstanceIds=[inst["id"]])["Reservations"][0]["Instances"][0]
    assert res["firewall"]["id"] in [g["GroupId"] for g in d["NetworkInterfaces"][0]["Groups"]]

    failed, res = firewall(state="absent")
    assert not failed and res["changed"]
    assert ec2.describe_security_groups(Filters=[{"Name": "tag:sdcloud-deployment", "Values": ["sd1"]}])[
        "SecurityGroups"] == []


def test_firewall_without_instance_creates_tagged_group_and_fixes_drift(moto, ec2):
    failed, res = firewall(source_ranges=["198.51.100.0/24"])
    assert not failed and res["changed"]
    sg = ec2.describe_security_groups(GroupIds=[res["firewall"]["id"]])["SecurityGroups"][0]
    tags = {t["Key"]: t["Value"] for t in sg["Tags"]}
    assert tags["sdcloud-managed"] == "true" and tags["sdcloud-deployment"] == "sd1"
    # someone opened 8080 to the world by hand: the next run removes it
    ec2.authorize_security_group_ingress(GroupId=sg["GroupId"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    failed, res = firewall(source_ranges=["198.51.100.0/24"])
    assert not failed and res["changed"]
    assert ingress(ec2) == [(22, "198.51.100.0/24")]


def test_firewall_refuses_world_and_bad_cidr(moto):
    failed, res = firewall(source_ranges=["0.0.0.0/0"])
    assert failed and "allow_world" in res["msg"]
    failed, res = firewall(source_ranges=["not-an-ip"])
    assert failed and "203.0.113.7/32" in res["msg"]
    assert moto.requests("CreateSecurityGroup") == []


def test_sweep_after_half_failed_provision_leaves_nothing(moto, ec2):
    # key pair + security group get created, then every zone is out of capacity
    moto.fault("RunInstances", "InsufficientInstanceCapacity")
    failed, res = moto_faults.run_module(gpu_instance.main, dict(BASE, gpu="nvidia-t4", ssh_public_key=KEY,
                                                                 wait_timeout=30))
    assert failed and len(res["attempts"]) == 2
    assert moto.requests("ImportKeyPair") and moto.requests("CreateSecurityGroup")
    # plus an instance of another deployment that must survive, and a tagged spare volume + EIP of ours
    moto._call("DELETE", "/_faults")
    create_instance(name="other")
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, TagSpecifications=[{
        "ResourceType": "volume", "Tags": [{"Key": "sdcloud-managed", "Value": "true"},
                                           {"Key": "sdcloud-deployment", "Value": "sd1"}]}])
    eip = ec2.allocate_address(Domain="vpc", TagSpecifications=[{
        "ResourceType": "elastic-ip", "Tags": [{"Key": "sdcloud-managed", "Value": "true"},
                                               {"Key": "sdcloud-deployment", "Value": "sd1"}]}])

    failed, res = sweep()
    assert not failed
    assert sorted(r["kind"] for r in res["resources"]) == ["address", "disk", "firewall", "key_pair"]
    assert res["changed"] is False

    failed, res = sweep(check=True, state="absent")
    assert not failed and res["changed"] and res["msg"].startswith("would delete 4")
    assert sweep()[1]["count"] == 4

    failed, res = sweep(state="absent")
    assert not failed, res["msg"]
    assert res["changed"] and res["remaining"] == []
    assert sweep()[1]["count"] == 0
    assert ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vol["VolumeId"]]}])["Volumes"] == []
    assert ec2.describe_addresses(Filters=[{"Name": "allocation-id", "Values": [eip["AllocationId"]]}])[
        "Addresses"] == []
    # the other deployment is untouched
    failed, res = sweep(name="other")
    assert sorted(r["kind"] for r in res["resources"]) == ["disk", "firewall", "instance", "key_pair"]


def test_sweep_of_running_deployment(moto, ec2):
    create_instance()
    firewall(source_ranges=["198.51.100.7/32"])
    failed, res = sweep(state="absent")
    assert not failed, res["msg"]
    assert sorted(r["kind"] for r in res["resources"]) == ["disk", "firewall", "instance", "key_pair"]
    assert sweep()[1]["resources"] == []
    states = [i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert states == ["terminated"]


def test_proof_names_a_tagged_snapshot_it_does_not_delete(moto, ec2):
    inst = create_instance()
    ours = [{"Key": "sdcloud-managed", "Value": "true"}, {"Key": "sdcloud-deployment", "Value": "sd1"}]
    vol = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst["id"]]}])["Volumes"][0]
    # a backup policy copied the volume's tags to its snapshot; another deployment's snapshot must not show
    snap = ec2.create_snapshot(VolumeId=vol["VolumeId"], TagSpecifications=[{"ResourceType": "snapshot",
                                                                               "Tags": ours}])
    ec2.create_snapshot(VolumeId=vol["VolumeId"], TagSpecifications=[{"ResourceType": "snapshot", "Tags": [
        {"Key": "sdcloud-managed", "Value": "true"}, {"Key": "sdcloud-deployment", "Value": "other"}]}])
    failed, res = sweep()
    assert not failed, res["msg"]
    assert sorted((r["kind"], r["id"]) for r in res["resources"] if r["kind"] in ("snapshot", "instance")) == [
        ("instance", inst["id"]), ("snapshot", snap["SnapshotId"])]

    failed, res = sweep(check=True, state="absent")
    assert not failed and f"would leave, and fail on: snapshot {snap['SnapshotId']}" in res["msg"]
    failed, res = sweep(state="absent")
    assert failed
    assert res["msg"] == (
        f"teardown incomplete, 1 resource remains: snapshot {snap['SnapshotId']} in us-east-1 (labelled "
        "sdcloud-deployment=sd1, sdcloud-managed=true): sdcloud never creates a snapshot and does not delete one; "
        f"delete it (`aws ec2 delete-snapshot --snapshot-id {snap['SnapshotId']} --region us-east-1`), or remove its "
        "sdcloud-managed and sdcloud-deployment labels to keep it")
    assert [r["kind"] for r in res["remaining"]] == ["snapshot"]
    assert moto.requests("DeleteSnapshot") == []
    assert ec2.describe_instances(InstanceIds=[inst["id"]])["Reservations"][0]["Instances"][0]["State"][
        "Name"] == "terminated"  # everything sdcloud made went
    ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
    failed, res = sweep(state="absent")
    assert not failed and res["remaining"] == []
