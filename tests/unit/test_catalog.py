"""The provider-neutral catalog (plugins/module_utils/sdcloud/catalog.py)."""

import pytest
from ansible.module_utils.sdcloud import catalog
from ansible.module_utils.sdcloud.base import SdcloudError


@pytest.mark.parametrize(("provider", "gpu", "machine_type", "accelerator"), [
    ("gcp", "nvidia-t4", "n1-standard-4", "nvidia-tesla-t4"),
    ("gcp", "nvidia-l4", "g2-standard-4", None),
    ("gcp", "nvidia-a100", "a2-highgpu-1g", None),
    ("gcp", "nvidia-h100", "a3-highgpu-1g", None),
    ("aws", "nvidia-t4", "g4dn.xlarge", None),
    ("aws", "nvidia-a10g", "g5.xlarge", None),
    ("aws", "nvidia-l4", "g6.xlarge", None),
    ("aws", "nvidia-a100", "p4d.24xlarge", None),
    ("aws", "nvidia-h100", "p5.48xlarge", None),
    ("runpod", "nvidia-rtx-4090", "NVIDIA GeForce RTX 4090", None),
    ("runpod", "nvidia-rtx-a5000", "NVIDIA RTX A5000", None),
    ("runpod", "nvidia-h100", "NVIDIA H100 80GB HBM3", None),
    ("vastai", "nvidia-rtx-3090", "RTX 3090", None),
    ("vastai", "nvidia-rtx-a6000", "RTX A6000", None),
    ("vastai", "nvidia-l40s", "L40S", None),
])
def test_mapping(provider, gpu, machine_type, accelerator):
    offer = catalog.offering(provider, gpu)
    assert (offer.machine_type, offer.accelerator_type) == (machine_type, accelerator)
    assert catalog.find_offering(provider, machine_type, accelerator) is offer


def test_prices_from_landscape_snapshot():
    assert catalog.hourly_price("aws", "nvidia-t4", spot=False) == 0.526
    assert 0.19 <= catalog.hourly_price("aws", "nvidia-t4", spot=True) <= 0.22
    assert catalog.hourly_price("aws", "nvidia-a10g", spot=False) == 1.006
    assert 0.38 <= catalog.hourly_price("aws", "nvidia-a10g", spot=True) <= 0.45
    assert 0.26 <= catalog.hourly_price("aws", "nvidia-l4", spot=True) <= 0.40
    assert catalog.hourly_price("gcp", "nvidia-l4", spot=True) == 0.28
    assert catalog.hourly_price("gcp", "nvidia-l4", spot=False) == 0.71
    for offers in catalog.GPUS.values():
        for o in offers.values():
            if o.provider == "runpod":  # RunPod rents no spot: the on-demand price, whatever is asked
                assert o.spot_hourly is None and o.hourly(True) == o.on_demand_hourly > 0, o
            else:
                assert 0 < o.spot_hourly < o.on_demand_hourly, o


def test_pods_rent_the_consumer_and_workstation_gpus():
    pod_gpus = {"nvidia-rtx-3090", "nvidia-rtx-4090", "nvidia-rtx-5090", "nvidia-rtx-a4000", "nvidia-rtx-a5000",
                "nvidia-rtx-a6000", "nvidia-l4", "nvidia-l40s", "nvidia-a100-80gb", "nvidia-h100"}
    assert set(catalog.gpu_names("runpod")) == set(catalog.gpu_names("vastai")) == pod_gpus
    ids = [catalog.offering("runpod", g).machine_type for g in pod_gpus]
    assert all(i.startswith("NVIDIA ") for i in ids) and len(set(ids)) == len(ids)  # RunPod gpu.id spelling
    assert catalog.find_offering("vastai", "RTX 4090").gpu == "nvidia-rtx-4090"
    assert catalog.disk_monthly_price("runpod", 100, "volume") == 20.0  # $0.20/GB-month while stopped
    with pytest.raises(SdcloudError) as err:
        catalog.offering("aws", "nvidia-rtx-4090")
    assert "only on runpod, vastai" in err.value.msg


def test_unknown_gpu_lists_valid_names():
    with pytest.raises(SdcloudError) as err:
        catalog.offering("aws", "nvidia-gtx-1080")
    assert "unknown GPU 'nvidia-gtx-1080'" in err.value.msg
    for name in ("nvidia-t4", "nvidia-l4", "nvidia-a10g", "nvidia-a100", "nvidia-a100-80gb", "nvidia-h100"):
        assert name in err.value.msg


def test_gpu_not_on_that_cloud_says_where_it_is():
    with pytest.raises(SdcloudError) as err:
        catalog.offering("gcp", "nvidia-a10g")
    assert "only on aws" in err.value.msg and "nvidia-l4" in err.value.msg
    assert "nvidia-a10g" not in catalog.gpu_names("gcp")


def test_disk_price_and_quota_codes():
    assert catalog.disk_monthly_price("aws", 100, "gp3") == 8.0
    assert catalog.disk_monthly_price("gcp", 200, "pd-balanced") == 20.0
    assert catalog.disk_monthly_price("gcp", None) == 0.0
    t4 = catalog.offering("aws", "nvidia-t4")
    assert catalog.aws_quota(t4, spot=True) == ("L-3819A6DF", "All G and VT Spot Instance Requests")
    assert catalog.aws_quota(t4, spot=False) == ("L-DB2E81BA", "Running On-Demand G and VT instances")
    assert catalog.aws_quota(catalog.offering("aws", "nvidia-h100"), spot=False)[0] == "L-417A185B"
    assert catalog.PRICES_AS_OF in catalog.price_note("aws")
