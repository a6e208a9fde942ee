"""AWS backend pieces: zones/regions, image resolution, inventory listing, retry and error mapping."""

import pathlib
import sys

import botocore.exceptions
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import moto_faults  # noqa: E402
from ansible.module_utils.sdcloud import aws, errors  # noqa: E402
from ansible.module_utils.sdcloud.base import Deadline, InstanceSpec, SdcloudError  # noqa: E402

gpu_instance = moto_faults.load_module("gpu_instance")


@pytest.fixture
def moto(monkeypatch):
    return moto_faults.prepare_aws(monkeypatch)


@pytest.mark.parametrize(("value", "region", "is_region"), [
    ("us-east-1", "us-east-1", True), ("us-east-1b", "us-east-1", False), ("eu-central-1a", "eu-central-1", False),
    ("us-gov-west-1a", "us-gov-west-1", False), ("us-west-2-lax-1a", "us-west-2", False),
])
def test_region_of(value, region, is_region):
    assert aws.region_of(value) == region and aws.is_region(value) is is_region


def test_bad_zone_names_the_fix():
    with pytest.raises(SdcloudError, match="neither an AWS region"):
        aws.region_of("us-central1-a")


@pytest.mark.parametrize(("image", "expected"), [
    (None, "ami-0b6c3d8e4f0a20132"),  # newest DLAMI 22.04 x86_64 (the newer ARM64 one is ignored)
    ("dlami-ubuntu-24.04", "ami-0d8e5f0a6b2c40354"),
    ("ubuntu-22.04", "ami-0f0a7b2c8d4e60576"),  # newest amd64 jammy, not the arm64 build
    ("ubuntu-24.04", "ami-03c4d5e6f7a8b92a3"),
    ("ami-01a2b3c4d5e6f7081", "ami-01a2b3c4d5e6f7081"),
    ("ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-2025022*", "ami-01a2b3c4d5e6f7081"),
])
def test_image_resolution(moto, image, expected):
    backend = aws.AwsBackend(["us-east-1"])
    spec = InstanceSpec(name="x", gpu="nvidia-t4", zones=["us-east-1"], image=image)
    assert backend.resolve_image("us-east-1", spec)["ImageId"] == expected


def test_missing_image_names_the_fix(moto):
    backend = aws.AwsBackend(["us-east-1"])
    with pytest.raises(SdcloudError, match="aliases dlami-ubuntu-22.04"):
        backend.resolve_image("us-east-1", InstanceSpec(name="x", gpu="nvidia-t4", zones=[], image="nope-*"))
    with pytest.raises(SdcloudError, match="AMI ids are per region"):
        backend.resolve_image("us-east-1", InstanceSpec(name="x", gpu="nvidia-t4", zones=[], image="ami-0123abcd"))


def test_list_instances_for_inventory(moto):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"
    for name, zone in (("a", "us-east-1a"), ("b", "us-west-2a")):
        failed, res = moto_faults.run_module(gpu_instance.main, {
            "provider": "aws", "name": name, "gpu": "nvidia-l4", "zones": [zone], "ssh_public_key": key,
            "wait_timeout": 30})
        assert not failed, res["msg"]
    moto_faults.run_module(gpu_instance.main, {"provider": "aws", "name": "b", "zones": ["us-west-2"],
                                               "state": "stopped", "wait_timeout": 30})
    # as the inventory builds it: the regions to list as `zones`
    found = aws.AwsBackend(["us-east-1", "us-west-2"]).list_instances()
    assert sorted((i.name, i.state, i.region, i.gpu, i.ssh_user) for i in found) == [
        ("a", "running", "us-east-1", "nvidia-l4", "ubuntu"), ("b", "stopped", "us-west-2", "nvidia-l4", "ubuntu")]
    west = aws.AwsBackend(["us-west-2"])
    assert [i.name for i in west.list_instances(deployment="b")] == ["b"]
    assert west.list_instances(deployment="a") == []


def test_retry_backs_off_only_on_throttling():
    calls, sleeps = [], []

    def throttled_twice():
        calls.append(1)
        if len(calls) < 3:
            raise botocore.exceptions.ClientError({"Error": {"Code": "Throttling", "Message": "slow"}}, "X")
        return "ok"

    assert errors.retry(throttled_twice, sleep=sleeps.append, base=1, cap=4) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2

    def capacity():
        raise botocore.exceptions.ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message": "x"}}, "X")

    with pytest.raises(botocore.exceptions.ClientError):
        errors.retry(capacity, sleep=sleeps.append)
    assert len(sleeps) == 2


def test_error_mapping_names_fixes():
    err = errors.aws_error(botocore.exceptions.NoCredentialsError(), "listing instances")
    assert "aws configure" in err.msg
    ce = botocore.exceptions.ClientError({"Error": {"Code": "AuthFailure", "Message": "bad"}}, "DescribeInstances")
    assert "aws sts get-caller-identity" in errors.aws_error(ce, "x", "us-east-1").msg
    ce = botocore.exceptions.ClientError({"Error": {"Code": "InvalidAMIID.NotFound", "Message": "?"}}, "RunInstances")
    assert "name filter" in errors.aws_error(ce, "x").msg


def test_timeout_says_what_it_waited_for(moto, monkeypatch):
    backend = aws.AwsBackend(["us-east-1a"])
    inst, _ = backend.create_instance(InstanceSpec(name="w", gpu="nvidia-t4", zones=["us-east-1a"]), 30)
    with pytest.raises(SdcloudError) as err:
        backend.wait_for_state(inst, "stopped", Deadline(0))
    assert f"timed out after 0s waiting for instance w ({inst.id}) in us-east-1a to be stopped (it is running)" \
        in err.value.msg
    assert "remove it with state: absent" in err.value.msg and err.value.details["code"] == "Timeout"


def _blob(key_type: str, seed: bytes) -> str:
    import base64

    t = key_type.encode()
    return base64.b64encode(len(t).to_bytes(4, "big") + t + (len(seed)).to_bytes(4, "big") + seed).decode()


ED, ECDSA = _blob("ssh-ed25519", b"e" * 32), _blob("ecdsa-sha2-nistp256", b"c" * 65)
CONSOLE = f"""[   11.2] cloud-init[812]: Cloud-init v. 24.1 running 'modules:final'
ec2: #############################################################
ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 SHA256:abc root@ip-10-0-0-1 (ECDSA)
ec2: -----END SSH HOST KEY FINGERPRINTS-----
-----BEGIN SSH HOST KEY KEYS-----
ecdsa-sha2-nistp256 {ECDSA} root@ip-10-0-0-1
[   12.0] ssh-ed25519 {ED} root@ip-10-0-0-1
ssh-rsa {ED} root@ip-10-0-0-1
-----END SSH HOST KEY KEYS-----
"""


def test_console_host_keys_parses_the_cloud_init_block():
    # prefixes are skipped; an ed25519 blob labelled ssh-rsa is not a key; the last boot's block wins
    assert aws.console_host_keys(CONSOLE) == sorted([f"ecdsa-sha2-nistp256 {ECDSA}", f"ssh-ed25519 {ED}"])
    older = CONSOLE.replace(ED, _blob("ssh-ed25519", b"o" * 32))
    assert aws.console_host_keys(older + CONSOLE) == aws.console_host_keys(CONSOLE)
    assert aws.console_host_keys("no keys here") == [] and aws.console_host_keys("") == []


def _running(name, gpu):
    failed, res = moto_faults.run_module(gpu_instance.main, {
        "provider": "aws", "name": name, "gpu": gpu, "zones": ["us-east-1"], "wait_timeout": 30})
    assert not failed, res["msg"]
    backend = aws.AwsBackend(["us-east-1"])
    return backend, backend.find_instance(name)


def test_host_keys_from_the_console_output(moto):
    backend, inst = _running("hk", "nvidia-l4")
    assert backend.host_keys(inst, timeout=0.1) == []  # moto's sample console holds no keys
    moto.console_output(inst.id, CONSOLE)
    assert backend.host_keys(inst, timeout=5) == sorted([f"ecdsa-sha2-nistp256 {ECDSA}", f"ssh-ed25519 {ED}"])
    failed, res = moto_faults.run_module(gpu_instance.main, {
        "provider": "aws", "name": "hk", "zones": ["us-east-1"], "wait_timeout": 30, "host_keys_timeout": 5})
    assert not failed and res["host_key_alias"] == f"sdcloud-aws-{inst.id.replace('-', '_')}"
    assert res["host_keys"] == sorted([f"ecdsa-sha2-nistp256 {ECDSA}", f"ssh-ed25519 {ED}"])


def test_host_keys_not_nitro_and_no_permission(moto):
    backend, inst = _running("hk2", "nvidia-t4")
    moto.console_output(inst.id, CONSOLE)
    # Latest=true refused (a Xen type): the buffered output is read instead
    moto.fault("GetConsoleOutput", "UnsupportedOperation", count=1, message="Latest is not supported for this instance type")
    assert backend.host_keys(inst, timeout=5) == sorted([f"ecdsa-sha2-nistp256 {ECDSA}", f"ssh-ed25519 {ED}"])
    calls = moto.requests("GetConsoleOutput")
    assert [c["faulted"] for c in calls[-2:]] == ["UnsupportedOperation", None]
    # no ec2:GetConsoleOutput permission: no keys (the module warns, the first connection trusts the key)
    moto.fault("GetConsoleOutput", "UnauthorizedOperation", message="You are not authorized to perform this operation.")
    assert backend.host_keys(inst, timeout=5) == []
