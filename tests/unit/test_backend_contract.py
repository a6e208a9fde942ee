"""The provider-neutral contract in base.py without a cloud: a provider made of nothing but the placement
hooks (as RunPod or vast.ai will be) gets the whole zone walk, the attempt vocabulary, the summary and
the bounded waits; and machine.json becomes an Instance in one function."""

import time

import pytest
from ansible.module_utils.sdcloud import base, catalog
from ansible.module_utils.sdcloud.base import (
    PENDING,
    RUNNING,
    Backend,
    Deadline,
    Instance,
    InstanceSpec,
    Refusal,
    SdcloudError,
    ZoneRefused,
    local_instance,
    wait_for,
)


class CloudSaid(Exception):
    """What the pretend cloud raises; classify_error reads `kind`."""

    def __init__(self, kind, zone):
        super().__init__(f"{kind} in {zone}")
        self.kind = kind


class HooksOnly(Backend):
    """Zones are "<region>-<letter>"; `offered` lists the zones that offer the type; `faults` maps a zone to
    what the cloud answers there (stockout, quota, global-quota, no-subnet, boom); reads count down
    `polls_to_run` before the instance runs."""

    provider = "aws"  # any provider the catalog knows: the hooks below talk to no cloud

    def __init__(self, offered, faults=None, polls_to_run=0):
        self.offered, self.faults, self.polls_to_run = set(offered), dict(faults or {}), polls_to_run
        self.asked, self.cleaned = [], []

    # placement hooks
    def placement_zones(self, spec):
        return list(spec.zones)

    def zone_region(self, zone):
        return zone.rsplit("-", 1)[0]

    def offers_in_zone(self, zone, offer):
        return None if zone in self.offered else f"{zone} does not offer {offer.machine_type}"

    def image_for(self, spec, zone):
        return "img-1", "image one"

    def try_zone(self, placement, zone, spot, deadline):
        fault = self.faults.get(zone)
        if fault == "no-subnet":
            raise ZoneRefused(Refusal(base.CODE_NO_NETWORK, f"no subnet in {zone}", skipped=True))
        self.asked.append((zone, spot))
        if fault and not (fault.endswith("spot-only") and not spot):
            raise CloudSaid(fault.removesuffix(" spot-only"), zone)
        return Instance(name=placement["spec"].name, provider=self.provider, id="i-1", zone=zone,
                        region=self.zone_region(zone), state=PENDING, spot=spot)

    def classify_error(self, exc, placement, zone, spot):
        if exc.kind == "stockout":
            return Refusal(base.CODE_NO_CAPACITY, "no room", "OutOfRoom")
        if exc.kind in ("quota", "global-quota"):
            scope = base.SCOPE_REGION if exc.kind == "quota" else base.SCOPE_ALL
            return Refusal(base.CODE_QUOTA, "over quota", "OverQuota", scope=scope, quota="GPUS", fix="raise GPUS")
        return SdcloudError(f"the cloud broke in {zone}: call support", code="Boom")

    def after_refusal(self, placement, zone, deadline):
        self.cleaned.append(zone)

    def read_instance(self, instance):
        self.polls_to_run -= 1
        return Instance(**dict(instance.to_dict(), state=RUNNING if self.polls_to_run < 0 else PENDING,
                               public_ip="192.0.2.1"))


def _not_placement(*_args, **_kwargs):
    raise NotImplementedError("not part of placement")


# The rest of the contract (firewall, sweep, start/stop ...) is not what these tests are about.
for _name in HooksOnly.__abstractmethods__:
    setattr(HooksOnly, _name, _not_placement)
HooksOnly.__abstractmethods__ = frozenset()


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(base, "POLL_INTERVAL", 0.01)


def spec(zones, **over):
    return InstanceSpec(**{"name": "sd", "gpu": "nvidia-t4", "zones": zones, **over})


def steps(attempts):
    return [(a.zone, a.spot, a.result, a.code) for a in attempts]


def test_the_walk_records_every_zone_and_cleans_after_refusals():
    be = HooksOnly(offered={"r1-a", "r1-b", "r2-a", "r2-b", "r3-a"},
                   faults={"r1-a": "stockout", "r2-a": "quota", "r3-a": "no-subnet"}, polls_to_run=2)
    inst, attempts = be.create_instance(spec(["r1-x", "r1-a", "r2-a", "r2-b", "r3-a", "r1-b"]), wait_timeout=5)
    assert inst.zone == "r1-b" and inst.state == RUNNING
    assert steps(attempts) == [
        ("r1-x", True, "skipped", "NotOffered"),
        ("r1-a", True, "failed", "NoCapacity"),
        ("r2-a", True, "failed", "QuotaExceeded"),
        ("r2-b", True, "skipped", "QuotaExceeded"),  # a regional quota: the rest of r2 is not asked
        ("r3-a", True, "skipped", "NoNetwork"),
        ("r1-b", True, "created", None),
    ]
    assert attempts[1].cloud_code == "OutOfRoom" and attempts[3].reason == "quota GPUS exhausted in r2"
    assert be.asked == [("r1-a", True), ("r2-a", True), ("r1-b", True)]
    assert be.cleaned == ["r1-a", "r2-a"]  # refused by the cloud; the skipped zones left nothing


def test_a_global_quota_rules_out_every_zone_then_on_demand_walks_again():
    be = HooksOnly(offered={"r1-a", "r2-a"}, faults={"r1-a": "global-quota spot-only"})
    inst, attempts = be.create_instance(spec(["r1-a", "r2-a"], spot_fallback="on-demand"), wait_timeout=5)
    assert steps(attempts) == [("r1-a", True, "failed", "QuotaExceeded"), ("r2-a", True, "skipped", "QuotaExceeded"),
                               ("r1-a", False, "created", None)]
    assert attempts[1].reason == "quota GPUS exhausted in every region" and inst.spot is False


def test_nothing_placed_gives_one_summary_with_the_fixes():
    be = HooksOnly(offered={"r1-a", "r2-a"}, faults={"r1-a": "stockout", "r2-a": "quota"})
    with pytest.raises(SdcloudError) as err:
        be.create_instance(spec(["r1-a", "r2-a", "r9-z"]), wait_timeout=5)
    offer = catalog.offering("aws", "nvidia-t4")
    assert err.value.msg == (
        f"could not create nvidia-t4 ({offer.machine_type}) for deployment 'sd' in any zone. Tried: "
        "r1-a (spot): failed NoCapacity - no room; r2-a (spot): failed QuotaExceeded - over quota; "
        f"r9-z (spot): skipped NotOffered - r9-z does not offer {offer.machine_type}. "
        "To fix: raise GPUS; add more zones or regions to `zones`; set spot_fallback: on-demand to try on-demand capacity.")
    assert err.value.details["code"] == "NoCapacity"
    assert [a["code"] for a in err.value.details["attempts"]] == ["NoCapacity", "QuotaExceeded", "NotOffered"]


def test_an_error_that_is_no_refusal_stops_the_walk_with_the_attempts_so_far():
    be = HooksOnly(offered={"r1-a", "r1-b", "r1-c"}, faults={"r1-a": "stockout", "r1-b": "boom"})
    with pytest.raises(SdcloudError) as err:
        be.create_instance(spec(["r1-a", "r1-b", "r1-c"]), wait_timeout=5)
    assert err.value.msg == "the cloud broke in r1-b: call support" and err.value.details["code"] == "Boom"
    assert [a["zone"] for a in err.value.details["attempts"]] == ["r1-a"]
    assert be.asked == [("r1-a", True), ("r1-b", True)]  # r1-c never asked


def test_the_plan_has_one_shape():
    plan = HooksOnly(offered={"r1-b"}).plan_create(spec(["r1-a", "r1-b"]))
    assert set(plan) == {"provider", "machine_type", "gpu", "gpu_count", "zones", "zones_not_offering", "spot",
                         "spot_fallback", "image", "image_name", "disk_size_gb", "hourly_price",
                         "on_demand_hourly_price", "price_note"}
    assert plan["zones"] == ["r1-b"] and list(plan["zones_not_offering"]) == ["r1-a"]
    assert (plan["image"], plan["image_name"]) == ("img-1", "image one")


def test_the_wait_for_running_is_bounded_and_says_what_it_waited_for():
    be = HooksOnly(offered={"r1-a"}, polls_to_run=10**6)
    t0 = time.monotonic()
    with pytest.raises(SdcloudError) as err:
        be.create_instance(spec(["r1-a"]), wait_timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 2
    assert err.value.msg.startswith("timed out after 0.3s waiting for instance sd (i-1) in r1-a to be running with a "
                                    "public IP (it is pending); it may still cost money")
    assert err.value.details["code"] == "Timeout"


def test_wait_for_polls_at_one_interval_until_the_deadline(monkeypatch):
    monkeypatch.setattr(base, "POLL_INTERVAL", 0.05)
    calls = []

    def probe():
        calls.append(time.monotonic())
        return len(calls) == 3, "ready", f"{len(calls)} probes"

    assert wait_for(probe, Deadline(5), "three probes") == "ready"
    assert all(b - a >= 0.04 for a, b in zip(calls, calls[1:], strict=False))
    assert wait_for(lambda: (False, None, "never"), Deadline(0.1), "nothing", quiet=True) is None
    with pytest.raises(SdcloudError) as err:
        wait_for(lambda: (False, None, "still not"), Deadline(0), "the thing", op="x")
    assert err.value.msg == ("timed out after 0s waiting for the thing (still not); it may still finish: re-run to "
                             "pick it up, or raise wait_timeout")
    assert err.value.details == {"code": "Timeout", "op": "x"}


def test_machine_json_becomes_an_instance_in_one_place():
    info = {"name": "sd", "address": "10.87.0.10", "uuid": "ab12", "labels": {"sdcloud-deployment": "sd"},
            "created": "2026-01-01T00:00:00Z", "ssh_user": "root", "state": "running", "proxy": "http://10.87.0.1:8888"}
    inst = local_instance("sd", info)
    assert inst.to_dict() == {
        "name": "sd", "provider": "local", "id": "ab12", "zone": "local", "region": "local", "state": "running",
        "gpu": None, "machine_type": "systemd-nspawn", "spot": False, "public_ip": "10.87.0.10",
        "private_ip": "10.87.0.10", "labels": {"sdcloud-deployment": "sd"}, "created": "2026-01-01T00:00:00Z",
        "hourly_price": 0.0, "ssh_user": "root", "image": "debian-12", "disk_size_gb": None,
        "ssh_port": None, "ports": None, "disk_monthly_cost": None, "bandwidth_price_gb": None}
    absent = local_instance("gone", {"state": "absent"})
    assert (absent.state, absent.id, absent.public_ip) == ("absent", "", None)


@pytest.mark.parametrize(("provider", "cls"), [("runpod", "RunpodBackend"), ("vastai", "VastBackend")])
def test_a_pod_provider_writes_only_hooks_and_is_built_from_params(provider, cls, monkeypatch):
    """The pod marketplaces are Backends with nothing abstract left, built by backend_from_params from the key
    in their provider's environment variable."""
    monkeypatch.setenv({"runpod": "RUNPOD_API_KEY", "vastai": "VAST_API_KEY"}[provider], "k")
    backend = base.backend_from_params({"provider": provider, "zones": []})
    assert type(backend).__name__ == cls and not type(backend).__abstractmethods__
    assert backend.has_firewall is False and backend.spot_supported is (provider == "vastai")
    assert backend.placement_zones(spec([])) == ["any"]  # no zones: the provider places it anywhere
