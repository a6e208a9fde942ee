"""The vastai provider end to end through the modules' main(), against the vast.ai REST API stand-in
(tests/standins/vast_server.py): interruptible (bid) and on-demand creates from an offer, "no offer
matches" naming the filter, every fault and its message, stop/start with a new address and port,
delete and the listing that proves it (across pages)."""

import pytest
from podtest import API_KEY, KEY, fast, runner  # noqa: F401 - fast is a fixture
from vast_server import VastStandin

SLOTS = ["10.11.0.5:22", {"host": "10.11.0.6", "ssh_port": 2201, "ports": {"8188": 18188}}]


@pytest.fixture
def vast(fast):  # noqa: F811 - the fixture above
    with VastStandin(slots=SLOTS, api_key=API_KEY) as standin:
        yield standin


@pytest.fixture
def run(vast):
    return runner("vastai", vast.url, gpu="nvidia-rtx-4090", ports=[8188], ssh_public_key=KEY, wait_timeout=10)


def asks(vast):
    return vast.requests_for("PUT", "/api/v0/asks/")


def test_spot_is_an_interruptible_bid_at_the_offer_s_minimum(vast, run):
    failed, res = run(spot=True, zones=["US"])
    assert not failed, res["msg"]
    inst = res["instance"]
    assert (inst["spot"], inst["state"], inst["zone"], inst["machine_type"]) == (True, "running", "US", "RTX 4090")
    assert (inst["public_ip"], inst["ssh_port"]) == ("10.11.0.5", 22)
    assert inst["ports"]["8188"] == {"ip": "10.11.0.5", "port": 23, "type": "tcp", "url": "http://10.11.0.5:23"}
    assert inst["hourly_price"] == 0.25 and inst["bandwidth_price_gb"] == 0.004
    assert "+ $0.004/GB downloaded" in res["msg"]
    [ask] = asks(vast)
    assert ask["path"] == "/api/v0/asks/1001/"
    assert ask["body"] == {"image": "vastai/base-image:@vastai-automatic-tag", "label": "sdcloud:sd", "disk": 100,
                           "runtype": "ssh_direct", "env": "-p 22:22 -p 8188:8188", "target_state": "running",
                           "price": 0.25}
    search = vast.requests_for("POST", "/api/v0/bundles/")[0]["body"]
    assert search["type"] == "bid" and search["geolocation"] == {"in": ["US"]}
    assert search["gpu_name"] == {"eq": "RTX 4090"} and search["direct_port_count"] == {"gte": 2}
    assert vast.instances[int(inst["id"])]["_ssh_keys"] == [KEY]
    assert "warnings" not in res


def test_on_demand_takes_the_cheapest_offer_anywhere(vast, run):
    failed, res = run(spot=False)
    assert not failed, res["msg"]
    assert res["instance"]["zone"] == "DE" and res["instance"]["hourly_price"] == 0.38
    body = asks(vast)[0]["body"]
    assert "price" not in body and body["cancel_unavail"] is True


def test_the_start_hook_is_onstart(vast, run):
    failed, res = run(spot=False, start_command="/workspace/hook.sh")
    assert not failed, res["msg"]
    assert asks(vast)[0]["body"]["onstart"] == "/workspace/hook.sh"
    assert vast.instances[int(res["instance"]["id"])]["onstart"] == "/workspace/hook.sh"


def test_no_offer_matches_says_which_filter(vast, run):
    failed, res = run(spot=False, zones=["FR"], disk_size_gb=800)
    assert failed and res["code"] == "NoCapacity"
    reason = res["attempts"][0]["reason"]
    assert reason.startswith("no on-demand RTX 4090 offer matches in FR: of 2 rentable ones")
    assert "2 fail disk_space gte 800 (GB of free disk (disk_size_gb))" in reason
    assert "2 fail geolocation in FR (a host in the zone (zones))" in reason
    failed, res = run(gpu="nvidia-h100", spot=False)
    assert failed and "no rentable on-demand H100 SXM offer on vast.ai right now (gpu_name)" in res["msg"]
    assert asks(vast) == []


def test_an_offer_taken_meanwhile_moves_to_the_next(vast, run):
    vast.add_fault("create", "gone", count=1)
    failed, res = run(spot=False)
    assert not failed, res["msg"]
    assert [a["path"] for a in asks(vast)] == ["/api/v0/asks/1002/", "/api/v0/asks/1001/"]


def test_no_credit_stops_and_names_the_billing_page(vast, run):
    vast.add_fault("create", "no_balance")
    failed, res = run(spot=False, zones=["US", "DE"])
    assert failed and res["code"] == "InsufficientBalance"
    assert "not enough credit" in res["msg"] and "https://cloud.vast.ai/billing/" in res["msg"]
    assert len(asks(vast)) == 1


def test_rate_limits_are_retried_then_the_message_says_wait(vast, run):
    vast.add_fault("any", "rate_limit", count=3)
    failed, res = run(spot=False)
    assert not failed, res["msg"]
    vast.add_fault("any", "rate_limit")
    failed, res = run(state="stopped")
    assert failed and res["code"] == "RateLimited" and "wait a minute and re-run" in res["msg"]
    assert "API requests too frequent" in res["msg"]


def test_stop_keeps_the_disk_at_the_host_s_price_and_start_gets_a_new_address(vast, run):
    run(spot=False, zones=["US"])
    failed, res = run(state="stopped")
    assert not failed and res["instance"]["state"] == "stopped"
    assert res["disk_monthly_cost"] == 15.0  # the host's storage_cost 0.15 x 100 GB
    failed, res = run(state="running")
    assert not failed and res["changed"]
    assert (res["instance"]["public_ip"], res["instance"]["ssh_port"]) == ("10.11.0.6", 2201)
    assert res["instance"]["ports"]["8188"]["url"] == "http://10.11.0.6:18188"  # the slot's own UI mapping


def test_a_start_waiting_for_its_gpu_says_what_to_do(vast, run):
    run(spot=False)
    run(state="stopped")
    vast.add_fault("start", "gpu_gone")
    failed, res = run(state="running", wait_timeout=1)
    assert failed and res["code"] == "GpuUnavailable"
    assert res["msg"].startswith("timed out after 1s waiting for instance")
    assert "waits until that machine's GPU is free again" in res["msg"] and "delete it (state: absent" in res["msg"]


def test_delete_and_the_sweep_lists_every_page(vast, run):
    run(spot=False)
    for n in range(30):  # more than one page of 25, made in the stand-in directly
        vast.instances[90000 + n] = dict(vast.instances[min(vast.instances)], id=90000 + n, label=f"sdcloud:x{n}")
    vast.instances[99999] = dict(vast.instances[90000], id=99999, label="someone else's")
    failed, res = run(module="cloud_resources", name=None)
    assert not failed and res["count"] == 31
    for n in range(30):
        del vast.instances[90000 + n]
    failed, res = run(state="absent")
    assert not failed and res["changed"]
    failed, res = run(module="cloud_resources", name=None, state="absent")
    assert not failed and res["count"] == 0 and set(vast.instances) == {99999}


def test_the_firewall_module_says_pods_have_none(run):
    failed, res = run(module="cloud_firewall", source_ranges=["203.0.113.7/32"])
    assert not failed and not res["changed"] and res["supported"] is False
    assert res["msg"].startswith("vastai pods have no cloud firewall")


def test_a_zone_that_is_no_country_is_skipped_without_a_call(vast, run):
    failed, res = run(spot=False, zones=["us-east-1", "US"])
    assert not failed, res["msg"]
    assert [(a["zone"], a["result"], a["code"]) for a in res["attempts"]] == [
        ("US-EAST-1", "skipped", "NotOffered"), ("US", "created", None)]


def test_an_instance_whose_key_cannot_be_attached_is_destroyed_not_left_billing(vast, run, monkeypatch):
    import vast_server

    def refuse(self, body, query, inst_id):
        raise vast_server.error(400, "invalid_args", "invalid ssh key")

    monkeypatch.setattr(vast_server.VastStandin, "attach_ssh", refuse)
    failed, res = run(spot=False)
    assert failed and "invalid ssh key" in res["msg"]
    assert vast.instances == {} and len(asks(vast)) == 1
