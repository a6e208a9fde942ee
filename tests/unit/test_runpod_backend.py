"""The runpod provider end to end through the modules' main(), against the RunPod REST API v2 stand-in
(tests/standins/runpod_server.py): create (spot asked -> one warning, on-demand), every fault and its
message, stop/start picking up a new address and port, delete and the listing that proves it."""

import pytest
from podtest import API_KEY, KEY, fast, runner  # noqa: F401 - fast is a fixture
from runpod_server import DATA_CENTERS, RunpodStandin

SLOTS = ["10.10.0.5:22", "10.10.0.6:2201", "10.10.0.7:2202"]


@pytest.fixture
def rp(fast):  # noqa: F811 - the fixture above
    with RunpodStandin(slots=SLOTS, api_key=API_KEY) as standin:
        yield standin


@pytest.fixture
def run(rp):
    return runner("runpod", rp.url, gpu="nvidia-rtx-4090", ports=[8188], ssh_public_key=KEY, wait_timeout=10)


def creates(rp):
    return rp.requests_for("POST", "/v2/pods")


def test_create_says_once_that_runpod_has_no_spot_and_maps_ssh_and_the_ui(rp, run):
    failed, res = run(spot=True, zones=["EU-RO-1"])
    assert not failed, res["msg"]
    assert res["warnings"] == ["runpod has no spot capacity: creating an on-demand pod at the on-demand price "
                               "(set spot: false to silence this)"]
    inst = res["instance"]
    assert (inst["spot"], inst["state"], inst["zone"]) == (False, "running", "EU-RO-1")
    assert (inst["public_ip"], inst["ssh_port"], inst["ssh_user"]) == ("10.10.0.5", 22, "root")
    assert inst["ports"]["8188"]["url"] == f"https://{inst['id']}-8188.proxy.runpod.net"
    assert inst["hourly_price"] == 0.44  # the pod's own `cost`, not the catalog snapshot
    assert inst["labels"] == {"sdcloud-managed": "true", "sdcloud-deployment": "sd"}
    [attempt] = res["attempts"]
    assert (attempt["zone"], attempt["spot"], attempt["result"]) == ("EU-RO-1", False, "created")
    body = creates(rp)[0]["body"]
    assert body == {"name": "sdcloud:sd", "image": "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
                    "gpu": {"id": "NVIDIA GeForce RTX 4090", "count": 1}, "cloud": "SECURE", "disk": 20,
                    "mounts": {"persistent": {"size": 100, "path": "/workspace"}}, "ports": ["22/tcp", "8188/http"],
                    "env": {"PUBLIC_KEY": KEY}, "startSsh": True, "dataCenterIds": ["EU-RO-1"]}
    failed, again = run(spot=False)
    assert not failed and not again["changed"] and again["instance"]["id"] == inst["id"]
    assert "warnings" not in again and len(creates(rp)) == 1


def test_the_start_hook_is_the_pod_s_docker_start_command(rp, run):
    failed, res = run(spot=False, start_command="bash -c '/workspace/hook.sh; exec /start.sh'")
    assert not failed, res["msg"]
    assert creates(rp)[0]["body"]["args"] == "bash -c '/workspace/hook.sh; exec /start.sh'"
    assert rp.pods[res["instance"]["id"]]["args"] == "bash -c '/workspace/hook.sh; exec /start.sh'"


def test_check_mode_plans_and_creates_nothing(rp, run):
    failed, res = run(check=True, spot=False, zones=["US-KS-2", "any"])
    assert not failed and res["changed"]
    assert res["plan"]["zones"] == ["US-KS-2", "any"] and res["plan"]["machine_type"] == "NVIDIA GeForce RTX 4090"
    assert res["plan"]["hourly_price"] == 0.59 and creates(rp) == []


def test_a_data_center_without_the_gpu_is_skipped_and_a_stockout_moves_on(fast):  # noqa: F811
    with RunpodStandin(slots=SLOTS, api_key=API_KEY, stock={"NVIDIA GeForce RTX 4090": ["US-KS-2", "CA-MTL-1"]}) as rp:
        rp.add_fault("create", "no_capacity", zone="US-KS-2")
        run = runner("runpod", rp.url, gpu="nvidia-rtx-4090", ssh_public_key=KEY, spot=False, wait_timeout=10)
        failed, res = run(zones=["EU-RO-1", "US-KS-2", "CA-MTL-1"])
        assert not failed, res["msg"]
        assert [(a["zone"], a["result"], a["code"]) for a in res["attempts"]] == [
            ("EU-RO-1", "skipped", "NotOffered"), ("US-KS-2", "failed", "NoCapacity"), ("CA-MTL-1", "created", None)]
        assert "EU-RO-1 does not offer NVIDIA GeForce RTX 4090" in res["attempts"][0]["reason"]
        assert res["attempts"][1]["reason"].startswith("There are no longer any instances available")
        assert [r["body"]["dataCenterIds"] for r in creates(rp)] == [["US-KS-2"], ["CA-MTL-1"]]
        rp.add_fault("create", "no_capacity")
        failed, res = run(name="sd2", zones=["CA-MTL-1"])
        assert failed and res["code"] == "NoCapacity"
        assert res["msg"].startswith("could not create nvidia-rtx-4090 (NVIDIA GeForce RTX 4090) for deployment 'sd2'")


def test_no_balance_stops_the_walk_and_names_the_billing_page(rp, run):
    rp.add_fault("create", "no_balance")
    failed, res = run(spot=False, zones=["US-KS-2", "EU-RO-1"])
    assert failed and res["code"] == "InsufficientBalance"
    assert "insufficient balance" in res["msg"] and "https://www.console.runpod.io/user/billing" in res["msg"]
    assert len(creates(rp)) == 1  # no other data center was asked: none would succeed


def test_rate_limits_are_retried_then_the_message_says_wait(rp, run):
    rp.add_fault("any", "rate_limit", count=2)
    failed, res = run(spot=False)
    assert not failed, res["msg"]
    rp.add_fault("any", "rate_limit")
    failed, res = run(state="stopped")
    assert failed and res["code"] == "RateLimited"
    assert "rate-limited the API" in res["msg"] and "wait a minute and re-run" in res["msg"]


def test_stop_keeps_the_volume_and_start_gets_a_new_address_and_port(rp, run):
    run(spot=False)
    failed, res = run(state="stopped")
    assert not failed and res["changed"] and res["instance"]["state"] == "stopped"
    assert res["disk_monthly_cost"] == 20.0  # 100 GB at $0.20/GB-month while stopped
    assert "the 100 GB disk still costs about $20.00/month" in res["msg"]
    assert res["instance"]["public_ip"] is None and res["instance"]["ssh_port"] is None
    failed, res = run(state="running")
    assert not failed and res["changed"]
    assert (res["instance"]["public_ip"], res["instance"]["ssh_port"]) == ("10.10.0.6", 2201)


def test_a_start_whose_gpu_was_taken_says_what_to_do(rp, run):
    run(spot=False)
    run(state="stopped")
    rp.add_fault("start", "gpu_gone")
    failed, res = run(state="running")
    assert failed and res["code"] == "GpuUnavailable"
    assert "There are not enough free GPUs on the host machine to start this pod." in res["msg"]
    assert "delete it (state: absent" in res["msg"] and "Re-run later" in res["msg"]


def test_delete_then_the_sweep_proves_nothing_is_left(rp, run):
    run(spot=False)
    run(name="other", spot=False)
    failed, listed = run(module="cloud_resources", name=None)
    assert not failed and {r["name"] for r in listed["resources"]} == {"sd", "other"}, listed
    failed, res = run(state="absent")
    assert not failed and res["changed"] and res["deleted"][0]["kind"] == "instance"
    failed, res = run(module="cloud_resources", name="other", state="absent")
    assert not failed and res["remaining"] == [] and res["count"] == 1
    assert rp.pods == {}
    failed, res = run(state="absent")
    assert not failed and not res["changed"]


def test_pods_of_others_are_not_sdcloud_s(rp, run):
    rp.pods["mine"] = {"id": "mine", "name": "my-own-pod", "status": "RUNNING", "gpu": {"id": "NVIDIA L4"},
                       "ports": [], "mounts": {}, "ssh": {}, "cost": 0.4}
    failed, res = run(module="cloud_resources", name=None)
    assert not failed and res["resources"] == []


def test_keys_missing_or_refused_name_the_setting_and_never_the_key(rp, run, monkeypatch):
    failed, res = run(api_key=None)
    assert failed and res["code"] == "NoCredentials" and "export RUNPOD_API_KEY" in res["msg"]
    failed, res = run(api_key="wrong-key-123")
    assert failed and res["code"] == "Unauthorized" and "set RUNPOD_API_KEY" in res["msg"]
    assert "wrong-key-123" not in str(res)
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    failed, res = run(api_key=None, spot=False)
    assert not failed, res["msg"]


def test_the_firewall_module_says_pods_have_none(run):
    failed, res = run(module="cloud_firewall", source_ranges=["203.0.113.7/32"])
    assert not failed and not res["changed"] and res["supported"] is False and res["firewall"] is None
    assert res["msg"].startswith("runpod pods have no cloud firewall")


def test_the_stand_in_refuses_what_the_schema_refuses(rp):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(rp.url + "/v2/pods", data=json.dumps({"name": "x", "image": "i", "bogus": 1}).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {API_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 422 and "additional properties 'bogus' not allowed" in err.value.read().decode()
    assert set(DATA_CENTERS) == {"US-KS-2", "EU-RO-1", "CA-MTL-1"}


def test_a_pod_created_without_a_port_asked_for_now_is_refused_naming_the_fix(rp, run):
    failed, res = run(spot=False)  # tunnel access: SSH and 8188
    assert not failed, res["msg"]
    failed, res = run(spot=False, ports=[8188, 443])  # public access turned on afterwards
    assert failed
    assert "was created exposing 22, 8188 only, not 443" in res["msg"], res["msg"]
    assert "teardown" in res["msg"] and "sdcloud_access" in res["msg"]
    assert len(creates(rp)) == 1 and not rp.requests_for("PATCH")
