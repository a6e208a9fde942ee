"""gpu_instance (provider gcp) end to end: the module's main() against the Compute Engine stand-in
(tests/standins/gce_server.py) through the real google-cloud-compute client."""

import pathlib
import sys

import pytest
from ansible.module_utils.sdcloud import base, errors

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import gce_server  # noqa: E402
import moto_faults  # noqa: E402  (only its generic load_module / run_module helpers)

gpu_instance = moto_faults.load_module("gpu_instance")

P = "proj-module"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"


@pytest.fixture
def gce(monkeypatch):
    monkeypatch.setattr(base, "POLL_INTERVAL", 0.02)
    monkeypatch.setattr(errors, "RETRY_BASE", 0.01)
    for var in ("SDCLOUD_GCP_ENDPOINT", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    with gce_server.GceStandin(accelerators={"us-central1-a": ["nvidia-l4"], "us-central1-b": ["nvidia-l4"]}) as s:
        yield s


def run(gce, check=False, diff=False, **over):
    args = {"provider": "gcp", "project": P, "endpoint": gce.url, "name": "sd1", "gpu": "nvidia-l4",
            "zones": ["us-central1-a", "us-central1-b"], "ssh_public_key": KEY, "wait_timeout": 30,
            "image_family": "ubuntu-os-cloud/ubuntu-2204-lts"}
    args.update(over)
    return moto_faults.run_module(gpu_instance.main, args, check=check, diff=diff)


def mutations(gce):
    return [r["api"] for r in gce.requests
            if r["method"] in ("POST", "PATCH", "DELETE") and not r["api"].endswith(".wait")]


def test_lifecycle_create_rerun_check_stop_start_absent(gce):
    failed, res = run(gce, diff=True)
    assert not failed, res["msg"]
    assert res["changed"] is True
    inst = res["instance"]
    assert inst["state"] == "running" and inst["public_ip"].startswith("203.0.113.")
    assert (inst["zone"], inst["machine_type"], inst["gpu"], inst["spot"]) == (
        "us-central1-a", "g2-standard-4", "nvidia-l4", True)
    assert [a["result"] for a in res["attempts"]] == ["created"]
    assert res["diff"] == {"before": {"state": "absent"}, "after": {
        "state": "running", "id": inst["id"], "zone": "us-central1-a", "machine_type": "g2-standard-4",
        "spot": True, "public_ip": inst["public_ip"]}}

    gce.requests.clear()
    failed, res = run(gce)  # re-run: nothing to do, nothing sent
    assert not failed and res["changed"] is False and res["instance"]["id"] == inst["id"]
    assert mutations(gce) == []

    failed, res = run(gce, check=True, state="stopped")
    assert not failed and res["changed"] is True and res["msg"].startswith("would stop")
    assert mutations(gce) == [] and gce.instances[(P, "us-central1-a", "sd1")]["status"] == "RUNNING"

    failed, res = run(gce, state="stopped")
    assert not failed and res["changed"] is True
    assert res["instance"]["state"] == "stopped" and res["instance"]["public_ip"] is None
    assert res["disk_monthly_cost"] == pytest.approx(10.0)  # 100 GB pd-balanced
    assert gce.instances[(P, "us-central1-a", "sd1")]["status"] == "TERMINATED"
    failed, res = run(gce, state="stopped")
    assert not failed and res["changed"] is False

    failed, res = run(gce, state="running")
    assert not failed and res["changed"] is True and res["instance"]["state"] == "running"
    assert res["instance"]["public_ip"]

    gce.requests.clear()
    failed, res = run(gce, check=True, state="absent")
    assert not failed and res["changed"] is True and mutations(gce) == []

    failed, res = run(gce, state="absent")
    assert not failed and res["changed"] is True
    assert res["deleted"] == [{"kind": "instance", "id": inst["id"]}]
    assert gce.instances == {} and gce.disks == {}
    failed, res = run(gce, state="absent")
    assert not failed and res["changed"] is False


@pytest.mark.parametrize("check", [True, False])
def test_create_check_mode_changes_nothing(gce, check):
    failed, res = run(gce, check=check)
    assert not failed, res["msg"]
    assert res["changed"] is True
    if check:
        assert mutations(gce) == [] and gce.instances == {}
        assert res["plan"]["zones"] == ["us-central1-a", "us-central1-b"]
        assert res["msg"] == "would create g2-standard-4 (nvidia-l4, spot) trying us-central1-a, us-central1-b"
    else:
        assert mutations(gce) == ["instances.insert"] and len(gce.instances) == 1


def test_failover_and_quota_failure_reported(gce):
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone="us-central1-a")
    failed, res = run(gce)
    assert not failed, res["msg"]
    assert [(a["zone"], a["result"]) for a in res["attempts"]] == [("us-central1-a", "failed"),
                                                                    ("us-central1-b", "created")]
    run(gce, state="absent")
    gce.clear_faults()
    gce.add_fault("insert", "QUOTA_EXCEEDED", region="us-central1")
    failed, res = run(gce, spot=False)
    assert failed
    assert "'NVIDIA_L4_GPUS'" in res["msg"] and "PREEMPTIBLE" not in res["msg"]
    assert f"iam-admin/quotas?project={P}" in res["msg"]
    assert [a["result"] for a in res["attempts"]] == ["failed", "skipped"]
    assert "Traceback" not in res["msg"]


NEW_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMi4EDuuQAk9KvzaZxqOiX77j9yp/VAEP6w3DPdpO5mB op@new-laptop"


def _ssh_keys(gce):
    items = gce.instances[(P, "us-central1-a", "sd1")]["metadata"]["items"]
    return next(i["value"] for i in items if i["key"] == "ssh-keys")


@pytest.mark.parametrize("stopped", [False, True])
def test_changed_key_is_authorized_on_the_existing_vm(gce, stopped):
    failed, res = run(gce)
    assert not failed, res["msg"]
    if stopped:
        assert not run(gce, state="stopped")[0]
    failed, res = run(gce, check=True, ssh_public_key=NEW_KEY)
    assert not failed and res["changed"] and "would authorize the current ssh_public_key" in res["msg"]
    assert _ssh_keys(gce) == f"ubuntu:{KEY}"
    failed, res = run(gce, ssh_public_key=NEW_KEY)
    assert not failed and res["changed"] is True, res["msg"]
    assert "authorized the current ssh_public_key for ubuntu" in res["msg"] and res["instance"]["state"] == "running"
    assert _ssh_keys(gce) == f"ubuntu:{NEW_KEY}"
    failed, res = run(gce, ssh_public_key=NEW_KEY)
    assert not failed and res["changed"] is False


def test_suspended_vm_is_reported_then_resumed(gce):
    assert not run(gce)[0]
    inst = gce.instances[(P, "us-central1-a", "sd1")]
    inst["status"] = "SUSPENDED"  # suspended from the console (the stand-in's suspend is exercised elsewhere)
    failed, res = run(gce, state="stopped")
    assert not failed and res["changed"] is False and res["instance"]["state"] == "suspended"
    assert "is suspended, not stopped: its memory is kept in storage and billed" in res["msg"]
    assert gce.requests_for("instances.stop") == []
    failed, res = run(gce)
    assert not failed and res["changed"] and res["msg"].startswith("resumed ")
    assert res["instance"]["state"] == "running" and len(gce.requests_for("instances.resume")) == 1
