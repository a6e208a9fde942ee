"""The Compute Engine stand-in (tests/standins/gce_server.py) itself: raw HTTP and the real
google-cloud-compute client (REST transport, AnonymousCredentials, endpoint override)."""

import json
import pathlib
import sys
import urllib.error
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "standins"))
import gce_server  # noqa: E402

P = "proj-standin"
ZONE = "us-central1-a"
BASE = f"/compute/v1/projects/{P}"


@pytest.fixture
def gce():
    with gce_server.GceStandin(accelerators={ZONE: ["nvidia-l4", "nvidia-tesla-t4"],
                                             "us-central1-b": ["nvidia-tesla-t4"]}) as server:
        yield server


def http(gce, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(gce.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def client(gce, cls):
    return cls(credentials=AnonymousCredentials(), transport="rest",
               client_options=ClientOptions(api_endpoint=gce.url))


def instance_body(name="vm1", zone=ZONE, machine="g2-standard-4", spot=True, **over):
    body = {
        "name": name, "machineType": f"zones/{zone}/machineTypes/{machine}",
        "labels": {"sdcloud-managed": "true", "sdcloud-deployment": name},
        "scheduling": ({"provisioningModel": "SPOT", "instanceTerminationAction": "STOP",
                        "onHostMaintenance": "TERMINATE", "automaticRestart": False} if spot else
                       {"provisioningModel": "STANDARD", "onHostMaintenance": "TERMINATE", "automaticRestart": True}),
        "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
            "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
            "diskSizeGb": "200", "diskType": f"zones/{zone}/diskTypes/pd-balanced",
            "labels": {"sdcloud-managed": "true"}}}],
        "networkInterfaces": [{"accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
        "tags": {"items": ["sdcloud-vm1"]},
    }
    body.update(over)
    return body


def test_insert_operation_progresses_and_instance_runs(gce):
    status, op = http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body())
    assert status == 200 and op["status"] == "PENDING" and op["operationType"] == "insert"
    assert op["kind"] == "compute#operation" and op["id"].isdigit() and op["zone"].endswith(f"/zones/{ZONE}")
    _, inst = http(gce, "GET", f"{BASE}/zones/{ZONE}/instances/vm1")
    assert inst["status"] in ("PROVISIONING", "STAGING")
    assert "natIP" not in inst["networkInterfaces"][0]["accessConfigs"][0]
    op_path = f"{BASE}/zones/{ZONE}/operations/{op['name']}"
    statuses = [http(gce, "GET", op_path)[1]["status"] for _ in range(3)]
    assert statuses[-1] == "DONE" and statuses[0] in ("RUNNING", "DONE")
    _, inst = http(gce, "GET", f"{BASE}/zones/{ZONE}/instances/vm1")
    assert inst["status"] == "RUNNING"
    assert inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"].startswith("203.0.113.")
    assert inst["guestAccelerators"][0]["acceleratorType"].endswith("/acceleratorTypes/nvidia-l4")
    assert inst["scheduling"]["provisioningModel"] == "SPOT"
    assert inst["disks"][0]["diskSizeGb"] == "200" and inst["disks"][0]["autoDelete"] is True
    _, disk = http(gce, "GET", f"{BASE}/zones/{ZONE}/disks/vm1")
    assert disk["labels"] == {"sdcloud-managed": "true"} and disk["type"].endswith("/pd-balanced")
    assert disk["sizeGb"] == "200" and disk["users"] == [inst["selfLink"]]


def test_real_client_insert_result_get_and_wait(gce):
    instances = client(gce, compute_v1.InstancesClient)
    # the extended-operation poller must use the stand-in too: it ignores client_options and would poll the real host
    instances._transport._extended_operations_services["zone_operations"] = client(gce, compute_v1.ZoneOperationsClient)
    body = compute_v1.Instance.from_json(json.dumps(instance_body()), ignore_unknown_fields=False)
    op = instances.insert(project=P, zone=ZONE, instance_resource=body)
    op.result(timeout=10)
    got = instances.get(project=P, zone=ZONE, instance="vm1")
    assert got.status == "RUNNING" and got.labels["sdcloud-managed"] == "true"
    assert got.network_interfaces[0].access_configs[0].nat_i_p.startswith("203.0.113.")
    # /wait completes a pending operation at once
    stop = instances.stop_unary(project=P, zone=ZONE, instance="vm1")
    assert stop.status != compute_v1.Operation.Status.DONE
    waited = client(gce, compute_v1.ZoneOperationsClient).wait(project=P, zone=ZONE, operation=stop.name)
    assert waited.status == compute_v1.Operation.Status.DONE
    assert instances.get(project=P, zone=ZONE, instance="vm1").status == "TERMINATED"


def test_list_filter_and_pages(gce):
    for name in ("a1", "a2", "a3"):
        http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body(name))
    body = instance_body("other")
    body["labels"] = {"team": "x"}
    http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", body)
    instances = client(gce, compute_v1.InstancesClient)
    request = compute_v1.ListInstancesRequest(project=P, zone=ZONE, filter='labels.sdcloud-managed = "true"',
                                              max_results=1)
    assert [i.name for i in instances.list(request=request)] == ["a1", "a2", "a3"]  # pager follows pageToken
    pages = [r for r in gce.requests_for("instances.list")]
    assert len(pages) == 3 and pages[1]["query"]["pageToken"]
    both = '(labels.sdcloud-managed = "true") AND (labels.sdcloud-deployment = "a2")'
    status, page = http(gce, "GET", f"{BASE}/zones/{ZONE}/instances?filter={urllib.request.quote(both)}")
    assert status == 200 and [i["name"] for i in page["items"]] == ["a2"]
    status, err = http(gce, "GET", f"{BASE}/zones/{ZONE}/instances?filter={urllib.request.quote('labels.x ~~ 1')}")
    assert status == 400 and err["error"]["errors"][0]["reason"] == "invalid"


def test_aggregated_list_keys_zones_and_warns_on_empty(gce):
    http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body("vm1"))
    http(gce, "POST", f"{BASE}/zones/us-central1-b/instances",
         instance_body("vm2", zone="us-central1-b", machine="n1-standard-4",
                       guestAccelerators=[{"acceleratorType": "zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4",
                                           "acceleratorCount": 1}]))
    status, agg = http(gce, "GET", f"{BASE}/aggregated/instances")
    assert status == 200
    assert [i["name"] for i in agg["items"]["zones/us-central1-a"]["instances"]] == ["vm1"]
    assert [i["name"] for i in agg["items"]["zones/us-central1-b"]["instances"]] == ["vm2"]
    assert agg["items"]["zones/us-east1-b"]["warning"]["code"] == "NO_RESULTS_ON_PAGE"
    pager = client(gce, compute_v1.InstancesClient).aggregated_list(
        request=compute_v1.AggregatedListInstancesRequest(project=P, filter='labels.sdcloud-deployment = "vm2"'))
    assert [(z, [i.name for i in s.instances]) for z, s in pager if s.instances] == [("zones/us-central1-b", ["vm2"])]


def test_set_labels_needs_current_fingerprint(gce):
    http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body())
    instances = client(gce, compute_v1.InstancesClient)
    fp = instances.get(project=P, zone=ZONE, instance="vm1").label_fingerprint
    req = compute_v1.InstancesSetLabelsRequest(labels={"sdcloud-managed": "true", "x": "1"}, label_fingerprint=fp)
    instances.set_labels_unary(project=P, zone=ZONE, instance="vm1", instances_set_labels_request_resource=req)
    got = instances.get(project=P, zone=ZONE, instance="vm1")
    assert got.labels == {"sdcloud-managed": "true", "x": "1"} and got.label_fingerprint != fp
    with pytest.raises(gexc.PreconditionFailed) as err:  # the old fingerprint is stale now
        instances.set_labels_unary(project=P, zone=ZONE, instance="vm1", instances_set_labels_request_resource=req)
    assert err.value.code == 412 and err.value.errors[0]["reason"] == "conditionNotMet"


@pytest.mark.parametrize("code", ["ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"])
def test_fault_as_operation_error(gce, code):
    status, _ = http(gce, "POST", "/_standin/faults", {"operation": "insert", "zone": ZONE, "code": code, "count": 1})
    assert status == 200
    instances = client(gce, compute_v1.InstancesClient)
    instances._transport._extended_operations_services["zone_operations"] = client(gce, compute_v1.ZoneOperationsClient)
    body = compute_v1.Instance.from_json(json.dumps(instance_body()))
    op = instances.insert(project=P, zone=ZONE, instance_resource=body)
    with pytest.raises(gexc.ServiceUnavailable) as err:
        op.result(timeout=10)
    assert err.value.errors[0].code == code
    assert "does not have enough resources" in err.value.errors[0].message
    with pytest.raises(gexc.NotFound):  # a refused insert leaves no instance
        instances.get(project=P, zone=ZONE, instance="vm1")
    # count=1: the next insert goes through
    instances.insert(project=P, zone=ZONE, instance_resource=body).result(timeout=10)


def test_fault_as_http_error_and_quota_details(gce):
    gce.add_fault("insert", "QUOTA_EXCEEDED", zone=ZONE, as_="http")
    status, err = http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body())
    assert status == 403
    assert err["error"]["errors"][0]["reason"] == "quotaExceeded"
    assert err["error"]["message"] == "Quota 'PREEMPTIBLE_NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1."
    http(gce, "DELETE", "/_standin/faults")
    gce.add_fault("insert", "QUOTA_EXCEEDED", zone=ZONE, quota_metric="GPUS_ALL_REGIONS")
    _, op = http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body(spot=False))
    _, done = http(gce, "POST", f"{BASE}/zones/{ZONE}/operations/{op['name']}/wait")
    assert done["status"] == "DONE" and done["httpErrorStatusCode"] == 403
    error = done["error"]["errors"][0]
    assert error["code"] == "QUOTA_EXCEEDED" and "globally" in error["message"]
    assert error["errorDetails"][0]["quotaInfo"]["metricName"] == "compute.googleapis.com/gpus_all_regions"
    log = http(gce, "GET", "/_standin/requests")[1]["requests"]
    assert [r["api"] for r in log if r["method"] == "POST"] == ["instances.insert", "instances.insert",
                                                                 "zoneOperations.wait"]
    assert log[0]["status"] == 403 and log[0]["body"]["name"] == "vm1"


def test_stop_start_preempt_and_hook(gce):
    seen = []
    gce.on_instance_running = lambda inst: seen.append(inst["name"]) or "127.0.0.42"
    _, insert = http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body())
    ops = client(gce, compute_v1.ZoneOperationsClient)
    instances = client(gce, compute_v1.InstancesClient)
    ops.wait(project=P, zone=ZONE, operation=insert["name"])
    assert instances.get(project=P, zone=ZONE, instance="vm1").network_interfaces[0].access_configs[0].nat_i_p == \
        "127.0.0.42"
    stop = instances.stop_unary(project=P, zone=ZONE, instance="vm1")
    assert instances.get(project=P, zone=ZONE, instance="vm1").status in ("STOPPING", "TERMINATED")
    ops.wait(project=P, zone=ZONE, operation=stop.name)
    stopped = instances.get(project=P, zone=ZONE, instance="vm1")
    assert stopped.status == "TERMINATED" and not stopped.network_interfaces[0].access_configs[0].nat_i_p
    start = instances.start_unary(project=P, zone=ZONE, instance="vm1")
    ops.wait(project=P, zone=ZONE, operation=start.name)
    assert instances.get(project=P, zone=ZONE, instance="vm1").status == "RUNNING"
    assert seen == ["vm1", "vm1"]
    status, _ = http(gce, "POST", "/_standin/preempt", {"project": P, "zone": ZONE, "name": "vm1"})
    assert status == 200 and instances.get(project=P, zone=ZONE, instance="vm1").status == "TERMINATED"


def test_delete_honours_auto_delete_and_disk_in_use(gce):
    body = instance_body()
    body["disks"][0]["autoDelete"] = False
    _, op = http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", body)
    http(gce, "POST", f"{BASE}/zones/{ZONE}/operations/{op['name']}/wait")
    status, err = http(gce, "DELETE", f"{BASE}/zones/{ZONE}/disks/vm1")
    assert status == 400 and err["error"]["errors"][0]["reason"] == "resourceInUseByAnotherResource"
    _, op = http(gce, "DELETE", f"{BASE}/zones/{ZONE}/instances/vm1")
    http(gce, "POST", f"{BASE}/zones/{ZONE}/operations/{op['name']}/wait")
    assert http(gce, "GET", f"{BASE}/zones/{ZONE}/instances/vm1")[0] == 404
    _, disk = http(gce, "GET", f"{BASE}/zones/{ZONE}/disks/vm1")
    assert disk["users"] == []  # kept (autoDelete false) and detached
    _, agg = http(gce, "GET", f"{BASE}/aggregated/disks")
    assert [d["name"] for d in agg["items"][f"zones/{ZONE}"]["disks"]] == ["vm1"]


@pytest.mark.parametrize(("change", "field"), [
    ({"scheduling": {"onHostMaintenance": "MIGRATE"}}, "resource.scheduling.onHostMaintenance"),
    ({"scheduling": {"provisioningModel": "SPOT", "automaticRestart": True, "onHostMaintenance": "TERMINATE"}},
     "resource.scheduling.automaticRestart"),
    ({"labels": {"Bad": "x"}}, "resource.labels"),
    ({"machineType": "zones/us-central1-b/machineTypes/g2-standard-4"}, "resource.machineType"),
    ({"guestAccelerators": [{"acceleratorType": "zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4",
                             "acceleratorCount": 1}]}, "resource.guestAccelerators[0]"),
])
def test_insert_validation(gce, change, field):
    status, err = http(gce, "POST", f"{BASE}/zones/{ZONE}/instances", instance_body(**change))
    assert status == 400, err
    assert f"Invalid value for field '{field}'" in err["error"]["message"]


def test_catalog_endpoints(gce):
    images = client(gce, compute_v1.ImagesClient)
    assert images.get_from_family(project="deeplearning-platform-release",
                                  family="common-cu128-ubuntu-2204-nvidia-570").name.startswith("common-cu128")
    assert images.get_from_family(project="ubuntu-os-cloud", family="ubuntu-2404-lts-amd64").family == \
        "ubuntu-2404-lts-amd64"
    with pytest.raises(gexc.NotFound):
        images.get_from_family(project="debian-cloud", family="debian-99")
    accels = client(gce, compute_v1.AcceleratorTypesClient)
    assert [a.name for a in accels.list(project=P, zone="us-central1-b")] == ["nvidia-tesla-t4"]
    mtypes = client(gce, compute_v1.MachineTypesClient)
    assert mtypes.get(project=P, zone=ZONE, machine_type="g2-standard-4").accelerators[0].guest_accelerator_count == 1
    with pytest.raises(gexc.NotFound):  # no L4 in us-central1-b, so no g2 there
        mtypes.get(project=P, zone="us-central1-b", machine_type="g2-standard-4")
    zones = [z.name for z in client(gce, compute_v1.ZonesClient).list(project=P)]
    assert ZONE in zones and "europe-west4-a" in zones


def test_firewalls_and_addresses(gce):
    firewalls = client(gce, compute_v1.FirewallsClient)
    gops = client(gce, compute_v1.GlobalOperationsClient)
    body = compute_v1.Firewall(name="sdcloud-x-ingress", allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["22"])],
                               source_ranges=["198.51.100.7/32"], target_tags=["sdcloud-x"], description="d")
    op = firewalls.insert_unary(project=P, firewall_resource=body)
    assert gce.requests_for("firewalls.insert")[0]["body"]["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    with pytest.raises(gexc.NotFound):  # appears when its operation is DONE
        firewalls.get(project=P, firewall="sdcloud-x-ingress")
    gops.wait(project=P, operation=op.name)
    patch = compute_v1.Firewall(source_ranges=["203.0.113.9/32"])
    gops.wait(project=P, operation=firewalls.patch_unary(project=P, firewall="sdcloud-x-ingress",
                                                         firewall_resource=patch).name)
    got = firewalls.get(project=P, firewall="sdcloud-x-ingress")
    assert list(got.source_ranges) == ["203.0.113.9/32"] and got.allowed[0].ports == ["22"]
    gops.wait(project=P, operation=firewalls.delete_unary(project=P, firewall="sdcloud-x-ingress").name)
    assert list(firewalls.list(project=P)) == []

    addresses = client(gce, compute_v1.AddressesClient)
    rops = client(gce, compute_v1.RegionOperationsClient)
    op = addresses.insert_unary(project=P, region="us-central1",
                                address_resource=compute_v1.Address(name="ip1", labels={"sdcloud-managed": "true"}))
    assert op.region.endswith("/regions/us-central1")
    rops.wait(project=P, region="us-central1", operation=op.name)
    assert [a.address for a in addresses.list(project=P, region="us-central1")][0].startswith("203.0.113.")
    rops.wait(project=P, region="us-central1", operation=addresses.delete_unary(
        project=P, region="us-central1", address="ip1").name)
    assert list(addresses.list(project=P, region="us-central1")) == []


def test_unknown_project_and_zone(gce):
    gce.projects = {P}
    status, err = http(gce, "GET", "/compute/v1/projects/nope/zones/us-central1-a/instances")
    assert status == 404 and err["error"]["message"] == "The resource 'projects/nope' was not found"
    status, err = http(gce, "GET", f"{BASE}/zones/us-central9-z/instances")
    assert status == 400 and "Unknown zone" in err["error"]["message"]
