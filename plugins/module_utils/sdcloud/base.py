"""The provider-neutral contract every cloud backend implements.

Modules (gpu_instance, cloud_firewall) and the inventory plugin talk to a backend only
through this interface, so GCP and AWS differ in one place each (gcp.py, aws.py).

Backends: `sdcloud.aws.AwsBackend` and `sdcloud.gcp.GcpBackend`, both subclasses of `Backend`
below; modules get one with `backend_from_params(params)`.
"""

from __future__ import annotations

import abc
import base64
import binascii
import dataclasses
import re

# Every resource sdcloud creates carries these labels/tags; inventory and teardown
# find resources by them and touch nothing else.
LABEL_MANAGED = "sdcloud-managed"  # value: "true"
LABEL_DEPLOYMENT = "sdcloud-deployment"  # value: the deployment name (sdcloud_name)

# Neutral instance states.
RUNNING = "running"
STOPPED = "stopped"
PENDING = "pending"
STOPPING = "stopping"
TERMINATED = "terminated"


class SdcloudError(Exception):
    """One error type for every cloud failure; `msg` already names the fix."""

    def __init__(self, msg: str, **details):
        super().__init__(msg)
        self.msg = msg
        self.details = details


@dataclasses.dataclass
class Instance:
    """What every backend returns for an instance (also the module's RETURN shape)."""

    name: str
    provider: str  # gcp | aws | local | static
    id: str
    zone: str
    region: str
    state: str  # one of the neutral states above
    gpu: str | None = None  # neutral GPU name (nvidia-l4 ...)
    machine_type: str | None = None
    spot: bool = False
    public_ip: str | None = None
    private_ip: str | None = None
    labels: dict = dataclasses.field(default_factory=dict)
    created: str | None = None  # RFC 3339
    hourly_price: float | None = None  # USD, from the catalog
    ssh_user: str | None = None
    image: str | None = None
    disk_size_gb: int | None = None  # boot disk size, for the "stopped still costs" message

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def managed_labels(deployment: str, extra: dict | None = None) -> dict:
    """The labels/tags every sdcloud resource of `deployment` carries (user labels first, ours win)."""
    labels = dict(extra or {})
    labels[LABEL_MANAGED] = "true"
    labels[LABEL_DEPLOYMENT] = deployment
    return labels


# Outcomes of one placement attempt (Attempt.result).
ATTEMPT_CREATED = "created"
ATTEMPT_FAILED = "failed"  # the cloud refused: stockout, quota, unsupported ...
ATTEMPT_SKIPPED = "skipped"  # not tried: the zone does not offer the machine type, or the zone is unknown


@dataclasses.dataclass
class Attempt:
    """One zone tried while placing an instance; the module returns the list as `attempts`."""

    zone: str
    spot: bool
    result: str  # ATTEMPT_CREATED | ATTEMPT_FAILED | ATTEMPT_SKIPPED
    reason: str | None = None  # human sentence: why it failed / was skipped
    code: str | None = None  # provider error code (InsufficientInstanceCapacity, ZONE_RESOURCE_POOL_EXHAUSTED ...)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class InstanceSpec:
    """What gpu_instance asks a backend to create (already validated by the module)."""

    name: str  # deployment name; also the instance name (GCP) / Name tag (AWS)
    gpu: str  # neutral GPU name, a key of catalog.GPUS
    zones: list  # preference order. GCP: zones. AWS: zones and/or regions (a region expands to its AZs)
    spot: bool = True
    spot_fallback: str = "none"  # "none" | "on-demand": retry on-demand when no zone has spot capacity
    disk_size_gb: int = 100
    image: str | None = None  # explicit image (GCP image self-link/name, AWS AMI id or AMI name filter)
    image_family: str | None = None  # GCP image family ("project/family" or family); AWS: AMI name filter
    ssh_public_key: str | None = None  # OpenSSH public key line
    ssh_user: str = "ubuntu"
    labels: dict = dataclasses.field(default_factory=dict)  # user labels; backends add managed_labels()


@dataclasses.dataclass
class FirewallSpec:
    """What cloud_firewall asks for: tcp `ports` open from `source_ranges` to the deployment's instances."""

    name: str  # deployment name
    ports: list  # ints, sorted, 22 always included by the module
    source_ranges: list  # CIDRs, sorted
    labels: dict = dataclasses.field(default_factory=dict)  # user labels; backends add managed_labels()


@dataclasses.dataclass
class Firewall:
    """A firewall rule (GCP) / security group (AWS) as found in the cloud."""

    name: str  # the cloud-side name (rule name / group name)
    provider: str
    id: str
    ports: list  # ints, sorted
    source_ranges: list  # CIDRs, sorted
    region: str | None = None  # None for GCP (global)
    labels: dict = dataclasses.field(default_factory=dict)
    exact: bool = True  # False when the rules are not exactly tcp ports x source_ranges (module then updates)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Resource kinds returned by Backend.list_resources.
KIND_INSTANCE = "instance"
KIND_DISK = "disk"  # GCP disk / AWS EBS volume
KIND_ADDRESS = "address"  # GCP static address / AWS elastic IP
KIND_FIREWALL = "firewall"  # GCP firewall rule / AWS security group
KIND_KEY_PAIR = "key_pair"  # AWS only
KIND_SPOT_REQUEST = "spot_request"  # AWS only: a persistent spot request would relaunch the instance
# Teardown order: what holds others goes first.
DELETE_ORDER = (KIND_SPOT_REQUEST, KIND_INSTANCE, KIND_ADDRESS, KIND_DISK, KIND_FIREWALL, KIND_KEY_PAIR)


@dataclasses.dataclass
class Resource:
    """Any labelled resource, for the teardown sweep (cloud_resources)."""

    kind: str  # one of the KIND_* above
    provider: str
    id: str  # what the delete call needs (AWS id, GCP name)
    name: str | None
    location: str  # zone, region, or "global"
    labels: dict = dataclasses.field(default_factory=dict)
    state: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Backend(abc.ABC):
    """One cloud. Modules hold no provider logic: they compare wanted vs found and call these.

    Rules for implementations:
    - every cloud error becomes SdcloudError(msg, **details) whose msg names the fix;
    - nothing here prompts, prints or exits; every wait is bounded by the `wait_timeout` given and its
      error says what it waited for;
    - read methods (find_*, list_*, plan_create, get_firewall) change nothing: check mode calls only them;
    - resources created carry managed_labels(spec.name, spec.labels).
    """

    provider: str = ""  # "gcp" | "aws"

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: dict) -> Backend:
        """Build from module params. Keys used (absent or None when not given): `project` (gcp),
        `zones` (list, may be empty for list/sweep calls), `endpoint` (API endpoint override),
        `credentials_file` (gcp), `profile` (aws). Raise SdcloudError when something needed is missing."""

    # --- instances -------------------------------------------------------------------------------
    @abc.abstractmethod
    def find_instance(self, name: str) -> Instance | None:
        """The deployment's instance found by labels (not terminated/deleted), or None.
        SdcloudError when more than one matches (names them)."""

    @abc.abstractmethod
    def list_instances(self, deployment: str | None = None) -> list:
        """All sdcloud-managed instances (any state but terminated), optionally of one deployment."""

    @abc.abstractmethod
    def plan_create(self, spec: InstanceSpec) -> dict:
        """Read-only plan for check mode: {"machine_type", "gpu", "zones" (candidates in order, offered
        ones only), "spot", "image", "hourly_price", "disk_size_gb"}. May look up images/offerings."""

    @abc.abstractmethod
    def create_instance(self, spec: InstanceSpec, wait_timeout: int) -> tuple:
        """Create the instance walking spec.zones (spot first; then, when spec.spot_fallback ==
        "on-demand" and no zone had spot capacity, on-demand), wait until it runs with a public IP.
        Returns (Instance, [Attempt, ...]). When nothing could be created raise SdcloudError whose msg
        summarises every attempt (quota: which quota, where, how to raise it) with details
        attempts=[Attempt.to_dict(), ...]."""

    @abc.abstractmethod
    def start_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        """Start a stopped instance; wait until running with a public IP; return it re-read."""

    @abc.abstractmethod
    def stop_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        """Stop (disk kept); wait until stopped; return it re-read."""

    @abc.abstractmethod
    def delete_instance(self, instance: Instance, wait_timeout: int) -> None:
        """Delete/terminate the instance and its boot disk; wait until gone."""

    @abc.abstractmethod
    def delete_instance_extras(self, name: str, wait_timeout: int) -> list:
        """Delete what create_instance made for the deployment besides the instance (AWS: key pair,
        security group; GCP: nothing or its own extras). Returns the Resources deleted ([] if none)."""

    def host_keys(self, instance: Instance, timeout: int) -> list:
        """The SSH host keys the machine's guest published through the cloud API, as "type base64" lines,
        waiting up to `timeout` seconds for them; [] when the provider or image offers none (the first
        connection then trusts the key it is shown)."""
        return []

    # --- firewall --------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_firewall(self, name: str) -> Firewall | None:
        """The deployment's firewall rule / security group, or None."""

    @abc.abstractmethod
    def create_firewall(self, spec: FirewallSpec) -> Firewall:
        """Create it, applying to the deployment's instances (GCP: target tag; AWS: attached SG)."""

    @abc.abstractmethod
    def update_firewall(self, current: Firewall, spec: FirewallSpec) -> Firewall:
        """Make ports/source ranges equal to spec (add missing, revoke extra)."""

    @abc.abstractmethod
    def delete_firewall(self, current: Firewall) -> None:
        """Delete it (AWS: detaches from running instances first if needed)."""

    # --- sweep -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def list_resources(self, deployment: str | None = None) -> list:
        """Every resource labelled sdcloud-managed=true (and of `deployment` when given):
        instances (not terminated), disks/volumes, addresses, firewall rules/security groups, key pairs."""

    @abc.abstractmethod
    def delete_resources(self, resources: list, wait_timeout: int) -> None:
        """Delete them in DELETE_ORDER, waiting for instances to be gone before the rest."""


def backend_from_params(params: dict) -> Backend:
    """The backend for params["provider"], built with Backend.from_params(params)."""
    provider = params.get("provider")
    if provider == "aws":
        from ansible.module_utils.sdcloud.aws import AwsBackend as cls  # noqa: PLC0415 - load only the SDK in use
    elif provider == "gcp":
        from ansible.module_utils.sdcloud.gcp import GcpBackend as cls  # noqa: PLC0415 - load only the SDK in use
    else:
        raise SdcloudError(f"unknown provider {provider!r}: use gcp or aws")
    return cls.from_params(params)


HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def host_key_alias(provider: str, instance_id: str) -> str:
    """The name a cloud machine's host key is recorded under in known_hosts (HostKeyAlias): stable across
    IP changes, unique per instance."""
    return "sdcloud-%s-%s" % (provider, re.sub(r"[^A-Za-z0-9_]", "_", str(instance_id)))


def valid_host_key(key_type: str, blob: str) -> bool:
    """Whether `blob` is the base64 SSH wire encoding of a public key of `key_type` (it starts with the
    length-prefixed type name), so a garbled or mislabelled value is never pinned."""
    if key_type not in HOST_KEY_TYPES or not blob:
        return False
    try:
        wire = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return False
    prefix = len(key_type).to_bytes(4, "big") + key_type.encode()
    return wire.startswith(prefix) and len(wire) > len(prefix) + 4
