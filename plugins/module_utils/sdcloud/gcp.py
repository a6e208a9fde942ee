"""The GCP (Compute Engine) backend: gpu_instance, cloud_firewall and cloud_resources call it.

What it does, and the choices behind it:
- Instances are found by labels (sdcloud-managed=true, sdcloud-deployment=<name>) through
  instances.aggregatedList, in every zone: a deployment is found wherever it was placed.
  STOPPING and TERMINATED (GCE's word for "stopped") instances are returned with their state,
  never raised on (google.cloud's gcp_compute inventory fails on STOPPING, google.cloud #724).
- Instance reads (aggregatedList, get) fetch the REST JSON through GcpClients.get_json and become an
  Instance in one function (instance_from_gce): listing needs neither google-cloud-compute nor
  google.api_core imported (~2 s, most of an inventory run), so both load lazily, on the first call that
  changes something or reads anything else.
- Placement is base.Backend.create_instance; this file writes its hooks. A zone is skipped without a call
  that changes anything when its acceleratorTypes list lacks the GPU (N1 + T4) or its machineTypes lacks
  the machine type (g2/a2/a3 carry their GPUs). ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS],
  UNSUPPORTED_OPERATION or "does not have enough resources" are a stockout: next zone
  (https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-resource-availability).
  QUOTA_EXCEEDED blocks the whole region (quotas are regional; GPUS_ALL_REGIONS blocks everything);
  the summary names the quota metric, the region and how to raise it.
- Spot: provisioningModel SPOT, instanceTerminationAction STOP (the disk survives a preemption),
  onHostMaintenance TERMINATE, automaticRestart false. On-demand: onHostMaintenance TERMINATE (GPUs
  cannot live-migrate), automaticRestart true. spot_fallback "on-demand" retries the zones on-demand.
- Images are resolved at run time from a family (images.getFromFamily), so a run always gets the
  newest image of the family; the chosen image self-link is stored in instance metadata "sdcloud-image".
- Every wait goes through base.wait_for: operations with their `wait` method (a long poll, at most
  OP_WAIT_SLICE per call), states by reading the instance. An operation that ends DONE with `error`
  raises even when httpErrorStatusCode is missing (the client's own `.result()` then reports success).
- Firewall rules have no labels in the Compute Engine API. Ownership is encoded twice: the rule
  name is `sdcloud-<deployment>-ingress` and the description starts with the marker
  `sdcloud-managed=true sdcloud-deployment=<deployment>`. The sweep trusts only rules that carry the
  marker (a name prefix alone is ambiguous: "sdcloud-demo-" is also a prefix of "sdcloud-demo-2-...").
  User labels cannot be stored on a rule and are ignored there.
- Host keys: instances are created with metadata enable-guest-attributes=TRUE, so the guest agent (or
  cloud-init on Ubuntu images) publishes the SSH host keys in the guest attributes namespace `hostkeys`
  at boot; host_keys() reads them (instances.getGuestAttributes, queryPath hostkeys/) so the controller
  pins the key before its first connection, as `gcloud compute ssh` does
  (https://cloud.google.com/compute/docs/metadata/manage-guest-attributes).
- instances.insert carries a requestId: a 503/backendError (or no answer) re-sends it with the same id, an
  operation ending INTERNAL_ERROR is cleaned up and sent again, until the deadline (INSERT_RETRY_CODES).
- A spot VM found stopping/TERMINATED during the create wait was preempted (Backend.preemption): the zone walk
  deletes it and goes on. PENDING_STOP / DEPROVISIONING are "stopping"; SUSPENDING / SUSPENDED "suspended"
  (resumed by start_instance, left alone by stop_instance).
- An existing VM's `ssh-keys` metadata follows ssh_public_key (ensure_ssh_key, instances.setMetadata).
- The sweep lists every labelled kind in the project: instances, disks, addresses (regional and global),
  snapshots and images (filter labels.<k>=<v>), and the marked firewall rules.
- Every google.api_core / google.auth exception becomes SdcloudError with a message naming the fix.
"""

from __future__ import annotations

import ipaddress
import random
import re
import time
import uuid

from ansible.module_utils.sdcloud import base, catalog, errors
from ansible.module_utils.sdcloud.base import (
    CODE_NO_CAPACITY,
    CODE_QUOTA,
    DELETE_ORDER,
    KEPT_KINDS,
    KIND_ADDRESS,
    KIND_DISK,
    KIND_FIREWALL,
    KIND_IMAGE,
    KIND_INSTANCE,
    KIND_SNAPSHOT,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    PENDING,
    RUNNING,
    SCOPE_ALL,
    SCOPE_REGION,
    STOPPED,
    STOPPING,
    SUSPENDED,
    Backend,
    Deadline,
    Firewall,
    FirewallSpec,
    Instance,
    InstanceSpec,
    Refusal,
    Resource,
    SdcloudError,
    managed_labels,
    valid_host_key,
    wait_for,
)
from ansible.module_utils.sdcloud.clients import gcp_clients, lazy_module

# Loaded on first use (see the module docstring): listing instances touches neither.
compute_v1 = lazy_module("google.cloud.compute_v1")
gexc = lazy_module("google.api_core.exceptions")
google_auth_exceptions = lazy_module("google.auth.exceptions")
requests_exceptions = lazy_module("requests.exceptions")

PROVIDER = "gcp"
OP_WAIT_SLICE = 60.0  # longest single operations.wait call; the API itself returns after ~2 minutes
SET_LABELS_TRIES = 3

# Error codes (operation error.errors[].code, or reason of a direct HTTP error) meaning "this zone
# cannot place it now, try another": see the module docstring for the sources.
CAPACITY_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "UNSUPPORTED_OPERATION",
    "REGION_RESOURCE_POOL_EXHAUSTED", "insufficientCapacity",
})
CAPACITY_TEXT = "does not have enough resources"
QUOTA_CODES = frozenset({"QUOTA_EXCEEDED", "quotaExceeded"})
THROTTLE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
API_DISABLED_REASONS = frozenset({"accessNotConfigured", "SERVICE_DISABLED"})

FIREWALL_SUFFIX = "-ingress"
MARKER_RE = re.compile(r"^sdcloud-managed=true sdcloud-deployment=([a-z0-9_-]+)(?:\s|$)")
QUOTA_RE = re.compile(r"Quota '([A-Z0-9_]+)' exceeded\.\s+Limit: ([0-9.]+)(?: in region ([a-z0-9-]+)| globally)?")

# GCE instance status -> neutral state (https://cloud.google.com/compute/docs/instances/instance-life-cycle).
# PENDING_STOP (a graceful shutdown in progress) and DEPROVISIONING (resources being released on the way to
# TERMINATED) are on the way to stopped: a start must wait for TERMINATED. SUSPENDING/SUSPENDED keep the
# memory in storage, billed (https://cloud.google.com/compute/docs/instances/suspend-resume-instance): they
# need instances.resume, not start (suspended, not stopped).
_STATES = {
    "PROVISIONING": PENDING, "STAGING": PENDING, "RUNNING": RUNNING, "REPAIRING": PENDING,
    "PENDING_STOP": STOPPING, "STOPPING": STOPPING, "DEPROVISIONING": STOPPING, "TERMINATED": STOPPED,
    "STOPPED": STOPPED, "SUSPENDING": SUSPENDED, "SUSPENDED": SUSPENDED,
}
# Errors after which an instances.insert is sent again. A 503 backendError (or any 5xx answer, or no answer)
# means the request may or may not have been taken: it is re-sent with the SAME requestId, which the API
# documents as the way to retry safely (a request it already took is not done twice: "If you make the request
# again with the same request ID, the server can check if original operation with the same request ID was
# received, and if so, will ignore the second request", instances.insert, requestId,
# https://cloud.google.com/compute/docs/reference/rest/v1/instances/insert). An insert operation that ended
# DONE with INTERNAL_ERROR is finished: re-sending its requestId would answer that same failed operation,
# so after cleaning up what it left the insert is sent with a new requestId. Both stop at the deadline.
INSERT_RETRY_CODES = frozenset({"INTERNAL_ERROR", "backendError", "internalError"})

CREDENTIALS_FIX = ("run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS "
                   "(or `credentials_file`) to a service account key file")


# --------------------------------------------------------------------------------------------
# Naming helpers


def network_tag(name: str) -> str:
    """The network tag on the deployment's instance; its firewall rule targets it."""
    return f"sdcloud-{name}"


def firewall_name(name: str) -> str:
    return f"sdcloud-{name}{FIREWALL_SUFFIX}"


def firewall_marker(name: str) -> str:
    return f"{LABEL_MANAGED}=true {LABEL_DEPLOYMENT}={name}"


def zone_region(zone: str) -> str:
    """us-central1-a -> us-central1 (GCE zone names are <region>-<letter>)."""
    return zone.rsplit("-", 1)[0] if zone.count("-") >= 2 else zone


def _last(url: str) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def _sorted_cidrs(ranges) -> list:
    """CIDRs in address order (as cloud_firewall sorts them), so equal sets compare equal."""
    def key(cidr):
        try:
            return (0, ipaddress.ip_network(cidr, strict=False).network_address, cidr)
        except ValueError:
            return (1, ipaddress.ip_address("0.0.0.0"), cidr)
    return sorted(ranges, key=key)


def label_filter(deployment: str | None = None) -> str:
    """A list filter for sdcloud's labels (GCE filter syntax: parenthesised expressions, AND)."""
    expr = f'(labels.{LABEL_MANAGED} = "true")'
    if deployment:
        expr += f' AND (labels.{LABEL_DEPLOYMENT} = "{deployment}")'
    return expr


# --------------------------------------------------------------------------------------------
# Error mapping


def _reasons(exc) -> set:
    """Every code/reason an api_core exception carries: operation errors (proto Errors with .code),
    direct HTTP errors (dicts with "reason"), and the google.rpc.ErrorInfo reason."""
    out = set()
    for err in getattr(exc, "errors", None) or ():
        if isinstance(err, dict):
            out.update(v for v in (err.get("reason"), err.get("code")) if isinstance(v, str))
        else:
            code = getattr(err, "code", None)
            if isinstance(code, str) and code:
                out.add(code)
    reason = getattr(exc, "reason", None)
    if reason:
        out.add(reason)
    return out


def _message(exc) -> str:
    return getattr(exc, "message", None) or str(exc)


def quota_info(source) -> dict:
    """{metric, limit, region, quota_id} from a QUOTA_EXCEEDED error: errorDetails.quotaInfo first, then
    the message text "Quota 'X' exceeded.  Limit: N in region R." (or "... globally.").
    `source`: an api_core exception or a list of operation Errors."""
    errs = source if isinstance(source, list | tuple) else (getattr(source, "errors", None) or ())
    info: dict = {}
    texts = []
    for err in errs:
        for det in getattr(err, "error_details", None) or ():
            qi = getattr(det, "quota_info", None)
            if qi and qi.metric_name and "metric" not in info:
                info["metric"] = qi.metric_name.rsplit("/", 1)[-1].upper()
                info["quota_id"] = qi.limit_name or None
                info["limit"] = qi.limit
                info["region"] = dict(qi.dimensions).get("region")
        msg = err.get("message") if isinstance(err, dict) else getattr(err, "message", None)
        if msg:
            texts.append(msg)
    if not isinstance(source, list | tuple):
        texts.append(_message(source))
    for text in texts:
        m = QUOTA_RE.search(text or "")
        if m:
            info.setdefault("metric", m.group(1))
            info.setdefault("limit", float(m.group(2)))
            info.setdefault("region", m.group(3))
            break
    return info


def quota_help(project: str, metric: str, region: str | None, quota_id: str | None = None,
               need: int | None = None) -> str:
    """How to raise a Compute Engine quota: console URL and the gcloud command."""
    quota_id = quota_id or (metric.replace("_", "-") + ("-per-project" if not region else "-per-project-region"))
    dims = f" --dimensions=region={region}" if region else ""
    want = need or 1
    return (f"request more at https://console.cloud.google.com/iam-admin/quotas?project={project} (filter on "
            f"{metric}{', region ' + region if region else ''}) or run `gcloud quotas preferences create "
            f"--service=compute.googleapis.com --project={project} --quota-id={quota_id} "
            f"--preferred-value={want}{dims}`")


def gcp_error(exc, doing: str, project: str, where: str | None = None) -> SdcloudError:
    """Map any google.api_core / google.auth / transport exception raised while `doing` to SdcloudError."""
    at = f" in {where}" if where else ""
    if isinstance(exc, SdcloudError):
        return exc
    if isinstance(exc, google_auth_exceptions.DefaultCredentialsError):
        return SdcloudError(f"no GCP credentials found while {doing}: {CREDENTIALS_FIX}", code="NoCredentials")
    if isinstance(exc, google_auth_exceptions.RefreshError):
        return SdcloudError(f"GCP credentials were refused while {doing} ({exc}): they expired or were revoked; "
                            f"{CREDENTIALS_FIX}", code="RefreshError")
    if isinstance(exc, requests_exceptions.RequestException):
        return SdcloudError(f"cannot reach the Compute Engine API while {doing} ({exc}): check the network, a "
                            "proxy, or the endpoint override (`endpoint` / SDCLOUD_GCP_ENDPOINT)",
                            code="EndpointConnection")
    if not isinstance(exc, gexc.GoogleAPICallError):
        return SdcloudError(f"unexpected error while {doing}{at}: {exc}", code=type(exc).__name__)
    reasons = _reasons(exc)
    msg = _message(exc)
    code = next(iter(sorted(reasons)), None) or type(exc).__name__
    if isinstance(exc, gexc.Unauthorized):
        fix = f"the credentials were not accepted: {CREDENTIALS_FIX}"
        code = "UNAUTHENTICATED"
    elif reasons & API_DISABLED_REASONS or "has not been used in project" in msg:
        fix = (f"enable the Compute Engine API: https://console.cloud.google.com/apis/library/compute.googleapis.com"
               f"?project={project} or `gcloud services enable compute.googleapis.com --project {project}`, "
               "wait a minute, re-run")
        code = "SERVICE_DISABLED"
    elif reasons & QUOTA_CODES:
        q = quota_info(exc)
        fix = quota_help(project, q.get("metric", "the quota named above"), q.get("region"), q.get("quota_id"))
        code = "QUOTA_EXCEEDED"
    elif reasons & THROTTLE_REASONS or isinstance(exc, gexc.TooManyRequests):
        fix = "the API rate limit was hit even after retries: wait a minute and re-run, or run fewer plays at once"
    elif "resourceInUseByAnotherResource" in reasons:
        fix = "it is still in use by the resource named in the message: delete that one first, or re-run in a minute"
    elif isinstance(exc, gexc.Forbidden):
        fix = ("the account lacks permission: grant it roles/compute.instanceAdmin.v1 and "
               f"roles/compute.securityAdmin on project {project} (or use other credentials: {CREDENTIALS_FIX})")
    elif isinstance(exc, gexc.NotFound) and (f"'projects/{project}'" in msg or msg.endswith(f"projects/{project}")):
        fix = (f"GCP project {project!r} does not exist or is not visible to these credentials: check `project` "
               "(the project ID, not its name; `gcloud projects list`)")
        code = "PROJECT_NOT_FOUND"
    elif isinstance(exc, gexc.NotFound):
        fix = "it does not exist (deleted already, or another zone/project?): check `zones`/`project` and re-run"
    elif isinstance(exc, gexc.Conflict):
        fix = "it exists already (created by an earlier run?): re-run to pick it up"
    elif isinstance(exc, gexc.PreconditionFailed):
        fix = "it changed while sdcloud updated it: re-run"
    elif isinstance(exc, gexc.BadRequest):
        fix = "Compute Engine rejected the request: see its message; fix the value it names"
    elif isinstance(exc, gexc.ServerError):
        fix = "Compute Engine had an internal error: re-run in a few minutes"
    else:
        fix = "see the message from Compute Engine"
    return SdcloudError(f"GCP {code} while {doing}{at}: {msg} -- {fix}", code=code, status=exc.code)


def _retryable_read(exc) -> bool:
    if not isinstance(exc, gexc.GoogleAPICallError):
        return False
    return (isinstance(exc, gexc.TooManyRequests | gexc.ServiceUnavailable | gexc.InternalServerError
                       | gexc.BadGateway | gexc.GatewayTimeout)
            or bool(_reasons(exc) & THROTTLE_REASONS)) and not (_reasons(exc) & (CAPACITY_CODES | QUOTA_CODES))


def _retryable_write(exc) -> bool:
    """A mutation is retried only when the API refused it before doing anything (rate limits)."""
    return isinstance(exc, gexc.GoogleAPICallError) and (
        isinstance(exc, gexc.TooManyRequests) or bool(_reasons(exc) & THROTTLE_REASONS))


class _OperationFailed(Exception):
    """An operation ended DONE with error; `errors` are the proto Errors (code, message, error_details)."""

    def __init__(self, op):
        self.op = op
        self.errors = list(op.error.errors)
        self.codes = {e.code for e in self.errors if e.code}
        self.text = "; ".join(f"{e.code}: {e.message}" for e in self.errors) or op.http_error_message
        self.message = self.text
        super().__init__(self.text)


# --------------------------------------------------------------------------------------------


def instance_from_gce(d: dict) -> Instance:
    """base.Instance from an instance's REST JSON (instances.get / aggregatedList): the one place a GCE
    instance becomes an Instance."""
    zone = _last(d.get("zone"))
    mt = _last(d.get("machineType"))
    accels = d.get("guestAccelerators") or []
    accel = _last(accels[0].get("acceleratorType")) if accels else None
    offer = catalog.find_offering(PROVIDER, mt, accel)
    sched = d.get("scheduling") or {}
    spot = sched.get("provisioningModel") == "SPOT" or bool(sched.get("preemptible"))
    nics = d.get("networkInterfaces") or []
    nic = nics[0] if nics else {}
    public_ip = next((ac["natIP"] for ac in nic.get("accessConfigs") or [] if ac.get("natIP")), None)
    meta = {item.get("key"): item.get("value") for item in (d.get("metadata") or {}).get("items") or []}
    ssh_user = None
    if meta.get("ssh-keys"):
        ssh_user = meta["ssh-keys"].splitlines()[0].split(":", 1)[0] or None
    boot = next((disk for disk in d.get("disks") or [] if disk.get("boot")), None)
    size = boot.get("diskSizeGb") if boot else None
    return Instance(
        name=d["name"], provider=PROVIDER, id=str(d.get("id", "")), zone=zone, region=zone_region(zone),
        state=_STATES.get(d.get("status"), PENDING), gpu=offer.gpu if offer else None, machine_type=mt, spot=spot,
        public_ip=public_ip, private_ip=nic.get("networkIP") or None, labels=dict(d.get("labels") or {}),
        created=d.get("creationTimestamp") or None, hourly_price=offer.hourly(spot) if offer else None,
        ssh_user=ssh_user, image=meta.get("sdcloud-image"), disk_size_gb=int(size) if size else None,
    )


class GcpBackend(Backend):
    provider = PROVIDER

    def __init__(self, project: str, zones=None, endpoint: str | None = None, credentials_file: str | None = None,
                 clients=None):
        self.project = project
        self.zones = list(zones or [])
        self.endpoint = endpoint
        self.gc = clients or gcp_clients(project, endpoint=endpoint, credentials_file=credentials_file)
        self._offer_cache: dict = {}

    @classmethod
    def from_params(cls, params: dict) -> GcpBackend:
        project = params.get("project")
        if not project:
            raise SdcloudError("provider gcp needs `project` (the GCP project ID), or GOOGLE_CLOUD_PROJECT / "
                               "CLOUDSDK_CORE_PROJECT in the environment")
        return cls(project, zones=params.get("zones") or [], endpoint=params.get("endpoint"),
                   credentials_file=params.get("credentials_file"))

    # ---- thin call wrappers -----------------------------------------------------------------
    def _read(self, fn, doing: str, where: str | None = None):
        """A call that changes nothing: retried on throttling and transient server errors."""
        try:
            return errors.retry(fn, is_retryable=_retryable_read)
        except Exception as exc:
            raise gcp_error(exc, doing, self.project, where) from exc

    def _write(self, fn, doing: str, where: str | None = None):
        """A call that changes something: retried only on rate limits; returns the compute.Operation."""
        try:
            return errors.retry(fn, is_retryable=_retryable_write)
        except Exception as exc:
            raise gcp_error(exc, doing, self.project, where) from exc

    def _wait_op(self, op, what: str, deadline: Deadline):
        """Wait for `op` (a compute.Operation) to be DONE, until `deadline`. Raises _OperationFailed when it
        ended with an error, SdcloudError (code Timeout) when the deadline passed first."""
        done = compute_v1.Operation.Status.DONE
        current = op

        def probe():
            nonlocal current
            if current.status != done:
                seconds = max(1.0, min(OP_WAIT_SLICE, deadline.remaining()))
                current = self._read(lambda op=current, t=seconds: self._wait_call(op, t), f"waiting for {what}")
            return current.status == done, current, \
                f"operation {current.name} is {compute_v1.Operation.Status(current.status).name}"

        current = wait_for(probe, deadline, what, operation=op.name)
        if (current.error and current.error.errors) or current.http_error_status_code >= 400:
            raise _OperationFailed(current)
        return current

    def _wait_call(self, op, seconds: float):
        """One operations.wait call on the operation's scope (zone, region or global)."""
        if op.zone:
            return self.gc.zone_operations.wait(project=self.project, zone=_last(op.zone), operation=op.name,
                                                timeout=seconds + 10)
        if op.region:
            return self.gc.region_operations.wait(project=self.project, region=_last(op.region),
                                                  operation=op.name, timeout=seconds + 10)
        return self.gc.global_operations.wait(project=self.project, operation=op.name, timeout=seconds + 10)

    def _op(self, call, what: str, deadline: Deadline, where: str | None = None):
        """Start a mutation and wait for it; operation errors become SdcloudError."""
        op = self._write(call, what, where)
        try:
            return self._wait_op(op, what, deadline)
        except _OperationFailed as failed:
            raise self._op_error(failed, what, where) from failed

    def _op_error(self, failed: _OperationFailed, what: str, where: str | None) -> SdcloudError:
        at = f" in {where}" if where else ""
        if failed.codes & QUOTA_CODES:
            q = quota_info(failed.errors)
            return SdcloudError(f"GCP QUOTA_EXCEEDED while {what}{at}: {failed.text} -- "
                                + quota_help(self.project, q.get("metric", "?"), q.get("region"), q.get("quota_id")),
                                code="QUOTA_EXCEEDED")
        code = next(iter(sorted(failed.codes)), "OPERATION_FAILED")
        return SdcloudError(f"GCP {code} while {what}{at}: {failed.text} -- see the message from Compute Engine; "
                            "re-run once it is fixed", code=code)

    # ---- reading instances (REST JSON, see the module docstring) -------------------------------
    def _aggregated_instances(self, deployment: str | None = None) -> list:
        """The labelled instances of every zone, as REST JSON, all pages."""
        params = {"filter": label_filter(deployment)}
        found = []
        while True:
            page = self._read(lambda p=dict(params): self.gc.get_json("aggregated/instances", p),
                              "listing instances (instances.aggregatedList)")
            for scoped in (page.get("items") or {}).values():
                found.extend(scoped.get("instances") or ())
            if not page.get("nextPageToken"):
                return found
            params["pageToken"] = page["nextPageToken"]

    def _get(self, zone: str, name: str, missing_ok: bool = False) -> dict | None:
        """The instance's REST JSON; None when it does not exist and missing_ok (else SdcloudError)."""
        try:
            return errors.retry(lambda: self.gc.get_json(f"zones/{zone}/instances/{name}"),
                                is_retryable=_retryable_read)
        except Exception as exc:
            if missing_ok and isinstance(exc, gexc.NotFound):
                return None
            raise gcp_error(exc, f"reading instance {name}", self.project, zone) from exc

    def find_instance(self, name: str) -> Instance | None:
        found = [instance_from_gce(d) for d in self._aggregated_instances(name)]
        if len(found) > 1:
            where = ", ".join(f"{i.name} in {i.zone}" for i in found)
            raise SdcloudError(f"more than one instance is labelled {LABEL_DEPLOYMENT}={name}: {where} -- delete "
                               "the extra ones (gcloud compute instances delete NAME --zone ZONE) or relabel them",
                               code="Ambiguous")
        return found[0] if found else None

    def list_instances(self, deployment: str | None = None) -> list:
        found = [instance_from_gce(d) for d in self._aggregated_instances(deployment)]
        if self.zones:
            found = [i for i in found if i.zone in self.zones or i.region in self.zones]
        return sorted(found, key=lambda i: (i.name, i.zone))

    def read_instance(self, instance: Instance) -> Instance | None:
        d = self._get(instance.zone, instance.name, missing_ok=True)
        return instance_from_gce(d) if d is not None else None

    def host_keys(self, instance: Instance, timeout: int) -> list:
        """The SSH host keys the guest published in guest attributes, "type base64" sorted; waits up to
        `timeout` s for them (they appear a few seconds after boot). [] when none came: an image without
        the guest agent, or guest attributes disabled by an organisation policy."""
        request = compute_v1.GetGuestAttributesInstanceRequest(project=self.project, zone=instance.zone,
                                                               instance=instance.name, query_path="hostkeys/")

        def probe():
            try:
                ga = errors.retry(lambda: self.gc.instances.get_guest_attributes(request=request),
                                  is_retryable=_retryable_read)
            except gexc.NotFound:
                return False, [], "nothing published yet"
            except Exception as exc:
                raise gcp_error(exc, f"reading the host keys of {instance.name}", self.project, instance.zone) from exc
            keys = sorted({f"{e.key} {e.value.strip()}" for e in ga.query_value.items
                           if e.namespace == "hostkeys" and valid_host_key(e.key, e.value.strip())})
            return bool(keys), keys, "no host keys published yet"

        return wait_for(probe, Deadline(timeout), f"the host keys of {instance.name}", quiet=True) or []

    # ---- placement hooks (the zone walk is base.Backend.create_instance) -----------------------
    def placement_zones(self, spec: InstanceSpec) -> list:
        zones = list(spec.zones or self.zones)
        if not zones:
            raise SdcloudError("no zones given: set `zones` to a preference list such as "
                               "[us-central1-a, us-central1-b, us-east1-c]", code="NoZones")
        bad = [z for z in zones if z.count("-") < 2]
        if bad:
            raise SdcloudError(f"GCP needs zones, not regions: {', '.join(bad)} -- use e.g. {bad[0]}-a, {bad[0]}-b",
                               code="BadZone")
        return zones

    def zone_region(self, zone: str) -> str:
        return zone_region(zone)

    def offers_in_zone(self, zone: str, offer: catalog.Offering) -> str | None:
        """None when `zone` offers the machine type (and the GPU to attach), else why not."""
        key = (zone, offer.machine_type, offer.accelerator_type)
        if key in self._offer_cache:
            return self._offer_cache[key]
        why = None
        try:
            errors.retry(lambda: self.gc.machine_types.get(project=self.project, zone=zone,
                                                           machine_type=offer.machine_type),
                         is_retryable=_retryable_read)
        except gexc.NotFound:
            why = f"zone {zone} does not offer machine type {offer.machine_type}"
        except gexc.BadRequest as exc:
            if "zone" not in _message(exc).lower():
                raise gcp_error(exc, f"reading machine type {offer.machine_type}", self.project, zone) from exc
            why = f"zone {zone} is not a Compute Engine zone (`gcloud compute zones list`)"
        except Exception as exc:
            raise gcp_error(exc, f"reading machine type {offer.machine_type}", self.project, zone) from exc
        if why is None and offer.accelerator_type:
            request = compute_v1.ListAcceleratorTypesRequest(project=self.project, zone=zone)
            names = self._read(lambda: [a.name for a in self.gc.accelerator_types.list(request=request)],
                               "listing accelerator types", zone)
            if offer.accelerator_type not in names:
                why = f"zone {zone} does not offer GPU {offer.accelerator_type}"
        self._offer_cache[key] = why
        return why

    def image_for(self, spec: InstanceSpec, zone: str) -> tuple:
        link = self.resolve_image(spec)  # images are global: the same in every zone
        return link, _last(link)

    def resolve_image(self, spec: InstanceSpec) -> str:
        """The source image self-link for spec: an explicit image (a name in `project`, a path, or one of
        catalog.GCP_IMAGES' aliases), else the newest image of spec.image_family (or of the default)."""
        if spec.image and spec.image not in catalog.GCP_IMAGES:
            image = spec.image
            if "/" not in image:
                image = f"projects/{self.project}/global/images/{image}"
            m = re.search(r"projects/([^/]+)/global/images/(family/)?([^/]+)$", image)
            if not m:
                raise SdcloudError(f"image {spec.image!r} is not an image name or projects/P/global/images/NAME "
                                   "(or .../images/family/FAMILY): fix `image`", code="BadImage")
            proj, is_family, name = m.groups()
            if is_family:
                return self._from_family(proj, name)
            img = self._read(lambda: self.gc.images.get(project=proj, image=name), f"reading image {image}")
            return img.self_link
        family = spec.image or spec.image_family or catalog.GCP_DEFAULT_IMAGE
        if family in catalog.GCP_IMAGES:
            proj, family = catalog.GCP_IMAGES[family]
        elif "/" in family:
            proj, family = family.split("/", 1)
        else:
            proj = next((p for p, f in catalog.GCP_IMAGES.values() if f == family), self.project)
        return self._from_family(proj, family)

    def _from_family(self, proj: str, family: str) -> str:
        try:
            img = errors.retry(lambda: self.gc.images.get_from_family(project=proj, family=family),
                               is_retryable=_retryable_read)
        except gexc.NotFound as exc:
            raise SdcloudError(
                f"image family {family!r} not found in project {proj!r}: check `image_family` (list families with "
                f"`gcloud compute images list --project {proj} --no-standard-images --format='value(family)'`)",
                code="ImageNotFound") from exc
        except Exception as exc:
            raise gcp_error(exc, f"resolving image family {proj}/{family}", self.project) from exc
        return img.self_link

    def prepare_placement(self, spec: InstanceSpec, offer: catalog.Offering) -> dict:
        return {"spec": spec, "offer": offer, "image": self.resolve_image(spec)}

    def instance_body(self, spec: InstanceSpec, zone: str, spot: bool, image: str):
        """The compute_v1.Instance to insert for spec in zone."""
        offer = catalog.offering(PROVIDER, spec.gpu)
        labels = managed_labels(spec.name, spec.labels)
        if spot:
            scheduling = compute_v1.Scheduling(provisioning_model="SPOT", instance_termination_action="STOP",
                                               on_host_maintenance="TERMINATE", automatic_restart=False)
        else:
            scheduling = compute_v1.Scheduling(provisioning_model="STANDARD", on_host_maintenance="TERMINATE",
                                               automatic_restart=True)
        # enable-guest-attributes: the guest publishes its SSH host keys there (see host_keys)
        items = [compute_v1.Items(key="sdcloud-image", value=image),
                 compute_v1.Items(key="enable-guest-attributes", value="TRUE")]
        if spec.ssh_public_key:
            items.append(compute_v1.Items(key="ssh-keys", value=f"{spec.ssh_user}:{spec.ssh_public_key.strip()}"))
        body = compute_v1.Instance(
            name=spec.name,
            machine_type=f"zones/{zone}/machineTypes/{offer.machine_type}",
            labels=labels,
            tags=compute_v1.Tags(items=[network_tag(spec.name)]),
            scheduling=scheduling,
            metadata=compute_v1.Metadata(items=items),
            disks=[compute_v1.AttachedDisk(
                boot=True, auto_delete=True, type_="PERSISTENT",
                initialize_params=compute_v1.AttachedDiskInitializeParams(
                    disk_name=spec.name, source_image=image, disk_size_gb=int(spec.disk_size_gb),
                    disk_type=f"zones/{zone}/diskTypes/{offer.disk_type or 'pd-balanced'}", labels=labels))],
            network_interfaces=[compute_v1.NetworkInterface(
                network="global/networks/default",
                access_configs=[compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT",
                                                        network_tier="PREMIUM")])],
        )
        if offer.accelerator_type:
            body.guest_accelerators = [compute_v1.AcceleratorConfig(
                accelerator_type=f"zones/{zone}/acceleratorTypes/{offer.accelerator_type}",
                accelerator_count=offer.gpu_count)]
        return body

    @staticmethod
    def _creating(placement: dict, spot: bool) -> str:
        return (f"creating {'spot' if spot else 'on-demand'} instance {placement['spec'].name} "
                f"({placement['offer'].machine_type})")

    def try_zone(self, placement: dict, zone: str, spot: bool, deadline: Deadline) -> Instance:
        """Insert in one zone and wait for the operation; a refusal is raised as _OperationFailed or the
        api_core error it came as. A transient server error is retried until the deadline (INSERT_RETRY_CODES)."""
        spec = placement["spec"]
        body = self.instance_body(spec, zone, spot, placement["image"])
        what = self._creating(placement, spot)
        tries = 0
        while True:
            request = compute_v1.InsertInstanceRequest(project=self.project, zone=zone, instance_resource=body,
                                                       request_id=str(uuid.uuid4()))
            try:
                op = self._insert(request, deadline)
                self._wait_op(op, what, deadline)
            except _OperationFailed as failed:
                if not failed.codes & INSERT_RETRY_CODES or deadline.expired():
                    raise
                self.after_refusal(placement, zone, deadline)  # whatever the failed insert left behind
                tries = self._backoff(tries, deadline)
                continue
            return Instance(name=spec.name, provider=PROVIDER, id="", zone=zone, region=zone_region(zone),
                            state=PENDING, spot=spot)

    def _insert(self, request, deadline: Deadline):
        """instances.insert, re-sent with the same requestId while the API answers a transient error (5xx
        without a capacity or quota code, or no answer) or throttles, until the deadline."""
        tries = 0
        while True:
            try:
                return self.gc.instances.insert_unary(request=request)
            except Exception as exc:
                transient = isinstance(exc, requests_exceptions.ConnectionError | requests_exceptions.Timeout) or (
                    isinstance(exc, gexc.ServerError) and not _reasons(exc) & (CAPACITY_CODES | QUOTA_CODES))
                if not (transient or _retryable_write(exc)) or deadline.expired():
                    raise
            tries = self._backoff(tries, deadline)

    @staticmethod
    def _backoff(tries: int, deadline: Deadline) -> int:
        """Sleep a jittered exponential backoff (errors.RETRY_BASE/RETRY_CAP), never past the deadline."""
        time.sleep(min(deadline.remaining(), random.uniform(0, min(errors.RETRY_CAP, errors.RETRY_BASE * 2 ** tries))))
        return tries + 1

    def preemption(self, instance: Instance) -> tuple | None:
        """A spot VM that is stopping or stopped (TERMINATED) while the create waits for it to run was preempted:
        sdcloud sent no stop, and with instanceTerminationAction STOP a preemption leaves it TERMINATED
        (https://cloud.google.com/compute/docs/instances/spot#preemption-process). The cloud code is the type of
        the operation GCE records for it."""
        if instance.spot and instance.state in (STOPPING, STOPPED):
            return (f"Compute Engine reclaimed the spot capacity in {instance.zone} before {instance.name} ran "
                    f"(preempted, it is {instance.state}); it was deleted", "compute.instances.preempted")
        return None

    def classify_error(self, exc: Exception, placement: dict, zone: str, spot: bool):
        what = self._creating(placement, spot)
        if isinstance(exc, _OperationFailed):
            codes, text, source = exc.codes, exc.text, exc.errors
        elif isinstance(exc, gexc.GoogleAPICallError):
            codes, text, source = _reasons(exc), _message(exc), exc
        else:
            return gcp_error(exc, what, self.project, zone)
        if codes & QUOTA_CODES:
            q = quota_info(source)
            metric = q.get("metric", "?")
            return Refusal(CODE_QUOTA, text, "QUOTA_EXCEEDED", scope=SCOPE_REGION if q.get("region") else SCOPE_ALL,
                           quota=metric, fix=quota_help(self.project, metric, q.get("region"), q.get("quota_id"),
                                                        placement["offer"].gpu_count))
        if codes & CAPACITY_CODES or CAPACITY_TEXT in (text or ""):
            return Refusal(CODE_NO_CAPACITY, text, next(iter(sorted(codes & CAPACITY_CODES)),
                                                        "ZONE_RESOURCE_POOL_EXHAUSTED"))
        if isinstance(exc, _OperationFailed):
            return self._op_error(exc, what, zone)
        return gcp_error(exc, what, self.project, zone)

    def after_refusal(self, placement: dict, zone: str, deadline: Deadline) -> None:
        """After a refused insert nothing should remain; remove a half-created instance or boot disk."""
        name = placement["spec"].name
        gi = self._get(zone, name, missing_ok=True)
        if gi is not None and (gi.get("labels") or {}).get(LABEL_MANAGED) == "true":
            self._op(lambda: self.gc.instances.delete_unary(project=self.project, zone=zone, instance=name),
                     f"deleting half-created instance {name}", deadline, zone)
        try:
            disk = self.gc.disks.get(project=self.project, zone=zone, disk=name)
        except gexc.NotFound:
            return
        except Exception as exc:
            raise gcp_error(exc, f"checking for a left-over disk {name}", self.project, zone) from exc
        if disk.labels.get(LABEL_MANAGED) == "true" and not disk.users:
            self._op(lambda: self.gc.disks.delete_unary(project=self.project, zone=zone, disk=name),
                     f"deleting left-over boot disk {name}", deadline, zone)

    # ---- start / stop / delete ----------------------------------------------------------------
    def _wait_status(self, instance: Instance, status: str, deadline: Deadline) -> dict:
        """Wait until the instance's raw GCE status is `status` (SUSPENDING and SUSPENDED are one neutral state)."""
        def probe():
            gi = self._get(instance.zone, instance.name)
            return gi.get("status") == status, gi, f"it is {gi.get('status')}"

        return wait_for(probe, deadline, f"instance {instance.name} in {instance.zone} to be {status}",
                        fix=base.INSTANCE_WAIT_FIX)

    def start_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        deadline = Deadline(wait_timeout)
        zone, name = instance.zone, instance.name
        gi = self._get(zone, name)
        current = instance_from_gce(gi)
        if current.state == SUSPENDED:  # instances.start refuses a suspended VM: it is resumed
            if gi.get("status") != "SUSPENDED":
                self._wait_status(current, "SUSPENDED", deadline)
            self._op(lambda: self.gc.instances.resume_unary(project=self.project, zone=zone, instance=name),
                     f"resuming suspended instance {name}", deadline, zone)
            return self.wait_for_state(current, RUNNING, deadline, need_ip=True)
        if current.state == STOPPING:  # PENDING_STOP, STOPPING, DEPROVISIONING: start once it is TERMINATED
            current = self.wait_for_state(current, STOPPED, deadline)
        if current.state not in (RUNNING, PENDING):  # a pending one becomes RUNNING by itself
            what = f"starting instance {name}"
            op = self._write(lambda: self.gc.instances.start_unary(project=self.project, zone=zone, instance=name),
                             what, zone)
            try:
                self._wait_op(op, what, deadline)
            except _OperationFailed as failed:
                if failed.codes & CAPACITY_CODES or CAPACITY_TEXT in (failed.text or ""):
                    raise SdcloudError(
                        f"zone {zone} has no capacity to start {name} right now ({failed.text}): re-run later, or "
                        "delete it (state: absent; the boot disk goes with it) and create it again in other zones",
                        code=next(iter(sorted(failed.codes)), "NoCapacity")) from failed
                raise self._op_error(failed, what, zone) from failed
        return self.wait_for_state(current, RUNNING, deadline, need_ip=True)

    def stop_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        deadline = Deadline(wait_timeout)
        zone, name = instance.zone, instance.name
        current = instance_from_gce(self._get(zone, name))
        if current.state == SUSPENDED:
            return current  # gpu_instance reports it as suspended (its memory bills), it calls no stop
        if current.state not in (STOPPED, STOPPING):
            self._op(lambda: self.gc.instances.stop_unary(project=self.project, zone=zone, instance=name),
                     f"stopping instance {name}", deadline, zone)
        return self.wait_for_state(current, STOPPED, deadline)

    def delete_instance(self, instance: Instance, wait_timeout: int) -> None:
        deadline = Deadline(wait_timeout)
        zone, name = instance.zone, instance.name
        gi = self._get(zone, name, missing_ok=True)
        if gi is None:
            return
        disks = [_last(d.get("source")) for d in gi.get("disks") or []]
        self._delete_instance_op(zone, name, deadline)
        for disk in disks:  # autoDelete disks are gone already; a kept one is deleted here
            self._delete_disk_if_present(zone, disk, deadline)

    def _delete_instance_op(self, zone: str, name: str, deadline: Deadline):
        try:
            self._op(lambda: self.gc.instances.delete_unary(project=self.project, zone=zone, instance=name),
                     f"deleting instance {name}", deadline, zone)
        except SdcloudError as err:
            if err.details.get("status") != 404:
                raise

    def _delete_disk_if_present(self, zone: str, disk: str, deadline: Deadline):
        try:
            self._op(lambda: self.gc.disks.delete_unary(project=self.project, zone=zone, disk=disk),
                     f"deleting disk {disk}", deadline, zone)
        except SdcloudError as err:
            if err.details.get("status") != 404:
                raise

    def delete_instance_extras(self, name: str, wait_timeout: int) -> list:
        """Boot disks of the deployment left unattached by a half-failed create."""
        deadline = Deadline(wait_timeout)
        leftovers = [r for r in self._list_disks(name) if r.state == "unattached"]
        for res in leftovers:
            self._delete_disk_if_present(res.location, res.id, deadline)
        return leftovers

    def set_labels(self, instance: Instance, labels: dict, wait_timeout: int) -> Instance:
        """Make the instance's labels equal to managed_labels(deployment, labels) (fingerprinted update)."""
        deadline = Deadline(wait_timeout)
        deployment = instance.labels.get(LABEL_DEPLOYMENT) or instance.name
        wanted = managed_labels(deployment, labels)
        for attempt in range(SET_LABELS_TRIES):
            gi = self._get(instance.zone, instance.name)
            if dict(gi.get("labels") or {}) == wanted:
                return instance_from_gce(gi)
            req = compute_v1.InstancesSetLabelsRequest(labels=wanted, label_fingerprint=gi.get("labelFingerprint"))
            try:
                self._op(lambda req=req: self.gc.instances.set_labels_unary(
                    project=self.project, zone=instance.zone, instance=instance.name,
                    instances_set_labels_request_resource=req),
                    f"setting labels on {instance.name}", deadline, instance.zone)
            except SdcloudError as err:
                if err.details.get("status") == 412 and attempt < SET_LABELS_TRIES - 1:
                    continue  # someone changed the labels meanwhile: re-read the fingerprint
                raise
            return instance_from_gce(self._get(instance.zone, instance.name))
        raise AssertionError("unreachable")  # pragma: no cover

    def ensure_ssh_key(self, instance: Instance, ssh_user: str, public_key: str, wait_timeout: int,
                       check: bool = False) -> bool:
        """Make the instance's `ssh-keys` metadata authorize `public_key` for `ssh_user` (the line sdcloud wrote
        at creation is replaced; other users' lines are kept), with instances.setMetadata and the metadata
        fingerprint (a stale one is 412: re-read and retry). The guest agent applies it on a running VM and at
        boot (https://cloud.google.com/compute/docs/connect/add-ssh-keys#metadata)."""
        deadline = Deadline(wait_timeout)
        line = f"{ssh_user}:{public_key.strip()}"
        for attempt in range(SET_LABELS_TRIES):
            gi = self._get(instance.zone, instance.name)
            meta = gi.get("metadata") or {}
            items = [dict(i) for i in meta.get("items") or []]
            entry = next((i for i in items if i.get("key") == "ssh-keys"), None)
            lines = (entry.get("value") or "").splitlines() if entry else []
            if line in lines:
                return False
            keep = [x for x in lines if x.strip() and x.split(":", 1)[0] != ssh_user]
            if check:
                return True
            if entry is None:
                entry = {"key": "ssh-keys"}
                items.append(entry)
            entry["value"] = "\n".join([line, *keep])
            body = compute_v1.Metadata(fingerprint=meta.get("fingerprint"),
                                       items=[compute_v1.Items(key=i["key"], value=i.get("value", "")) for i in items])
            try:
                self._op(lambda body=body: self.gc.instances.set_metadata_unary(
                    project=self.project, zone=instance.zone, instance=instance.name, metadata_resource=body),
                    f"updating the ssh-keys metadata of {instance.name}", deadline, instance.zone)
            except SdcloudError as err:
                if err.details.get("status") == 412 and attempt < SET_LABELS_TRIES - 1:
                    continue  # the metadata changed meanwhile: re-read the fingerprint
                raise
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    def delete_hint(self, res: Resource) -> str:
        kind = {KIND_SNAPSHOT: "snapshots", KIND_IMAGE: "images"}.get(res.kind)
        if kind:
            return f"delete it (`gcloud compute {kind} delete {res.id} --project {self.project}`)"
        return super().delete_hint(res)

    # ---- firewall -------------------------------------------------------------------------------
    def _to_firewall(self, fw) -> Firewall:
        m = MARKER_RE.match(fw.description or "")
        labels = {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: m.group(1)} if m else {}
        ports, exact = set(), True
        for rule in fw.allowed:
            if rule.I_p_protocol != "tcp" or not rule.ports:
                exact = False
                continue
            for p in rule.ports:
                if p.isdigit():
                    ports.add(int(p))
                else:
                    exact = False
        if fw.denied or fw.direction not in ("", "INGRESS"):
            exact = False
        if m and list(fw.target_tags) != [network_tag(m.group(1))]:
            exact = False
        return Firewall(name=fw.name, provider=PROVIDER, id=str(fw.id), ports=sorted(ports),
                        source_ranges=_sorted_cidrs(fw.source_ranges), region=None, labels=labels, exact=exact)

    def get_firewall(self, name: str) -> Firewall | None:
        try:
            fw = errors.retry(lambda: self.gc.firewalls.get(project=self.project, firewall=firewall_name(name)),
                              is_retryable=_retryable_read)
        except gexc.NotFound:
            return None
        except Exception as exc:
            raise gcp_error(exc, f"reading firewall rule {firewall_name(name)}", self.project) from exc
        if not MARKER_RE.match(fw.description or ""):
            raise SdcloudError(f"firewall rule {fw.name} exists but was not made by sdcloud (its description lacks "
                               f"'{firewall_marker(name)}'): rename the deployment or delete that rule",
                               code="NotManaged")
        return self._to_firewall(fw)

    def _firewall_body(self, spec: FirewallSpec):
        return compute_v1.Firewall(
            name=firewall_name(spec.name),
            description=f"{firewall_marker(spec.name)} -- managed by sdcloud (cloud_firewall); edits are reverted",
            network="global/networks/default", direction="INGRESS", priority=1000,
            allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=[str(p) for p in sorted(spec.ports)])],
            source_ranges=_sorted_cidrs(spec.source_ranges), target_tags=[network_tag(spec.name)])

    def create_firewall(self, spec: FirewallSpec, wait_timeout: int = 300) -> Firewall:
        deadline = Deadline(wait_timeout)
        body = self._firewall_body(spec)
        self._op(lambda: self.gc.firewalls.insert_unary(project=self.project, firewall_resource=body),
                 f"creating firewall rule {body.name}", deadline)
        return self.get_firewall(spec.name)

    def update_firewall(self, current: Firewall, spec: FirewallSpec, wait_timeout: int = 300) -> Firewall:
        deadline = Deadline(wait_timeout)
        body = self._firewall_body(spec)
        patch = compute_v1.Firewall(description=body.description, allowed=body.allowed,
                                    source_ranges=body.source_ranges, target_tags=body.target_tags)
        self._op(lambda: self.gc.firewalls.patch_unary(project=self.project, firewall=current.name,
                                                       firewall_resource=patch),
                 f"updating firewall rule {current.name}", deadline)
        return self.get_firewall(spec.name)

    def delete_firewall(self, current: Firewall, wait_timeout: int = 300) -> None:
        deadline = Deadline(wait_timeout)
        try:
            self._op(lambda: self.gc.firewalls.delete_unary(project=self.project, firewall=current.name),
                     f"deleting firewall rule {current.name}", deadline)
        except SdcloudError as err:
            if err.details.get("status") != 404:
                raise

    # ---- sweep ----------------------------------------------------------------------------------
    def _list_disks(self, deployment: str | None) -> list:
        request = compute_v1.AggregatedListDisksRequest(project=self.project, filter=label_filter(deployment))
        pages = self._read(lambda: list(self.gc.disks.aggregated_list(request=request)),
                           "listing disks (disks.aggregatedList)")
        return [Resource(kind=KIND_DISK, provider=PROVIDER, id=d.name, name=d.name, location=_last(d.zone),
                         labels=dict(d.labels), state="attached" if d.users else "unattached")
                for _scope, scoped in pages for d in scoped.disks]

    def _list_json(self, path: str, deployment: str | None) -> list:
        """Every labelled item of a global list (`path`: global/snapshots ...), all pages, as REST JSON."""
        params = {"filter": label_filter(deployment)}
        found = []
        while True:
            page = self._read(lambda p=dict(params): self.gc.get_json(path, p), f"listing {path}")
            found.extend(page.get("items") or ())
            if not page.get("nextPageToken"):
                return found
            params["pageToken"] = page["nextPageToken"]

    def list_resources(self, deployment: str | None = None) -> list:
        # Every zone, whatever `zones` says: teardown must find what an earlier run placed elsewhere.
        instances = [instance_from_gce(d) for d in self._aggregated_instances(deployment)]
        out = [Resource(kind=KIND_INSTANCE, provider=PROVIDER, id=i.name, name=i.name, location=i.zone,
                        labels=i.labels, state=i.state) for i in instances]
        out += self._list_disks(deployment)
        request = compute_v1.AggregatedListAddressesRequest(project=self.project, filter=label_filter(deployment))
        pages = self._read(lambda: list(self.gc.addresses.aggregated_list(request=request)),
                           "listing addresses (addresses.aggregatedList)")
        out += [Resource(kind=KIND_ADDRESS, provider=PROVIDER, id=a.name, name=a.name, location=_last(a.region),
                         labels=dict(a.labels), state=a.status or None)
                for _scope, scoped in pages for a in scoped.addresses]
        # labelled global kinds: addresses sdcloud may reserve (deleted by teardown), and snapshots / images,
        # which sdcloud never makes but a user or a snapshot schedule may label (listed, never deleted)
        for path, kind in (("global/addresses", KIND_ADDRESS), ("global/snapshots", KIND_SNAPSHOT),
                           ("global/images", KIND_IMAGE)):
            out += [Resource(kind=kind, provider=PROVIDER, id=d["name"], name=d["name"], location="global",
                             labels=dict(d.get("labels") or {}), state=d.get("status"))
                    for d in self._list_json(path, deployment)]
        fw_request = compute_v1.ListFirewallsRequest(project=self.project, filter='name eq "sdcloud-.*"')
        rules = self._read(lambda: list(self.gc.firewalls.list(request=fw_request)), "listing firewall rules")
        for fw in rules:
            found = self._to_firewall(fw)
            if not found.labels or (deployment and found.labels.get(LABEL_DEPLOYMENT) != deployment):
                continue  # not ours (no marker), or another deployment's
            out.append(Resource(kind=KIND_FIREWALL, provider=PROVIDER, id=fw.name, name=fw.name, location="global",
                                labels=found.labels, state=None))
        return out

    def delete_resources(self, resources: list, wait_timeout: int) -> None:
        deadline = Deadline(wait_timeout)
        for kind in DELETE_ORDER:
            pending = []
            for res in (r for r in resources if r.kind == kind and r.kind not in KEPT_KINDS):
                call, what = self._delete_call(res)
                if call is None:
                    continue
                try:
                    pending.append((self._write(call, what, res.location), what, res))
                except SdcloudError as err:
                    if err.details.get("status") != 404:
                        raise
            for op, what, res in pending:  # all deletes of a kind run in parallel; wait for each
                try:
                    self._wait_op(op, what, deadline)
                except _OperationFailed as failed:
                    raise self._op_error(failed, what, res.location) from failed

    def _delete_call(self, res: Resource):
        p = self.project
        if res.kind == KIND_INSTANCE:
            return (lambda: self.gc.instances.delete_unary(project=p, zone=res.location, instance=res.id),
                    f"deleting instance {res.id}")
        if res.kind == KIND_DISK:
            return (lambda: self.gc.disks.delete_unary(project=p, zone=res.location, disk=res.id),
                    f"deleting disk {res.id}")
        if res.kind == KIND_ADDRESS and res.location == "global":
            return (lambda: self.gc.global_addresses.delete_unary(project=p, address=res.id),
                    f"deleting global address {res.id}")
        if res.kind == KIND_ADDRESS:
            return (lambda: self.gc.addresses.delete_unary(project=p, region=res.location, address=res.id),
                    f"deleting address {res.id}")
        if res.kind == KIND_FIREWALL:
            return (lambda: self.gc.firewalls.delete_unary(project=p, firewall=res.id),
                    f"deleting firewall rule {res.id}")
        return None, None


__all__ = ["GcpBackend", "firewall_name", "gcp_error", "instance_from_gce", "network_tag", "quota_help"]
