"""One catalog: neutral GPU names -> what each cloud calls them, what they cost, which quota gates them.

Prices are USD per hour for ONE instance of the listed shape, in the reference region
(GCP us-central1, AWS us-east-1). They are a snapshot for the summary and status output, not a
bill: spot prices move daily and differ per zone.

Sources (snapshot taken 2025-06, figures rounded to the cent):
- AWS on-demand: https://aws.amazon.com/ec2/pricing/on-demand/ (Linux, us-east-1). P4d/P5 are the
  list prices after AWS's June 2025 P4/P5 price reduction
  (https://aws.amazon.com/about-aws/whats-new/2025/06/pricing-usage-model-ec2-instances-nvidia-gpus/).
- AWS spot: typical us-east-1 prices from https://aws.amazon.com/ec2/spot/pricing/ and the SkyPilot
  catalog snapshots (skypilot-org/skypilot-catalog, aws/vms.csv): g4dn.xlarge ~$0.19-0.22,
  g6.xlarge ~$0.26-0.40, g5.xlarge ~$0.38-0.45 (midpoints below).
- GCP on-demand and spot: https://cloud.google.com/compute/vm-instance-pricing and
  https://cloud.google.com/compute/gpus-pricing (us-central1), SkyPilot catalog snapshots
  (gcp/vms.csv): g2-standard-4 ~$0.71 on-demand vs ~$0.28 spot. For N1 + T4 the price is the sum of
  the machine type and the attached GPU.
- Disks: https://aws.amazon.com/ebs/pricing/ (gp3 $0.08/GB-month, us-east-1);
  https://cloud.google.com/compute/disks-image-pricing (pd-balanced $0.10/GB-month, us-central1).
- AWS quota codes: Service Quotas console, service "Amazon Elastic Compute Cloud (Amazon EC2)";
  GCP quota metrics: https://cloud.google.com/compute/resource-usage#gpu_quota.

GPU pods (RunPod, vast.ai) are rented per GPU on a marketplace: the machine_type of their offerings is the
provider's own GPU name (RunPod's gpu.id / gpuTypeIds, e.g. "NVIDIA GeForce RTX 4090", from
runpod/docs references/gpu-types.mdx; vast's gpu_name, e.g. "RTX 4090", as its offers carry it), vCPUs
and memory vary by host (0 below: unknown until an offer is chosen), and prices move daily. The prices
here are only what the check-mode plan shows; a created pod reports the price of its offer (RunPod: the
pod's `cost`; vast: the instance's `dph_total`, plus the host's per-GB bandwidth and storage prices).
- RunPod: Secure Cloud list price per GPU-hour, rounded, from the March 2026 snapshot in
  https://deploybase.ai/articles/runpod-gpu-pricing ("On-Demand" column) and the v2 catalog's example
  (RTX 4090 secure $0.44); A4000/A5000/A6000 from RunPod's serverless price groups
  (https://docs.runpod.io/serverless/pricing) scaled to a pod hour. No spot: RunPod removed
  interruptible pods in 2026 (runpod/docs commit 8e5aebdb; runpodctl PR #267), so spot_hourly is None.
  Disk: the volume at /workspace bills $0.10/GB-month running and $0.20/GB-month stopped
  (https://docs.runpod.io/pods/pricing).
- vast.ai: typical on-demand and interruptible (bid) prices per GPU-hour of verified hosts, rounded;
  they vary by host far more than anywhere else. Disk: hosts set their own storage price; $0.15/GB-month
  is a typical value (https://docs.vast.ai/guides/instances/pricing) used only when an instance does not
  report its own.
"""

from __future__ import annotations

import dataclasses

from ansible.module_utils.sdcloud.base import SdcloudError

PRICES_AS_OF = "2025-06"
PRICE_REGION = {"gcp": "us-central1", "aws": "us-east-1", "runpod": "Secure Cloud", "vastai": "verified hosts"}
PROVIDERS = ("gcp", "aws", "runpod", "vastai")
POD_PROVIDERS = ("runpod", "vastai")  # GPU-pod marketplaces: containers, per-GPU offers, no spot on RunPod


@dataclasses.dataclass(frozen=True)
class Offering:
    """One neutral GPU on one cloud, in its smallest shape."""

    provider: str
    gpu: str
    machine_type: str  # GCP machine type / AWS instance type
    gpu_count: int
    vcpus: int
    memory_gb: float
    gpu_memory_gb: int
    on_demand_hourly: float
    spot_hourly: float | None  # None: the provider rents no spot capacity (RunPod)
    accelerator_type: str | None = None  # GCP guest accelerator to attach (N1 + T4); None when bundled
    quota: str | None = None  # AWS: instance family quota group "G" | "P"; GCP: quota metric suffix
    disk_type: str = ""  # boot disk type to use
    spot_stop: bool = True  # spot instance can be stopped (not deleted) on preemption, keeping the disk

    def hourly(self, spot: bool) -> float:
        return self.spot_hourly if spot and self.spot_hourly is not None else self.on_demand_hourly

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _aws(gpu, itype, count, vcpus, mem, gmem, od, spot, quota):  # noqa: PLR0917 - one table row
    return Offering("aws", gpu, itype, count, vcpus, mem, gmem, od, spot, None, quota, "gp3")


def _gcp(gpu, mtype, count, vcpus, mem, gmem, od, spot, accel, quota, disk="pd-balanced"):  # noqa: PLR0917 - one row
    return Offering("gcp", gpu, mtype, count, vcpus, mem, gmem, od, spot, accel, quota, disk)


def _pod(provider, gpu, gpu_id, gmem, od, spot):  # noqa: PLR0917 - one table row
    """One GPU of a pod marketplace: vCPUs/memory vary by host (0: unknown until an offer is chosen)."""
    return Offering(provider, gpu, gpu_id, 1, 0, 0, gmem, od, spot, None, None, "volume", spot_stop=True)


# Neutral name -> {provider: Offering}. A name missing for a provider means that cloud does not
# rent that GPU (A10G and L40S are AWS-only; GCP's L4 is the nearest).
_OFFERINGS = [
    # --- GCP (us-central1) ---
    # n1-standard-4 $0.19 + T4 $0.35 on-demand; spot $0.04 + $0.14.
    _gcp("nvidia-t4", "n1-standard-4", 1, 4, 15, 16, 0.54, 0.18, "nvidia-tesla-t4", "NVIDIA_T4_GPUS"),
    _gcp("nvidia-l4", "g2-standard-4", 1, 4, 16, 24, 0.71, 0.28, None, "NVIDIA_L4_GPUS"),
    _gcp("nvidia-a100", "a2-highgpu-1g", 1, 12, 85, 40, 3.67, 1.47, None, "NVIDIA_A100_GPUS"),
    _gcp("nvidia-a100-80gb", "a2-ultragpu-1g", 1, 12, 170, 80, 5.07, 2.03, None, "NVIDIA_A100_80GB_GPUS"),
    _gcp("nvidia-h100", "a3-highgpu-1g", 1, 26, 234, 80, 11.06, 3.89, None, "NVIDIA_H100_GPUS", "pd-ssd"),
    # --- AWS (us-east-1) --- quota group: G = "G and VT" family, P = "P" family.
    _aws("nvidia-t4", "g4dn.xlarge", 1, 4, 16, 16, 0.526, 0.21, "G"),
    _aws("nvidia-a10g", "g5.xlarge", 1, 4, 16, 24, 1.006, 0.42, "G"),
    _aws("nvidia-l4", "g6.xlarge", 1, 4, 16, 24, 0.805, 0.33, "G"),
    _aws("nvidia-l40s", "g6e.xlarge", 1, 4, 32, 48, 1.861, 0.78, "G"),
    _aws("nvidia-a100", "p4d.24xlarge", 8, 96, 1152, 40, 21.96, 9.50, "P"),
    _aws("nvidia-a100-80gb", "p4de.24xlarge", 8, 96, 1152, 80, 27.45, 12.00, "P"),
    _aws("nvidia-h100", "p5.48xlarge", 8, 192, 2048, 80, 55.04, 25.00, "P"),
    # --- RunPod (Secure Cloud, per GPU; no spot) --- machine_type: the gpu.id the v2 API takes.
    _pod("runpod", "nvidia-rtx-3090", "NVIDIA GeForce RTX 3090", 24, 0.43, None),
    _pod("runpod", "nvidia-rtx-4090", "NVIDIA GeForce RTX 4090", 24, 0.59, None),
    _pod("runpod", "nvidia-rtx-5090", "NVIDIA GeForce RTX 5090", 32, 0.89, None),
    _pod("runpod", "nvidia-rtx-a4000", "NVIDIA RTX A4000", 16, 0.25, None),
    _pod("runpod", "nvidia-rtx-a5000", "NVIDIA RTX A5000", 24, 0.27, None),
    _pod("runpod", "nvidia-rtx-a6000", "NVIDIA RTX A6000", 48, 0.49, None),
    _pod("runpod", "nvidia-l4", "NVIDIA L4", 24, 0.43, None),
    _pod("runpod", "nvidia-l40s", "NVIDIA L40S", 48, 0.86, None),
    _pod("runpod", "nvidia-a100-80gb", "NVIDIA A100 80GB PCIe", 80, 1.64, None),
    _pod("runpod", "nvidia-h100", "NVIDIA H100 80GB HBM3", 80, 2.99, None),
    # --- vast.ai (verified hosts, per GPU; spot = interruptible bid) --- machine_type: the offer's gpu_name.
    _pod("vastai", "nvidia-rtx-3090", "RTX 3090", 24, 0.22, 0.12),
    _pod("vastai", "nvidia-rtx-4090", "RTX 4090", 24, 0.40, 0.25),
    _pod("vastai", "nvidia-rtx-5090", "RTX 5090", 32, 0.70, 0.45),
    _pod("vastai", "nvidia-rtx-a4000", "RTX A4000", 16, 0.15, 0.08),
    _pod("vastai", "nvidia-rtx-a5000", "RTX A5000", 24, 0.25, 0.14),
    _pod("vastai", "nvidia-rtx-a6000", "RTX A6000", 48, 0.45, 0.28),
    _pod("vastai", "nvidia-l4", "L4", 24, 0.35, 0.20),
    _pod("vastai", "nvidia-l40s", "L40S", 48, 0.75, 0.45),
    _pod("vastai", "nvidia-a100-80gb", "A100 SXM4", 80, 1.20, 0.70),
    _pod("vastai", "nvidia-h100", "H100 SXM", 80, 2.00, 1.30),
]

GPUS: dict = {}
for _o in _OFFERINGS:
    GPUS.setdefault(_o.gpu, {})[_o.provider] = _o
del _o

# Boot disk price, USD per GB-month, reference regions.
DISK_GB_MONTH = {
    "aws": {"gp3": 0.08, "gp2": 0.10},
    "gcp": {"pd-balanced": 0.10, "pd-ssd": 0.17, "pd-standard": 0.04},
    # pods: what the volume bills while the pod is STOPPED (the case gpu_instance reports)
    "runpod": {"volume": 0.20},
    "vastai": {"volume": 0.15},
}

# AWS Service Quotas (values are vCPUs, per region). Keys: (quota group, spot?).
AWS_QUOTAS = {
    ("G", False): ("L-DB2E81BA", "Running On-Demand G and VT instances"),
    ("G", True): ("L-3819A6DF", "All G and VT Spot Instance Requests"),
    ("P", False): ("L-417A185B", "Running On-Demand P instances"),
    ("P", True): ("L-7212CCBC", "All P Spot Instance Requests"),
}

# Images. AWS: (owner, name filter); the newest match by CreationDate wins.
# Amazon's Deep Learning AMIs are owned by the "amazon" alias (account 898082745236);
# Canonical's Ubuntu images by 099720109477.
AWS_OWNER_AMAZON = "amazon"
AWS_OWNER_CANONICAL = "099720109477"
AWS_IMAGES = {
    "dlami-ubuntu-22.04": (AWS_OWNER_AMAZON, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"),
    "dlami-ubuntu-24.04": (AWS_OWNER_AMAZON, "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"),
    "ubuntu-22.04": (AWS_OWNER_CANONICAL, "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"),
    "ubuntu-24.04": (AWS_OWNER_CANONICAL, "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"),
}
AWS_DEFAULT_IMAGE = "dlami-ubuntu-22.04"
# GCP: (image project, family). Deep Learning VM images carry the NVIDIA driver.
GCP_IMAGES = {
    "dlvm-ubuntu-22.04": ("deeplearning-platform-release", "common-cu128-ubuntu-2204-nvidia-570"),
    "ubuntu-22.04": ("ubuntu-os-cloud", "ubuntu-2204-lts"),
    "ubuntu-24.04": ("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"),
    "debian-12": ("debian-cloud", "debian-12"),
}
GCP_DEFAULT_IMAGE = "dlvm-ubuntu-22.04"
DEFAULT_SSH_USER = "ubuntu"


def gpu_names(provider: str | None = None) -> list:
    """Neutral GPU names, sorted; only those `provider` rents when given."""
    return sorted(g for g, offers in GPUS.items() if provider is None or provider in offers)


def offering(provider: str, gpu: str) -> Offering:
    """The Offering for `gpu` on `provider`; SdcloudError naming the valid choices otherwise."""
    if provider not in PROVIDERS:
        raise SdcloudError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    offers = GPUS.get(gpu)
    if offers is None:
        raise SdcloudError(f"unknown GPU {gpu!r}: use one of {', '.join(gpu_names())}")
    if provider not in offers:
        others = [p for p in PROVIDERS if p in offers]
        raise SdcloudError(
            f"GPU {gpu!r} is not offered on {provider} (only on {', '.join(others)}): "
            f"on {provider} use one of {', '.join(gpu_names(provider))}"
        )
    return offers[provider]


def find_offering(provider: str, machine_type: str, accelerator_type: str | None = None) -> Offering | None:
    """Reverse lookup (inventory, found instances): the Offering for a machine type (+ GCP accelerator)."""
    for o in _OFFERINGS:
        if (o.provider, o.machine_type) == (provider, machine_type) and (
            o.accelerator_type is None or accelerator_type in (None, o.accelerator_type)
        ):
            return o
    return None


def hourly_price(provider: str, gpu: str, spot: bool) -> float:
    return offering(provider, gpu).hourly(spot)


def disk_monthly_price(provider: str, size_gb: int | float | None, disk_type: str | None = None) -> float:
    """USD per month for a boot disk of size_gb (0.0 when the size is unknown)."""
    prices = DISK_GB_MONTH.get(provider)
    if prices is None:
        raise SdcloudError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    per_gb = prices.get(disk_type or "", next(iter(prices.values())))
    return round(per_gb * float(size_gb or 0), 2)


def aws_quota(offer: Offering, spot: bool) -> tuple:
    """(quota code, quota name) gating `offer` on AWS."""
    return AWS_QUOTAS[(offer.quota, bool(spot))]


def price_note(provider: str) -> str:
    if provider in POD_PROVIDERS:
        return (f"catalog prices, {PRICE_REGION[provider]}, a snapshot; a created pod reports its offer's price, "
                "which varies by host and day")
    return f"catalog prices as of {PRICES_AS_OF}, {PRICE_REGION[provider]}; spot prices vary by zone and day"
