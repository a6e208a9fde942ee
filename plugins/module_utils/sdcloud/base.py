"""The provider-neutral contract every cloud backend implements.

Modules (gpu_instance, cloud_firewall) and the inventory plugin talk to a backend only
through this interface, so GCP and AWS differ in one place each (gcp.py, aws.py).

Backends: `sdcloud.aws.AwsBackend`, `sdcloud.gcp.GcpBackend`, and the GPU-pod marketplaces
`sdcloud.runpod.RunpodBackend` and `sdcloud.vastai.VastBackend` (their shared part in `sdcloud.pods`), all
subclasses of `Backend` below; modules get one with `backend_from_params(params)`.

Placement (creating an instance somewhere in a zone preference list) is written once, here:
`Backend.create_instance` walks the zones - spot first, then on-demand when asked; a zone that does not
offer the type is skipped without a call; a stockout moves on to the next zone; a regional quota
skips the rest of that region, a global one every zone left - records one `Attempt` per zone in one
vocabulary (ATTEMPT_* results, CODE_* codes, below) and, when nothing could be created, raises one
summary (`placement_summary`). A provider writes only the hooks the loop calls (the "placement hooks"
of `Backend`), as SkyPilot's failover provisioner leaves only error classification and the launch
call to each cloud. Every wait goes through `wait_for` (one poll interval, one monotonic `Deadline`).
"""

from __future__ import annotations

import abc
import base64
import binascii
import dataclasses
import re
import time

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
# Suspended (GCP SUSPENDING/SUSPENDED): not running, but its memory is kept and billed besides the disk;
# state present resumes it (a start would fail), state stopped says so rather than calling it stopped.
SUSPENDED = "suspended"


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
    provider: str  # gcp | aws | runpod | vastai | local | static
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
    # Pods (runpod, vastai) only; None elsewhere. SSH and the UIs are reached on ports the provider maps.
    ssh_port: int | None = None  # the public port mapped to the pod's 22/tcp (None: 22, as on VMs)
    ports: dict | None = None  # container port (str) -> {"ip", "port", "type", "url"} as the provider maps it
    disk_monthly_cost: float | None = None  # USD/month the disk bills while stopped, when the provider prices it
    bandwidth_price_gb: float | None = None  # USD per GB downloaded, when the provider bills traffic (vast)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def local_instance(name: str, info: dict) -> Instance:
    """A local machine (systemd-nspawn) as an Instance: `info` is its machine.json as nspawn.Machine.info()
    returns it (the keys Machine.create writes, plus `state`; {"state": "absent"} for none). The one place
    that reads those keys, for the local_machine module and the inventory alike."""
    return Instance(
        name=name, provider="local", id=info.get("uuid", ""), zone="local", region="local", state=info["state"],
        gpu=None, machine_type="systemd-nspawn", spot=False, public_ip=info.get("address"),
        private_ip=info.get("address"), labels=info.get("labels", {}), created=info.get("created"), hourly_price=0.0,
        ssh_user=info.get("ssh_user"), image="debian-12",
    )


def managed_labels(deployment: str, extra: dict | None = None) -> dict:
    """The labels/tags every sdcloud resource of `deployment` carries (user labels first, ours win)."""
    labels = dict(extra or {})
    labels[LABEL_MANAGED] = "true"
    labels[LABEL_DEPLOYMENT] = deployment
    return labels


# --- the attempt vocabulary -------------------------------------------------------------------------
# Every provider reports a zone it considered while placing an instance with these words, so the same
# fault reads the same on GCP and AWS (and on the next provider); the cloud's own error code rides along
# in Attempt.cloud_code. gpu_instance returns the list as `attempts` (see its RETURN doc).
#
# Attempt.result: whether the cloud was asked.
ATTEMPT_CREATED = "created"  # asked, and it made the instance
ATTEMPT_FAILED = "failed"  # asked, and it refused (Attempt.code says why)
ATTEMPT_SKIPPED = "skipped"  # not asked: the zone could not have taken it (Attempt.code says why)
# Attempt.code: why a zone failed or was skipped (None when created).
CODE_NOT_OFFERED = "NotOffered"  # skipped: the zone does not offer the machine type or GPU, or is no zone of that cloud
CODE_NO_CAPACITY = "NoCapacity"  # failed: a stockout (GCP ZONE_RESOURCE_POOL_EXHAUSTED, AWS InsufficientInstanceCapacity ...)
CODE_QUOTA = "QuotaExceeded"  # failed: a quota refused it; skipped: a quota an earlier zone hit covers this one too
CODE_THROTTLED = "Throttled"  # failed: the API kept throttling the create call after retries
CODE_NO_NETWORK = "NoNetwork"  # skipped: nothing to attach the instance to in that zone (AWS: no subnet in the AZ)
CODE_PREEMPTED = "Preempted"  # failed: created, then the cloud reclaimed the spot capacity before it ran (deleted)
ATTEMPT_CODES = (CODE_NOT_OFFERED, CODE_NO_CAPACITY, CODE_QUOTA, CODE_THROTTLED, CODE_NO_NETWORK, CODE_PREEMPTED)

# Refusal.scope: what else a refusal rules out for the rest of this market's walk.
SCOPE_ZONE = "zone"  # only this zone (a stockout)
SCOPE_REGION = "region"  # every zone of its region (a regional quota)
SCOPE_ALL = "all"  # every zone (a global quota such as GCP's GPUS_ALL_REGIONS)


@dataclasses.dataclass
class Attempt:
    """One zone considered while placing an instance; the module returns the list as `attempts`."""

    zone: str
    spot: bool
    result: str  # ATTEMPT_CREATED | ATTEMPT_FAILED | ATTEMPT_SKIPPED
    reason: str | None = None  # human sentence: the cloud's words when it refused, ours when skipped
    code: str | None = None  # one of ATTEMPT_CODES; None when created
    cloud_code: str | None = None  # the cloud's own error code (ZONE_RESOURCE_POOL_EXHAUSTED, VcpuLimitExceeded ...)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Refusal:
    """Why a zone would not take the instance: what `Backend.classify_error` makes of a cloud error."""

    code: str  # one of ATTEMPT_CODES
    reason: str  # the cloud's message (or ours, for a refusal found without asking)
    cloud_code: str | None = None
    scope: str = SCOPE_ZONE  # SCOPE_ZONE | SCOPE_REGION | SCOPE_ALL
    quota: str | None = None  # the quota's name (metric / quota code), when code is CODE_QUOTA
    fix: str | None = None  # how to lift it (the quota, where, the console URL and the command), for the summary
    skipped: bool = False  # True when the cloud was not asked (try_zone found a missing prerequisite)


class Preempted(Exception):  # noqa: N818 - a signal to the zone walk, not an error
    """Raised by wait_for_state(watch_preemption=True): the instance was reclaimed during the create wait."""

    def __init__(self, instance, reason: str, cloud_code: str | None = None):
        super().__init__(reason)
        self.instance, self.reason, self.cloud_code = instance, reason, cloud_code


class ZoneRefused(Exception):  # noqa: N818 - a signal to the zone walk, not an error
    """Raised by a try_zone hook for a refusal it finds itself, before asking the cloud (no subnet ...)."""

    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reason)
        self.refusal = refusal


def placement_summary(spec, offer, attempts: list, fixes: list) -> str:
    """The one message for "nothing could be created": every zone tried with its result, code and reason,
    then what to do (the quotas to raise, more zones, spot_fallback, other zones)."""
    tried = "; ".join(
        f"{a.zone} ({'spot' if a.spot else 'on-demand'}): {a.result} {a.code}" + (f" - {a.reason.rstrip('. ')}" if a.reason else "")
        for a in attempts) or "no zone"
    todo = list(dict.fromkeys(fixes))
    # throttling names its own fix (wait: the limit is the account's, per region); more zones do not help it
    if any(a.code in (CODE_NO_CAPACITY, CODE_PREEMPTED) for a in attempts):
        todo.append("add more zones or regions to `zones`")
        if spec.spot and spec.spot_fallback != "on-demand":
            todo.append("set spot_fallback: on-demand to try on-demand capacity")
    if attempts and all(a.code == CODE_NOT_OFFERED for a in attempts):
        todo.append(f"none of the zones offers {offer.accelerator_type or offer.machine_type}: choose other zones, "
                    "or another gpu")
    return (f"could not create {spec.gpu} ({offer.machine_type}) for deployment {spec.name!r} in any zone. "
            f"Tried: {tried}. To fix: {'; '.join(todo) or 'see the reasons above'}.")


def _failure_code(attempts: list) -> str:
    """The error code of a failed placement: the most telling of its attempts' codes."""
    codes = {a.code for a in attempts}
    for code in (CODE_NO_CAPACITY, CODE_PREEMPTED, CODE_THROTTLED, CODE_QUOTA, CODE_NO_NETWORK):
        if code in codes:
            return code
    return CODE_NOT_OFFERED


# --- waits ------------------------------------------------------------------------------------------
# One poll interval for every provider. 2 s, not 5: a GPU VM runs 20-60 s after its create call and a
# run waits several times (create, start, stop), so a 5 s poll adds up to 5 s to each wait for nothing,
# while one read every 2 s (300 in a 600 s wait) is far below what EC2's and Compute Engine's read rate
# limits allow. Tests lower it; keep it a module attribute.
POLL_INTERVAL = 2.0
WAIT_FIX = "it may still finish: re-run to pick it up, or raise wait_timeout"
INSTANCE_WAIT_FIX = "it may still cost money: re-run to pick it up (raise wait_timeout), or remove it with state: absent"


class Deadline:
    """When a bounded wait gives up: `timeout` seconds after it was made, on the monotonic clock (a clock
    change never stretches or cuts a wait). One Deadline spans one module call - create_instance's zone
    walk, its operation waits and the wait for the machine to run share it - so `wait_timeout` bounds the
    whole call, not each wait in it."""

    def __init__(self, timeout: float):
        self.timeout = max(0, timeout)
        self.at = time.monotonic() + self.timeout

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at


def wait_for(probe, deadline: Deadline, what: str, *, fix: str = WAIT_FIX, quiet: bool = False, **details):
    """Poll until done: the one wait every backend uses.

    probe() returns (done, value, now): `value` is returned once `done`; `now` says where things stand
    ("it is pending") for the timeout message. Probes are POLL_INTERVAL seconds apart, never past the
    deadline; the first is made at once. At the deadline: SdcloudError "timed out after <N>s waiting for
    <what> (<now>); <fix>" with code Timeout (and `details`), or None when `quiet` (a wait whose end is
    not an error: host keys that never appeared)."""
    while True:
        done, value, now = probe()
        if done:
            return value
        if deadline.expired():
            if quiet:
                return None
            raise SdcloudError(f"timed out after {deadline.timeout:g}s waiting for {what} ({now}); {fix}",
                               code="Timeout", **details)
        time.sleep(min(POLL_INTERVAL, deadline.remaining()))


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
# Labelled kinds sdcloud never creates but the teardown proof lists (a user, a backup policy copying the
# volume's tags, or another tool may have labelled them): never deleted, named in the failure with how to.
KIND_SNAPSHOT = "snapshot"
KIND_IMAGE = "image"
KIND_OTHER = "other"  # AWS: any other resource the Resource Groups Tagging API finds (Resource.id is its ARN)
KEPT_KINDS = (KIND_SNAPSHOT, KIND_IMAGE, KIND_OTHER)


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
    - nothing here prompts, prints or exits; every wait goes through wait_for with one Deadline made
      from the `wait_timeout` given, so its error says what it waited for;
    - read methods (find_*, list_*, plan_create, get_firewall) change nothing: check mode calls only them;
    - resources created carry managed_labels(spec.name, spec.labels).
    """

    provider: str = ""  # "gcp" | "aws" | "runpod" | "vastai"
    has_firewall = True  # False: no firewall resource exists (pods); cloud_firewall says so, calls nothing
    spot_supported = True  # False: the provider rents no spot capacity (RunPod); gpu_instance warns, goes on-demand

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
        """All sdcloud-managed instances (any state but terminated), optionally of one deployment, in the
        zones/regions the backend was built with (GCP: every zone when none were given). The inventory
        plugin lists through this; keep it cheap to import and run."""

    def plan_create(self, spec: InstanceSpec) -> dict:
        """Read-only plan for check mode (gpu_instance returns it as `plan`, documented there): what
        create_instance would try, in the same shape on every provider."""
        from ansible.module_utils.sdcloud import catalog  # catalog imports this module

        offer = catalog.offering(self.provider, spec.gpu)
        zones = self.placement_zones(spec)
        not_offered = {z: why for z in zones if (why := self.offers_in_zone(z, offer))}
        offered = [z for z in zones if z not in not_offered]
        image, image_name = self.image_for(spec, offered[0]) if offered else (None, None)
        return {
            "provider": self.provider, "machine_type": offer.machine_type, "gpu": spec.gpu,
            "gpu_count": offer.gpu_count, "zones": offered, "zones_not_offering": not_offered, "spot": spec.spot,
            "spot_fallback": spec.spot_fallback, "image": image, "image_name": image_name,
            "disk_size_gb": spec.disk_size_gb, "hourly_price": offer.hourly(spec.spot),
            "on_demand_hourly_price": offer.on_demand_hourly, "price_note": catalog.price_note(self.provider),
        }

    def create_instance(self, spec: InstanceSpec, wait_timeout: int) -> tuple:
        """Create the instance walking spec.zones, and wait until it runs with a public IP; all of it
        within `wait_timeout` seconds.

        Spot first; then, when spec.spot_fallback == "on-demand" and no zone took it, every zone again
        on-demand. Per zone: skipped (CODE_NOT_OFFERED) when offers_in_zone says no, without a call;
        skipped (CODE_QUOTA) when a quota an earlier zone hit covers it (Refusal.scope); else try_zone,
        whose errors classify_error turns into a Refusal (record it, clean up, next zone) or an
        SdcloudError (stop). Returns (Instance, [Attempt, ...]). When no zone took it: SdcloudError with
        placement_summary() as msg and details attempts=[Attempt.to_dict(), ...]."""
        from ansible.module_utils.sdcloud import catalog  # catalog imports this module

        deadline = Deadline(wait_timeout)
        offer = catalog.offering(self.provider, spec.gpu)
        zones = self.placement_zones(spec)
        placement = self.prepare_placement(spec, offer)
        attempts: list = []
        fixes: list = []
        markets = [spec.spot] + ([False] if spec.spot and spec.spot_fallback == "on-demand" else [])
        for spot in markets:
            blocked: dict = {}  # SCOPE_ALL or a region -> the Refusal (a quota) that rules it out, this market
            for zone in zones:
                why = self.offers_in_zone(zone, offer)
                if why:
                    attempts.append(Attempt(zone, spot, ATTEMPT_SKIPPED, why, CODE_NOT_OFFERED))
                    continue
                region = self.zone_region(zone)
                block = blocked.get(SCOPE_ALL) or blocked.get(region)
                if block:
                    where = "every region" if SCOPE_ALL in blocked else region
                    why = (f"quota {block.quota} exhausted in {where}" if block.code == CODE_QUOTA
                           else f"ruled out in {where} by an earlier zone: {block.reason.rstrip('. ')}")
                    attempts.append(Attempt(zone, spot, ATTEMPT_SKIPPED, why, block.code))
                    continue
                try:
                    launched = self.try_zone(placement, zone, spot, deadline)
                except Exception as exc:  # noqa: BLE001 - classify_error decides; what it does not know is raised
                    refusal = self._refusal(exc, placement, zone, spot, attempts)
                    attempts.append(Attempt(zone, spot, ATTEMPT_SKIPPED if refusal.skipped else ATTEMPT_FAILED,
                                            refusal.reason, refusal.code, refusal.cloud_code))
                    if refusal.fix:
                        fixes.append(refusal.fix)
                    if refusal.scope != SCOPE_ZONE:
                        blocked[SCOPE_ALL if refusal.scope == SCOPE_ALL else region] = refusal
                    if not refusal.skipped:
                        self.after_refusal(placement, zone, deadline)
                    continue
                try:
                    running = self.wait_for_state(launched, RUNNING, deadline, need_ip=True, watch_preemption=True)
                except Preempted as lost:
                    # reclaimed before it ever ran: delete it (its disk bills, and the next zone's instance
                    # takes its name), then go on as after a stockout
                    attempts.append(Attempt(zone, spot, ATTEMPT_FAILED, lost.reason, CODE_PREEMPTED, lost.cloud_code))
                    self.delete_instance(lost.instance, max(1, int(deadline.remaining())))
                    continue
                attempts.append(Attempt(zone, spot, ATTEMPT_CREATED))
                return running, attempts
        raise SdcloudError(placement_summary(spec, offer, attempts, fixes), code=_failure_code(attempts),
                           attempts=[a.to_dict() for a in attempts])

    def _refusal(self, exc: Exception, placement, zone: str, spot: bool, attempts: list) -> Refusal:
        """The Refusal for an error of try_zone, or raise the SdcloudError that ends the walk (with the
        attempts so far in its details)."""
        if isinstance(exc, ZoneRefused):
            return exc.refusal
        outcome = exc if isinstance(exc, SdcloudError) else self.classify_error(exc, placement, zone, spot)
        if isinstance(outcome, Refusal):
            return outcome
        outcome.details.setdefault("attempts", [a.to_dict() for a in attempts])
        if outcome is exc:
            raise outcome
        raise outcome from exc

    def wait_for_state(self, instance: Instance, state: str, deadline: Deadline, *, need_ip: bool = False,
                       gone_ok: bool = False, watch_preemption: bool = False) -> Instance:
        """Read the instance (read_instance) every POLL_INTERVAL until it is in `state` (and has a public
        IP when need_ip); the instance as last read. gone_ok: an instance that no longer exists counts
        as arrived (deleting), and `instance` is returned. watch_preemption (the create wait): raise
        Preempted at the first read where `preemption` says the cloud reclaimed it."""
        def probe():
            current = self.read_instance(instance)
            if current is None:
                return gone_ok, instance, "it no longer exists"
            if watch_preemption:
                lost = self.preemption(current)
                if lost:
                    raise Preempted(current, *lost)
            arrived = current.state == state and bool(current.public_ip or not need_ip)
            now = f"it is {current.state}" + ("" if current.public_ip or not need_ip else ", no public IP yet")
            return arrived, current, now

        ident = f" ({instance.id})" if instance.id else ""
        what = f"instance {instance.name}{ident} in {instance.zone} to be {state}" + (" with a public IP" if need_ip else "")
        return wait_for(probe, deadline, what, fix=INSTANCE_WAIT_FIX)

    # --- placement hooks: what a provider writes so that plan_create and create_instance work ----------
    @abc.abstractmethod
    def placement_zones(self, spec: InstanceSpec) -> list:
        """The zones to try, in preference order, from spec.zones (AWS: a region expands to its zones).
        SdcloudError naming the fix when there are none or one is malformed."""

    @abc.abstractmethod
    def zone_region(self, zone: str) -> str:
        """The region of `zone`: what a regional quota (Refusal.scope SCOPE_REGION) rules out."""

    @abc.abstractmethod
    def offers_in_zone(self, zone: str, offer) -> str | None:
        """None when `zone` offers `offer` (a catalog.Offering: machine type, GPU), else a sentence saying
        why not. Read-only (check mode calls it); cache what it reads, it is asked once per zone and market."""

    @abc.abstractmethod
    def image_for(self, spec: InstanceSpec, zone: str) -> tuple:
        """(image id or self-link, image name or None) that would boot in `zone`. Read-only (the plan)."""

    def prepare_placement(self, spec: InstanceSpec, offer):
        """Once per create_instance, before the first zone: whatever every try_zone needs (GCP: the image
        resolved from its family). Returned as is to try_zone, classify_error and after_refusal."""
        return {"spec": spec, "offer": offer}

    @abc.abstractmethod
    def try_zone(self, placement, zone: str, spot: bool, deadline: Deadline) -> Instance:
        """Ask the cloud for the instance in `zone` (spot or on-demand) and return it as launched (not yet
        running: create_instance waits with wait_for_state). A refusal is raised as the cloud raised it,
        for classify_error; one found without asking (no subnet ...) as ZoneRefused."""

    @abc.abstractmethod
    def classify_error(self, exc: Exception, placement, zone: str, spot: bool):
        """What an error of try_zone means: a Refusal (the zone refused: stockout, quota, throttling - the
        walk goes on) or an SdcloudError naming the fix (anything else - the walk stops)."""

    def preemption(self, instance: Instance) -> tuple | None:
        """(reason, cloud code) when `instance`, as just read during the create wait, was reclaimed by the cloud
        (a spot preemption), else None. None by default: a provider without preemption writes none."""
        return None

    def after_refusal(self, placement, zone: str, deadline: Deadline) -> None:
        """Remove what a refused try left in `zone` (GCP: a half-created instance or boot disk). Nothing by
        default: a provider whose refused create leaves nothing behind (AWS) writes none."""
        return

    @abc.abstractmethod
    def read_instance(self, instance: Instance) -> Instance | None:
        """`instance` read again (one call, for the waits), or None when it no longer exists."""

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

    def ensure_ssh_key(self, instance: Instance, ssh_user: str, public_key: str, wait_timeout: int,
                       check: bool = False) -> bool:
        """Make the existing `instance` accept `public_key` (an OpenSSH public key line) for `ssh_user`:
        True when it changed (or would, in check mode). SdcloudError naming the fix where the cloud cannot
        change the key of an existing instance. Nothing by default."""
        return False

    def delete_hint(self, res: Resource) -> str:
        """How a user deletes `res` by hand (a kind teardown does not delete, KEPT_KINDS)."""
        return "delete it in the cloud console"

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
    elif provider == "runpod":
        from ansible.module_utils.sdcloud.runpod import RunpodBackend as cls  # noqa: PLC0415 - load what is used
    elif provider == "vastai":
        from ansible.module_utils.sdcloud.vastai import VastBackend as cls  # noqa: PLC0415 - load what is used
    else:
        raise SdcloudError(f"unknown provider {provider!r}: use gcp, aws, runpod or vastai")
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
