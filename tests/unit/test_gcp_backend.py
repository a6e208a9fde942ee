"""The GCP backend (plugins/module_utils/sdcloud/gcp.py) against the Compute Engine stand-in,
through the real google-cloud-compute client."""

import pathlib
import sys
import time

import pytest
from ansible.module_utils.sdcloud import base, errors, gcp
from ansible.module_utils.sdcloud.base import FirewallSpec, InstanceSpec, SdcloudError

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import gce_server  # noqa: E402

P = "proj-backend"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"
ACCELS = {
    "us-central1-a": ["nvidia-l4", "nvidia-tesla-t4"],
    "us-central1-b": ["nvidia-l4", "nvidia-tesla-t4"],
    "us-central1-c": ["nvidia-l4"],
    "us-central1-f": [],
    "us-east1-b": ["nvidia-l4", "nvidia-tesla-t4"],
    "us-east1-c": ["nvidia-l4", "nvidia-tesla-t4"],
}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(base, "POLL_INTERVAL", 0.02)
    monkeypatch.setattr(errors, "RETRY_BASE", 0.01)


@pytest.fixture
def gce():
    with gce_server.GceStandin(accelerators=ACCELS) as server:
        yield server


@pytest.fixture
def backend(gce):
    return gcp.GcpBackend(P, zones=["us-central1-a"], endpoint=gce.url)


def spec(**over):
    base = {"name": "demo", "gpu": "nvidia-l4", "zones": ["us-central1-a", "us-central1-b"], "disk_size_gb": 200,
            "image_family": "ubuntu-os-cloud/ubuntu-2204-lts", "ssh_public_key": KEY, "labels": {"owner": "op"}}
    base.update(over)
    return InstanceSpec(**base)


def inserts(gce):
    return gce.requests_for("instances.insert")


def mutations(gce):
    return [r for r in gce.requests if r["method"] in ("POST", "PATCH", "DELETE") and not r["api"].endswith(".wait")]


def test_lifecycle_create_find_stop_start_delete(gce, backend):
    inst, attempts = backend.create_instance(spec(), wait_timeout=30)
    assert [(a.zone, a.result) for a in attempts] == [("us-central1-a", "created")]
    assert inst.state == "running" and inst.public_ip.startswith("203.0.113.") and inst.zone == "us-central1-a"
    assert inst.spot and inst.gpu == "nvidia-l4" and inst.machine_type == "g2-standard-4"
    assert inst.hourly_price == pytest.approx(0.28) and inst.ssh_user == "ubuntu" and inst.disk_size_gb == 200
    assert inst.labels == {"owner": "op", "sdcloud-managed": "true", "sdcloud-deployment": "demo"}
    assert inst.image.endswith("/projects/ubuntu-os-cloud/global/images/ubuntu-2204-jammy-v20251001")

    body = inserts(gce)[0]["body"]
    assert body["scheduling"] == {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                                  "onHostMaintenance": "TERMINATE", "automaticRestart": False}
    assert "guestAccelerators" not in body  # g2 carries its L4
    params = body["disks"][0]["initializeParams"]
    assert params["diskSizeGb"] == "200" and params["diskType"] == "zones/us-central1-a/diskTypes/pd-balanced"
    assert params["labels"] == inst.labels and body["disks"][0]["autoDelete"] is True
    assert {"key": "ssh-keys", "value": f"ubuntu:{KEY}"} in body["metadata"]["items"]
    assert body["tags"]["items"] == ["sdcloud-demo"]
    assert inserts(gce)[0]["query"]["requestId"]

    gce.requests.clear()
    found = backend.find_instance("demo")
    assert found.id == inst.id and found.state == "running"
    assert mutations(gce) == []  # finding is read-only: idempotent re-runs send no insert

    stopped = backend.stop_instance(found, wait_timeout=30)
    assert stopped.state == "stopped" and stopped.public_ip is None
    assert backend.find_instance("demo").state == "stopped"  # GCE TERMINATED is "stopped", and still found
    started = backend.start_instance(stopped, wait_timeout=30)
    assert started.state == "running" and started.public_ip
    backend.delete_instance(started, wait_timeout=30)
    assert backend.find_instance("demo") is None
    assert backend.list_resources("demo") == []  # the boot disk went with it


def test_on_demand_t4_attaches_accelerator(gce, backend):
    inst, _ = backend.create_instance(spec(gpu="nvidia-t4", spot=False), wait_timeout=30)
    body = inserts(gce)[0]["body"]
    assert body["machineType"] == "zones/us-central1-a/machineTypes/n1-standard-4"
    assert body["guestAccelerators"] == [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4",
                                          "acceleratorCount": 1}]
    assert body["scheduling"] == {"provisioningModel": "STANDARD", "onHostMaintenance": "TERMINATE",
                                  "automaticRestart": True}
    assert inst.gpu == "nvidia-t4" and inst.spot is False and inst.hourly_price == pytest.approx(0.54)


def test_zone_failover_reports_attempts(gce, backend):
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone="us-central1-a")
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", zone="us-central1-b", as_="http")
    gce.add_fault("insert", "UNSUPPORTED_OPERATION", zone="us-central1-c")
    zones = ["us-central1-a", "us-central1-b", "us-central1-c", "us-east1-b"]
    inst, attempts = backend.create_instance(spec(zones=zones), wait_timeout=30)
    assert inst.zone == "us-east1-b" and inst.region == "us-east1"
    assert [(a.zone, a.result, a.code, a.cloud_code) for a in attempts] == [
        ("us-central1-a", "failed", "NoCapacity", "ZONE_RESOURCE_POOL_EXHAUSTED"),
        ("us-central1-b", "failed", "NoCapacity", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"),
        ("us-central1-c", "failed", "NoCapacity", "UNSUPPORTED_OPERATION"),
        ("us-east1-b", "created", None, None),
    ]
    assert "does not have enough resources" in attempts[0].reason
    assert [r["zone"] for r in inserts(gce)] == zones
    # nothing left behind in the refused zones
    assert [(r.kind, r.location) for r in backend.list_resources()] == [("instance", "us-east1-b"),
                                                                         ("disk", "us-east1-b")]


def test_stockout_everywhere_fails_with_summary(gce, backend):
    for zone in ("us-central1-a", "us-central1-b"):
        gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone=zone)
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(), wait_timeout=30)
    assert "us-central1-a (spot): failed NoCapacity" in err.value.msg and "us-central1-b (spot): failed" in err.value.msg
    assert "spot_fallback: on-demand" in err.value.msg and "add more zones" in err.value.msg
    assert [a["result"] for a in err.value.details["attempts"]] == ["failed", "failed"]


def test_zone_without_the_gpu_is_skipped_without_insert(gce, backend):
    zones = ["us-central1-f", "us-central1-c", "us-central1-a"]
    inst, attempts = backend.create_instance(spec(gpu="nvidia-t4", zones=zones), wait_timeout=30)
    assert inst.zone == "us-central1-a"
    assert [(a.zone, a.result, a.code) for a in attempts] == [
        ("us-central1-f", "skipped", "NotOffered"), ("us-central1-c", "skipped", "NotOffered"),
        ("us-central1-a", "created", None)]
    assert "does not offer GPU nvidia-tesla-t4" in attempts[1].reason
    assert [r["zone"] for r in inserts(gce)] == ["us-central1-a"]
    # g2 (L4) where the zone has no L4: the machine type is missing there
    plan = backend.plan_create(spec(zones=["us-central1-f", "us-central1-c"]))
    assert plan["zones"] == ["us-central1-c"]
    assert "does not offer machine type g2-standard-4" in plan["zones_not_offering"]["us-central1-f"]


def test_no_zone_offers_the_gpu(gce, backend):
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(gpu="nvidia-t4", zones=["us-central1-f", "us-central1-c"]), wait_timeout=30)
    assert "none of the zones offers nvidia-tesla-t4" in err.value.msg
    assert err.value.details["code"] == "NotOffered"
    assert inserts(gce) == []


def test_quota_names_metric_region_and_fix(gce, backend):
    gce.add_fault("insert", "QUOTA_EXCEEDED", region="us-central1")
    zones = ["us-central1-a", "us-central1-b", "us-east1-b"]
    gce.add_fault("insert", "QUOTA_EXCEEDED", zone="us-east1-b", as_="http")
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(zones=zones), wait_timeout=30)
    msg = err.value.msg
    assert "PREEMPTIBLE_NVIDIA_L4_GPUS" in msg and "us-central1" in msg and "us-east1" in msg
    assert f"https://console.cloud.google.com/iam-admin/quotas?project={P}" in msg
    assert "gcloud quotas preferences create --service=compute.googleapis.com" in msg
    assert "--quota-id=PREEMPTIBLE-NVIDIA-L4-GPUS-per-project-region" in msg
    assert "--dimensions=region=us-central1" in msg
    attempts = err.value.details["attempts"]
    assert [(a["zone"], a["result"]) for a in attempts] == [
        ("us-central1-a", "failed"), ("us-central1-b", "skipped"), ("us-east1-b", "failed")]
    # regional quota: the region's other zones are not tried
    assert [(a["code"], a["cloud_code"]) for a in attempts] == [
        ("QuotaExceeded", "QUOTA_EXCEEDED"), ("QuotaExceeded", None), ("QuotaExceeded", "QUOTA_EXCEEDED")]
    assert attempts[1]["reason"] == "quota PREEMPTIBLE_NVIDIA_L4_GPUS exhausted in us-central1"
    assert [r["zone"] for r in inserts(gce)] == ["us-central1-a", "us-east1-b"]


def test_global_gpu_quota_stops_the_walk(gce, backend):
    gce.add_fault("insert", "QUOTA_EXCEEDED", quota_metric="GPUS_ALL_REGIONS")
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(zones=["us-central1-a", "us-east1-b"]), wait_timeout=30)
    assert "GPUS_ALL_REGIONS" in err.value.msg and "--quota-id=GPUS-ALL-REGIONS-per-project" in err.value.msg
    assert len(inserts(gce)) == 1


def test_spot_fallback_to_standard(gce, backend):
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone="us-central1-a", count=1)
    gce.add_fault("insert", "QUOTA_EXCEEDED", zone="us-central1-b", count=1)
    inst, attempts = backend.create_instance(spec(spot_fallback="on-demand"), wait_timeout=30)
    assert [(a.zone, a.spot, a.result) for a in attempts] == [
        ("us-central1-a", True, "failed"), ("us-central1-b", True, "failed"), ("us-central1-a", False, "created")]
    assert inst.spot is False and inst.hourly_price == pytest.approx(0.71)
    models = [r["body"]["scheduling"]["provisioningModel"] for r in inserts(gce)]
    assert models == ["SPOT", "SPOT", "STANDARD"]
    assert inserts(gce)[-1]["body"]["scheduling"]["automaticRestart"] is True


def test_sweep_leaves_nothing_after_half_failed_create(gce, backend):
    backend.create_firewall(FirewallSpec(name="demo", ports=[22, 8188], source_ranges=["198.51.100.7/32"]))
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone="us-central1-a", keep_disk=True)
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone="us-central1-b")
    with pytest.raises(SdcloudError):
        backend.create_instance(spec(), wait_timeout=30)
    assert gce.requests_for("disks.delete")  # the disk left by the refused insert was removed at once
    # a later run succeeds elsewhere; a labelled address exists too; another deployment must survive
    backend.create_instance(spec(zones=["us-east1-b"]), wait_timeout=30)
    backend.create_instance(spec(name="other", zones=["us-east1-c"]), wait_timeout=30)
    op = backend.gc.addresses.insert_unary(project=P, region="us-east1", address_resource={
        "name": "demo-ip", "labels": {"sdcloud-managed": "true", "sdcloud-deployment": "demo"}})
    backend.gc.region_operations.wait(project=P, region="us-east1", operation=op.name)
    # a rule that looks like ours by name but lacks the marker is not swept
    op = backend.gc.firewalls.insert_unary(project=P, firewall_resource={
        "name": "sdcloud-demo-extra", "allowed": [{"I_p_protocol": "tcp", "ports": ["80"]}]})
    backend.gc.global_operations.wait(project=P, operation=op.name)

    found = backend.list_resources("demo")
    assert sorted((r.kind, r.id) for r in found) == [
        ("address", "demo-ip"), ("disk", "demo"), ("firewall", "sdcloud-demo-ingress"), ("instance", "demo")]
    backend.delete_resources(found, wait_timeout=30)
    assert backend.list_resources("demo") == []
    assert [(r.kind, r.id) for r in backend.list_resources()] == [("instance", "other"), ("disk", "other")]
    assert ("proj-backend", "sdcloud-demo-extra") in gce.firewalls
    deletes = [r["api"] for r in gce.requests if r["method"] == "DELETE"]
    assert deletes.index("instances.delete") < deletes.index("firewalls.delete")


def test_firewall_create_update_delete(gce, backend):
    assert backend.get_firewall("demo") is None
    fw = backend.create_firewall(FirewallSpec(name="demo", ports=[8188, 22], source_ranges=["198.51.100.7/32"]))
    assert (fw.name, fw.ports, fw.source_ranges, fw.exact) == (
        "sdcloud-demo-ingress", [22, 8188], ["198.51.100.7/32"], True)
    assert fw.labels == {"sdcloud-managed": "true", "sdcloud-deployment": "demo"}
    body = gce.requests_for("firewalls.insert")[0]["body"]
    assert body["allowed"] == [{"IPProtocol": "tcp", "ports": ["22", "8188"]}]
    assert body["targetTags"] == ["sdcloud-demo"] and body["direction"] == "INGRESS"
    assert body["description"].startswith("sdcloud-managed=true sdcloud-deployment=demo")

    new = FirewallSpec(name="demo", ports=[22, 8188], source_ranges=["10.0.0.0/8", "9.9.9.9/32"])
    fw = backend.update_firewall(fw, new)
    assert fw.source_ranges == ["9.9.9.9/32", "10.0.0.0/8"]  # address order, as cloud_firewall compares them
    assert gce.requests_for("firewalls.patch")[0]["body"]["sourceRanges"] == ["9.9.9.9/32", "10.0.0.0/8"]
    assert fw.exact and fw.ports == [22, 8188]
    backend.delete_firewall(fw)
    assert backend.get_firewall("demo") is None


def test_foreign_rule_with_our_name_is_refused(gce, backend):
    op = backend.gc.firewalls.insert_unary(project=P, firewall_resource={
        "name": "sdcloud-demo-ingress", "allowed": [{"I_p_protocol": "tcp", "ports": ["22"]}], "description": "mine"})
    backend.gc.global_operations.wait(project=P, operation=op.name)
    with pytest.raises(SdcloudError) as err:
        backend.get_firewall("demo")
    assert "was not made by sdcloud" in err.value.msg


def test_terminated_and_stopping_listed_with_state(gce, backend):
    backend.create_instance(spec(), wait_timeout=30)
    backend.create_instance(spec(name="two", zones=["us-central1-b"]), wait_timeout=30)
    gce.preempt(P, "us-central1-a", "demo")  # a spot preemption: TERMINATED, disk kept
    gce.op_polls = 99  # the stop below stays in progress
    backend.gc.instances.stop_unary(project=P, zone="us-central1-b", instance="two")
    everywhere = gcp.GcpBackend(P, endpoint=gce.url)  # as the inventory builds it: no zones, every zone
    states = {i.name: i.state for i in everywhere.list_instances()}
    assert states == {"demo": "stopped", "two": "stopping"}
    assert [i.name for i in gcp.GcpBackend(P, zones=["us-central1-b"], endpoint=gce.url).list_instances()] == ["two"]
    assert [i.name for i in everywhere.list_instances(deployment="demo")] == ["demo"]


def test_set_labels_uses_fingerprint(gce, backend):
    inst, _ = backend.create_instance(spec(), wait_timeout=30)
    updated = backend.set_labels(inst, {"owner": "someone-else"}, wait_timeout=30)
    assert updated.labels == {"owner": "someone-else", "sdcloud-managed": "true", "sdcloud-deployment": "demo"}
    sent = gce.requests_for("instances.setLabels")[0]["body"]
    assert sent["labelFingerprint"] and sent["labels"]["sdcloud-deployment"] == "demo"
    gce.requests.clear()
    backend.set_labels(updated, {"owner": "someone-else"}, wait_timeout=30)
    assert gce.requests_for("instances.setLabels") == []  # already equal: no call


def test_image_resolution_and_plan_is_read_only(gce, backend):
    plan = backend.plan_create(spec(image_family="ubuntu-2404-lts-amd64"))
    assert plan["image"].endswith("/ubuntu-os-cloud/global/images/ubuntu-2404-noble-amd64-v20251001")
    assert plan["zones"] == ["us-central1-a", "us-central1-b"] and plan["machine_type"] == "g2-standard-4"
    fam = "deeplearning-platform-release/common-cu128-ubuntu-2204-nvidia-570"
    assert "common-cu128-ubuntu-2204-nvidia-570-v" in backend.plan_create(spec(image_family=fam))["image"]
    # an alias in `image` (as group_vars' sdcloud_image documents it) is the newest image of its family
    plan = backend.plan_create(spec(image="ubuntu-22.04", image_family=None))
    assert plan["image"].endswith("/ubuntu-os-cloud/global/images/ubuntu-2204-jammy-v20251001")
    assert plan["image_name"] == "ubuntu-2204-jammy-v20251001"
    assert mutations(gce) == []
    with pytest.raises(SdcloudError) as err:
        backend.plan_create(spec(image_family="debian-cloud/debian-99"))
    assert "image family 'debian-99' not found in project 'debian-cloud'" in err.value.msg


def test_bounded_wait_says_what_it_waited_for(gce, backend):
    gce.stuck_operations, gce.wait_max_seconds = True, 0.1
    start = time.monotonic()
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(), wait_timeout=1)
    assert time.monotonic() - start < 5
    assert "timed out after 1s waiting for creating spot instance demo (g2-standard-4)" in err.value.msg
    assert err.value.details["code"] == "Timeout"


@pytest.mark.parametrize(("code", "expect"), [
    ("UNAUTHENTICATED", "gcloud auth application-default login"),
    ("SERVICE_DISABLED", "gcloud services enable compute.googleapis.com --project proj-backend"),
    ("PERMISSION_DENIED", "roles/compute.instanceAdmin.v1"),
])
def test_api_errors_name_the_fix(gce, backend, code, expect):
    gce.add_fault("instances.aggregatedList", code, as_="http")
    with pytest.raises(SdcloudError) as err:
        backend.find_instance("demo")
    assert expect in err.value.msg and "Traceback" not in err.value.msg


def test_unknown_project_and_rate_limit_retry(gce, backend):
    gce.projects = {"someone-else"}
    with pytest.raises(SdcloudError) as err:
        backend.list_instances()
    assert "GCP project 'proj-backend' does not exist" in err.value.msg
    gce.projects = None
    gce.add_fault("instances.aggregatedList", "RATE_LIMIT_EXCEEDED", as_="http", count=2)
    assert backend.list_instances() == []  # retried past two throttled answers
    assert len(gce.requests_for("instances.aggregatedList")) == 4


def test_missing_credentials_message(monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    monkeypatch.delenv("SDCLOUD_GCP_ENDPOINT", raising=False)
    backend = gcp.GcpBackend(P, zones=["us-central1-a"])
    with pytest.raises(SdcloudError) as err:
        backend.find_instance("demo")
    assert "gcloud auth application-default login" in err.value.msg


def test_unreachable_endpoint_message():
    backend = gcp.GcpBackend(P, zones=["us-central1-a"], endpoint="http://127.0.0.1:9")
    with pytest.raises(SdcloudError) as err:
        backend.find_instance("demo")
    assert err.value.msg.startswith("cannot reach the Compute Engine API while listing instances")
    assert "SDCLOUD_GCP_ENDPOINT" in err.value.msg


def _host_key(seed: bytes) -> str:
    """A well-formed ssh-ed25519 public key blob (SSH wire format, base64) from 32 bytes."""
    import base64

    t = b"ssh-ed25519"
    return base64.b64encode(len(t).to_bytes(4, "big") + t + (32).to_bytes(4, "big") + seed).decode()


def test_host_keys_from_guest_attributes(gce, backend):
    inst, _ = backend.create_instance(spec(), wait_timeout=30)
    body = inserts(gce)[-1]["body"]
    assert {"key": "enable-guest-attributes", "value": "TRUE"} in body["metadata"]["items"]
    # nothing published yet (the guest is still booting): [] after the timeout, without raising
    t0 = time.monotonic()
    assert backend.host_keys(inst, timeout=0.2) == []
    assert time.monotonic() - t0 >= 0.2
    ed, wrong = _host_key(b"k" * 32), _host_key(b"w" * 32)
    gce.set_guest_attributes(P, inst.zone, inst.name, {
        "hostkeys/ssh-ed25519": ed + "\n",
        "hostkeys/ssh-rsa": wrong,  # an ed25519 blob labelled rsa: never pinned
        "hostkeys/ecdsa-sha2-nistp256": "not base64!",
        "guest-agent/version": "20250101.00"})  # another namespace
    assert backend.host_keys(inst, timeout=5) == [f"ssh-ed25519 {ed}"]
    asked = gce.requests_for("instances.getGuestAttributes")[-1]
    assert asked["method"] == "GET" and asked["query"]["queryPath"] == "hostkeys/"


def test_host_keys_wait_for_the_guest(gce, backend):
    import threading

    inst, _ = backend.create_instance(spec(), wait_timeout=30)
    key = _host_key(b"a" * 32)
    threading.Timer(0.3, gce.set_guest_attributes, (P, inst.zone, inst.name, {"hostkeys/ssh-ed25519": key})).start()
    assert backend.host_keys(inst, timeout=10) == [f"ssh-ed25519 {key}"]


# --- API behaviours (issue 11): retries with the requestId, states on the way, preemption, keys, the proof ---


def test_insert_503_is_resent_with_the_same_request_id(gce, backend):
    # a 503 before anything is done, then one after the server took the insert (its answer was lost)
    gce.add_fault("insert", "BACKEND_ERROR", zone="us-central1-a", as_="http", count=1)
    gce.add_fault("insert", "BACKEND_ERROR", zone="us-central1-a", as_="http", count=1, after_create=True)
    inst, attempts = backend.create_instance(spec(), wait_timeout=30)
    assert [(a.zone, a.result) for a in attempts] == [("us-central1-a", "created")] and inst.state == "running"
    ids = [r["query"]["requestId"] for r in inserts(gce)]
    assert len(ids) == 3 and len(set(ids)) == 1  # one request, sent three times: one instance
    assert [r["status"] for r in inserts(gce)] == [503, 503, 200]
    assert [r.id for r in backend.list_resources("demo") if r.kind == "instance"] == ["demo"]


def test_insert_operation_internal_error_is_retried(gce, backend):
    gce.add_fault("insert", "INTERNAL_ERROR", zone="us-central1-a", count=2, keep_disk=True)
    inst, attempts = backend.create_instance(spec(), wait_timeout=30)
    assert inst.zone == "us-central1-a" and [a.result for a in attempts] == ["created"]
    assert len(inserts(gce)) == 3 and len(gce.requests_for("disks.delete")) == 2  # what each failure left went
    ids = [r["query"]["requestId"] for r in inserts(gce)]
    assert len(set(ids)) == 3  # a finished (failed) request is not re-sent under its id: it would answer the failure


def test_insert_backend_error_retries_end_at_the_deadline(gce, backend):
    gce.add_fault("insert", "BACKEND_ERROR", as_="http")
    start = time.monotonic()
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(), wait_timeout=1)
    assert time.monotonic() - start < 5 and len(inserts(gce)) > 2
    assert "Compute Engine had an internal error: re-run in a few minutes" in err.value.msg


@pytest.mark.parametrize("status", ["PENDING_STOP", "DEPROVISIONING"])
def test_present_waits_for_a_stop_in_progress_before_start(gce, backend, status):
    import threading

    backend.create_instance(spec(), wait_timeout=30)
    inst = gce.instances[(P, "us-central1-a", "demo")]
    inst["status"] = status
    found = backend.find_instance("demo")
    assert found.state == "stopping"
    threading.Timer(0.3, lambda: (gce.lock.acquire(), gce._to_terminated(inst), gce.lock.release())).start()
    started = backend.start_instance(found, wait_timeout=10)
    assert started.state == "running"
    assert [r["status"] for r in gce.requests_for("instances.start")] == [200]  # sent once, after TERMINATED


def test_suspended_is_resumed_not_started(gce, backend):
    backend.create_instance(spec(), wait_timeout=30)
    op = backend.gc.instances.suspend_unary(project=P, zone="us-central1-a", instance="demo")
    assert gce.instances[(P, "us-central1-a", "demo")]["status"] == "SUSPENDING"
    found = backend.find_instance("demo")
    assert found.state == "suspended"  # not "stopped": its memory is kept, and billed
    backend.gc.zone_operations.wait(project=P, zone="us-central1-a", operation=op.name)
    assert backend.stop_instance(found, wait_timeout=5).state == "suspended"
    assert gce.requests_for("instances.stop") == []
    started = backend.start_instance(found, wait_timeout=10)
    assert started.state == "running" and started.public_ip
    assert gce.requests_for("instances.start") == [] and len(gce.requests_for("instances.resume")) == 1


def test_spot_preempted_during_the_create_wait_moves_on(gce, backend):
    gce.preempt_on_create["us-central1-a"] = 1
    start = time.monotonic()
    inst, attempts = backend.create_instance(spec(), wait_timeout=30)
    assert time.monotonic() - start < 10
    assert inst.zone == "us-central1-b" and inst.state == "running"
    assert [(a.zone, a.result, a.code) for a in attempts] == [
        ("us-central1-a", "failed", "Preempted"), ("us-central1-b", "created", None)]
    assert "preempted" in attempts[0].reason and attempts[0].cloud_code == "compute.instances.preempted"
    assert [(r.kind, r.location) for r in backend.list_resources("demo")] == [
        ("instance", "us-central1-b"), ("disk", "us-central1-b")]  # the reclaimed one was deleted


def test_spot_preempted_everywhere_fails_naming_it(gce, backend):
    gce.preempt_on_create.update({"us-central1-a": 1, "us-central1-b": 1})
    with pytest.raises(SdcloudError) as err:
        backend.create_instance(spec(), wait_timeout=30)
    assert "us-central1-a (spot): failed Preempted" in err.value.msg and "spot_fallback: on-demand" in err.value.msg
    assert err.value.details["code"] == "Preempted" and backend.list_resources("demo") == []


def test_changed_ssh_key_updates_the_metadata(gce, backend):
    inst, _ = backend.create_instance(spec(), wait_timeout=30)
    new = KEY.replace("AAAAIBmQ", "AAAAINEW") + "-new"
    assert backend.ensure_ssh_key(inst, "ubuntu", KEY, 30) is False  # the same key: no call
    assert gce.requests_for("instances.setMetadata") == []
    assert backend.ensure_ssh_key(inst, "ubuntu", new, 30, check=True) is True
    assert gce.requests_for("instances.setMetadata") == []
    gce.instances[(P, "us-central1-a", "demo")]["metadata"]["items"][-1]["value"] += "\nalice:ssh-ed25519 AAAA alice"
    assert backend.ensure_ssh_key(inst, "ubuntu", new, 30) is True
    sent = gce.requests_for("instances.setMetadata")[0]["body"]
    assert sent["fingerprint"]
    items = {i["key"]: i["value"] for i in gce.instances[(P, "us-central1-a", "demo")]["metadata"]["items"]}
    assert items["ssh-keys"] == f"ubuntu:{new}\nalice:ssh-ed25519 AAAA alice"  # the old key goes, others stay
    assert items["enable-guest-attributes"] == "TRUE" and items["sdcloud-image"]


def test_proof_lists_every_labelled_kind(gce, backend):
    labels = {"sdcloud-managed": "true", "sdcloud-deployment": "demo"}
    backend.create_instance(spec(), wait_timeout=30)
    for coll, name in (("snapshots", "demo-backup"), ("addresses", "demo-global-ip"), ("images", "demo-image")):
        gce.global_insert(P, coll, {"name": name, "labels": labels})["_on_done"]()
    gce.global_insert(P, "snapshots", {"name": "other-backup", "labels": dict(labels, **{
        "sdcloud-deployment": "other"})})["_on_done"]()
    found = backend.list_resources("demo")
    assert sorted((r.kind, r.id, r.location) for r in found) == [
        ("address", "demo-global-ip", "global"), ("disk", "demo", "us-central1-a"), ("image", "demo-image", "global"),
        ("instance", "demo", "us-central1-a"), ("snapshot", "demo-backup", "global")]
    backend.delete_resources(found, wait_timeout=30)
    # the address sdcloud may make is deleted; a snapshot or image is the user's: kept, and still listed
    assert sorted((r.kind, r.id) for r in backend.list_resources("demo")) == [
        ("image", "demo-image"), ("snapshot", "demo-backup")]
    snap = next(r for r in found if r.kind == "snapshot")
    assert backend.delete_hint(snap) == f"delete it (`gcloud compute snapshots delete demo-backup --project {P}`)"
