"""TEST STAND-IN -- not Google Compute Engine.

A small in-memory server that speaks the part of the Compute Engine v1 REST API that sdcloud uses,
so the GCP backend and modules can be tested with the real google-cloud-compute client
(`ClientOptions(api_endpoint="http://127.0.0.1:PORT")`, transport="rest", AnonymousCredentials), and
the backend's own REST reads (GcpClients.get_json: the same paths, JSON as the client parses it).
Google ships no Compute Engine emulator; nothing here is
observed from the real service except where the fault table below cites a public document.
Traffic stays on 127.0.0.1.

Implements (paths under /compute/v1/projects/{project}/):
- zones (list/get), regions (list/get)
- zones/{z}/acceleratorTypes (list/get), zones/{z}/machineTypes (list/get); which zone offers which
  accelerator / machine type is configurable (`accelerators=`, `machine_types=`)
- global/images/{name}, global/images/family/{family} and global/images (list) under any image
  project seeded in IMAGES (deeplearning-platform-release, ubuntu-os-cloud, debian-cloud)
- zones/{z}/instances: insert/get/list (filter, maxResults, pageToken)/delete/start/stop/setLabels
  (labelFingerprint; stale -> 412 conditionNotMet); aggregated/instances (items keyed "zones/{z}",
  a NO_RESULTS_ON_PAGE warning for empty zones). Status PROVISIONING -> STAGING -> RUNNING (driven
  by the insert operation), stop: STOPPING -> TERMINATED, start: STAGING -> RUNNING. Spot:
  scheduling.provisioningModel SPOT with instanceTerminationAction STOP|DELETE.
- zones/{z}/disks: list/get/delete, aggregated/disks. The boot disk is created with the instance
  from initializeParams (diskName, diskSizeGb, diskType, labels, sourceImage); autoDelete honoured
  when the instance is deleted; deleting a disk in use -> 400 resourceInUseByAnotherResource.
- instances.insert honours requestId: a request id it has seen answers the operation it started again
  and does nothing else. instances.suspend/resume (RUNNING -> SUSPENDING -> SUSPENDED -> STAGING ->
  RUNNING); start refuses PENDING_STOP, STOPPING, DEPROVISIONING and SUSPEND(ING|ED) (resourceNotReady).
  instances.setMetadata with the metadata fingerprint (stale -> 412). A test may set any status on
  `instances[...]["status"]` (PENDING_STOP, DEPROVISIONING ...) to play the platform.
- `preempt_on_create[zone] = n`: the next n spot VMs created in zone are preempted as they start.
- global/addresses, global/snapshots, global/images (labelled user images besides the seeded image
  projects): insert/get/list (filter)/delete.
- global/firewalls: insert/get/list/patch/delete ("IPProtocol" field).
- regions/{r}/addresses: insert/get/list/delete, aggregated/addresses.
- zones|regions|global operations: get, delete, list, `/wait`. An operation starts PENDING, is RUNNING
  on the next poll and DONE on the poll after (`op_polls`, default 2), or once `op_seconds` have
  passed; `/wait` completes it at once (unless `stuck_operations`, then `/wait` answers the
  unfinished operation after `wait_max_seconds`, like the real 2-minute cap). Effects (an instance
  turning RUNNING, a firewall appearing) happen when the operation turns DONE.

Control endpoints (also available as Python methods on GceStandin):
- POST   /_standin/faults    {"operation": "insert", "zone": "us-central1-a", "code":
          "ZONE_RESOURCE_POOL_EXHAUSTED", "as": "operation"|"http", "count": 1, "quota_metric": ...}
          `operation` is an API method ("instances.insert", "firewalls.insert", ...); a bare verb means
          "instances.<verb>". `zone`/`region`/`project` narrow the match; `count` (default: forever)
          limits how many requests it hits. `keep_disk: true` on an instances.insert fault leaves the
          boot disk behind (a half-failed create); `after_create: true` (with as "http") does the insert
          and then answers the error (the answer was lost).
- DELETE /_standin/faults    clear all faults
- GET    /_standin/requests  the request log ({method, path, api, project, zone, region, query, body,
          status}); DELETE clears it
- POST   /_standin/preempt   {"project", "zone", "name"}: preempt a spot VM (TERMINATED, or deleted
          when instanceTerminationAction is DELETE)
- POST   /_standin/config    {"op_polls", "op_seconds", "stuck_operations", "wait_max_seconds"}
- POST   /_standin/reset     drop all resources, faults and the log

Hooks: `on_instance_running(instance_dict) -> str | dict | None` is called (under the server lock) each
time an instance turns RUNNING; a returned string becomes its natIP, so an end-to-end test can back each VM
with a real local test host. A returned dict {"natIP": str, "guestAttributes": {"hostkeys/ssh-ed25519":
"AAAA...", ...}} also plays the guest writing guest attributes at boot (the guest agent publishes its SSH
host keys when the instance metadata has enable-guest-attributes=TRUE; that decision is the guest's, so it
is the hook's). `set_guest_attributes(project, zone, name, {path: value})` does the same from a test.
instances.getGuestAttributes?queryPath=<namespace>/[<key>] answers them; nothing under the path is
404 notFound (message text guessed). `on_instance_stopped(instance_dict)` / `on_instance_deleted(...)` likewise.
Without a hook, natIPs come from TEST-NET-3 (203.0.113.0/24, RFC 5737): never contact them.

Fault table (FAULTS) -- the codes, HTTP statuses and message texts follow these public documents;
where a detail is not documented it is marked "guessed" in the table:
- ZONE_RESOURCE_POOL_EXHAUSTED, ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS ("The zone '...' does not
  have enough resources available to fulfill the request. Try a different zone, or try again later."):
  https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-resource-availability
- QUOTA_EXCEEDED ("Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region us-central1.", errorDetails
  quotaInfo; metrics NVIDIA_L4_GPUS, PREEMPTIBLE_NVIDIA_L4_GPUS, GPUS_ALL_REGIONS, CPUS ...):
  https://cloud.google.com/compute/resource-usage and
  https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-bulk-vm-creation (HTTP 403
  "quotaExceeded", HTTP 503 "insufficientCapacity", HTTP 403 "rateLimitExceeded")
- UNSUPPORTED_OPERATION on create: not documented for stockouts; SkyPilot's GCP provisioner treats it
  as a per-zone capacity error "observed empirically" (skypilot-org/skypilot, sky/backends) -- shape guessed.
- Direct HTTP errors use the standard JSON error shape {"error": {"code", "message", "errors":
  [{"message", "domain", "reason"}], "status", "details"}}: https://cloud.google.com/apis/design/errors
  and https://cloud.google.com/compute/docs/api/how-tos/api-requests-responses
- SERVICE_DISABLED (403 accessNotConfigured, "Compute Engine API has not been used in project ... Enable
  it by visiting ..."), UNAUTHENTICATED (401), PERMISSION_DENIED (403): https://cloud.google.com/apis/design/errors
  (codes), message texts paraphrased from what gcloud prints.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import datetime
import hashlib
import itertools
import json
import random
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "https://www.googleapis.com/compute/v1"

# --------------------------------------------------------------------------------------------
# Seed data (not real availability data: tests choose zones and accelerators explicitly).

ZONES = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "us-east1": ["us-east1-b", "us-east1-c", "us-east1-d"],
    "us-east4": ["us-east4-a", "us-east4-b", "us-east4-c"],
    "us-west1": ["us-west1-a", "us-west1-b"],
    "europe-west4": ["europe-west4-a", "europe-west4-b", "europe-west4-c"],
}

# name -> (description, maximumCardsPerInstance, quota metric) -- quota metric names from
# https://cloud.google.com/compute/resource-usage (GPU quotas).
ACCELERATOR_TYPES = {
    "nvidia-tesla-t4": ("NVIDIA T4", 4, "NVIDIA_T4_GPUS"),
    "nvidia-l4": ("NVIDIA L4", 8, "NVIDIA_L4_GPUS"),
    "nvidia-tesla-v100": ("NVIDIA V100", 8, "NVIDIA_V100_GPUS"),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16, "NVIDIA_A100_GPUS"),
    "nvidia-a100-80gb": ("NVIDIA A100 80GB", 16, "NVIDIA_A100_80GB_GPUS"),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8, "NVIDIA_H100_GPUS"),
}

DEFAULT_ACCELERATORS = ("nvidia-tesla-t4", "nvidia-l4")

# name -> (guestCpus, memoryMb, fixed accelerator or None, count)
MACHINE_TYPES = {
    "e2-medium": (2, 4096, None, 0),
    "e2-standard-2": (2, 8192, None, 0),
    "n1-standard-4": (4, 15360, None, 0),
    "n1-standard-8": (8, 30720, None, 0),
    "n1-standard-16": (16, 61440, None, 0),
    "n1-highmem-8": (8, 53248, None, 0),
    "g2-standard-4": (4, 16384, "nvidia-l4", 1),
    "g2-standard-8": (8, 32768, "nvidia-l4", 1),
    "g2-standard-12": (12, 49152, "nvidia-l4", 1),
    "g2-standard-16": (16, 65536, "nvidia-l4", 1),
    "g2-standard-24": (24, 98304, "nvidia-l4", 2),
    "g2-standard-32": (32, 131072, "nvidia-l4", 1),
    "g2-standard-48": (48, 196608, "nvidia-l4", 4),
    "g2-standard-96": (96, 393216, "nvidia-l4", 8),
    "a2-highgpu-1g": (12, 87040, "nvidia-tesla-a100", 1),
    "a2-highgpu-2g": (24, 174080, "nvidia-tesla-a100", 2),
    "a2-ultragpu-1g": (12, 174080, "nvidia-a100-80gb", 1),
    "a3-highgpu-1g": (26, 239616, "nvidia-h100-80gb", 1),
    "a3-highgpu-8g": (208, 1916928, "nvidia-h100-80gb", 8),
}

# image project -> [(image name, family)]; the newest (last) image of a family is what
# images/family/{f} returns. Family names checked against public usage (gcloud --image-family ...).
IMAGES = {
    "deeplearning-platform-release": [
        ("common-cu124-v20250325-ubuntu-2204-py310", "common-cu124-ubuntu-2204-py310"),
        ("common-cu128-ubuntu-2204-nvidia-570-v20250924", "common-cu128-ubuntu-2204-nvidia-570"),
    ],
    "ubuntu-os-cloud": [
        ("ubuntu-2204-jammy-v20251001", "ubuntu-2204-lts"),
        ("ubuntu-2404-noble-amd64-v20251001", "ubuntu-2404-lts-amd64"),
    ],
    "debian-cloud": [("debian-12-bookworm-v20251014", "debian-12")],
}

# --------------------------------------------------------------------------------------------
# Fault table. `http`: httpErrorStatusCode / HTTP status; `http_message`: httpErrorMessage;
# `reason`: errors[].reason in the direct-HTTP form; `message`: str.format template
# ({project}, {zone}, {region}, {metric}, {limit}, {name}); `doc`: where it comes from.

DOC_AVAILABILITY = "https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-resource-availability"
DOC_QUOTA = "https://cloud.google.com/compute/resource-usage"
DOC_BULK = "https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-bulk-vm-creation"
DOC_ERRORS = "https://cloud.google.com/apis/design/errors"

FAULTS = {
    "ZONE_RESOURCE_POOL_EXHAUSTED": {
        "http": 503, "http_message": "SERVICE UNAVAILABLE", "reason": "ZONE_RESOURCE_POOL_EXHAUSTED",
        "message": "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to "
                   "fulfill the request.  Try a different zone, or try again later.",
        "doc": DOC_AVAILABILITY,
    },
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS": {
        "http": 503, "http_message": "SERVICE UNAVAILABLE", "reason": "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "message": "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to "
                   "fulfill the request.  '(resource type:compute)'.",
        "doc": DOC_AVAILABILITY,
    },
    "UNSUPPORTED_OPERATION": {  # guessed shape (SkyPilot treats it as a zonal capacity error)
        "http": 400, "http_message": "BAD REQUEST", "reason": "UNSUPPORTED_OPERATION",
        "message": "The selected machine type is not available in zone '{zone}' for the requested "
                   "provisioning model.",
        "doc": "guessed; see skypilot-org/skypilot GCP failover handling",
    },
    "QUOTA_EXCEEDED": {
        "http": 403, "http_message": "FORBIDDEN", "reason": "quotaExceeded",
        "message": "Quota '{metric}' exceeded.  Limit: {limit} in region {region}.",
        "doc": DOC_QUOTA + " ; " + DOC_BULK,
    },
    "RATE_LIMIT_EXCEEDED": {
        "http": 403, "http_message": "FORBIDDEN", "reason": "rateLimitExceeded",
        "message": "Rate Limit Exceeded", "doc": DOC_BULK,
    },
    "UNAUTHENTICATED": {
        "http": 401, "http_message": "UNAUTHORIZED", "reason": "authError",
        "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                   "cookie or other valid authentication credential.",
        "doc": DOC_ERRORS,
    },
    "PERMISSION_DENIED": {
        "http": 403, "http_message": "FORBIDDEN", "reason": "forbidden",
        "message": "Required 'compute.instances.create' permission for "
                   "'projects/{project}/zones/{zone}/instances/{name}'",
        "doc": DOC_ERRORS,
    },
    "SERVICE_DISABLED": {
        "http": 403, "http_message": "FORBIDDEN", "reason": "accessNotConfigured",
        "message": "Compute Engine API has not been used in project {project} before or it is disabled. Enable it "
                   "by visiting https://console.developers.google.com/apis/api/compute.googleapis.com/overview"
                   "?project={project} then retry.",
        "doc": DOC_ERRORS,
    },
    "BACKEND_ERROR": {
        "http": 503, "http_message": "SERVICE UNAVAILABLE", "reason": "backendError",
        "message": "Internal error. Please try again or contact Google Support.", "doc": DOC_ERRORS,
    },
    # An operation that ends DONE with an internal error: code INTERNAL_ERROR (the google.rpc code name the
    # Compute Engine error reference uses for HTTP 500); the message text is guessed.
    "INTERNAL_ERROR": {
        "http": 500, "http_message": "INTERNAL SERVER ERROR", "reason": "internalError",
        "message": "Internal error. Please try again or contact Google Support. (Code: '-1234567890')",
        "doc": DOC_ERRORS + " (message guessed)",
    },
}

_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 503: "UNAVAILABLE"}

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
CIDR_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?$")


class ApiError(Exception):
    """An HTTP error in Compute Engine's JSON error shape."""

    def __init__(self, code: int, message: str, reason: str, domain: str = "global", details=None):
        super().__init__(message)
        self.code, self.message, self.reason, self.domain, self.details = code, message, reason, domain, details

    def body(self) -> dict:
        err = {"code": self.code, "message": self.message,
               "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}]}
        if self.code in _STATUS_NAMES:
            err["status"] = _STATUS_NAMES[self.code]
        if self.details:
            err["details"] = self.details
        return {"error": err}


def _not_found(path: str) -> ApiError:
    return ApiError(404, f"The resource '{path}' was not found", "notFound")


def _invalid(field: str, value, why: str) -> ApiError:
    return ApiError(400, f"Invalid value for field '{field}': '{value}'. {why}", "invalid")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).astimezone().isoformat(timespec="milliseconds")


def fingerprint(obj) -> str:
    """An 8-byte base64 fingerprint, as GCE's labelFingerprint looks."""
    raw = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).digest()[:8]
    return base64.b64encode(raw).decode()


def _last(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _public(obj):
    """Drop internal keys (leading underscore) before a resource goes on the wire."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# List filters: the subset of GCE's filter syntax that clients send, e.g.
#   labels.sdcloud-managed = "true"
#   (labels.sdcloud-managed = "true") AND (labels.sdcloud-deployment = "demo")
#   name = "x" OR name != "y";  status = RUNNING;  name eq "sdcloud-.*" (regex)
# Anything else is answered with 400, so a client bug shows up instead of matching everything.

_TERM_RE = re.compile(r'\s*\(?\s*([A-Za-z_][\w.\-]*)\s*(=|!=|:|\beq\b|\bne\b)\s*("(?:[^"\\]|\\.)*"|[^\s()]+)\s*\)?\s*')


def parse_filter(expr: str):
    """-> (joiner, [(path, op, value)]) with joiner 'AND' or 'OR'; raises ApiError."""
    expr = (expr or "").strip()
    if not expr:
        return "AND", []
    terms, pos, joiners = [], 0, set()
    while pos < len(expr):
        m = _TERM_RE.match(expr, pos)
        if not m:
            raise _invalid("filter", expr, "Invalid list filter expression.")
        value = m.group(3)
        if value.startswith('"'):
            value = json.loads(value)
        terms.append((m.group(1), m.group(2), value))
        pos = m.end()
        j = re.match(r"(AND|OR)\s+", expr[pos:])
        if j:
            joiners.add(j.group(1))
            pos += j.end()
    if len(joiners) > 1:
        raise _invalid("filter", expr, "Mixing AND and OR needs parentheses the stand-in does not parse.")
    return (joiners.pop() if joiners else "AND"), terms


def _lookup(resource: dict, path: str):
    cur = resource
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def _term_matches(resource: dict, path: str, op: str, value: str) -> bool:
    got = _lookup(resource, path)
    got_s = None if got is None else (str(got).lower() if isinstance(got, bool) else str(got))
    if path.endswith(("Type", "zone", "region", "network")) and got_s and "/" in got_s:
        got_s = _last(got_s)
    if op == "=":
        return got_s == value
    if op == "!=":
        return got_s != value
    if op == ":":
        return got is not None and (value == "*" or value in got_s)
    regex_hit = got_s is not None and re.fullmatch(value, got_s) is not None
    return regex_hit if op == "eq" else not regex_hit


def filter_matches(resource: dict, parsed) -> bool:
    joiner, terms = parsed
    if not terms:
        return True
    hits = (_term_matches(resource, *t) for t in terms)
    return all(hits) if joiner == "AND" else any(hits)


# --------------------------------------------------------------------------------------------


class GceStandin:
    """The stand-in: state, behaviour and the HTTP server around them.

    with GceStandin(accelerators={"us-central1-a": ["nvidia-l4"]}) as gce:
        client = compute_v1.InstancesClient(client_options=ClientOptions(api_endpoint=gce.url), ...)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, zones: dict | None = None,
                 accelerators: dict | None = None, machine_types: dict | None = None,
                 projects: set | None = None, op_polls: int = 2, op_seconds: float = 5.0,
                 on_instance_running=None, on_instance_stopped=None, on_instance_deleted=None):
        self.zones = {r: list(z) for r, z in (zones or ZONES).items()}
        self.accelerators = {z: list(a) for z, a in (accelerators or {}).items()}
        self.machine_types_by_zone = {z: list(m) for z, m in (machine_types or {}).items()}
        self.projects = set(projects) if projects else None  # None: every project exists
        self.op_polls, self.op_seconds = op_polls, op_seconds
        self.stuck_operations, self.wait_max_seconds = False, 0.2
        self.on_instance_running = on_instance_running
        self.on_instance_stopped = on_instance_stopped
        self.on_instance_deleted = on_instance_deleted
        self.lock = threading.RLock()
        self._ids = itertools.count(int(time.time()) * 1000)
        self._ips = itertools.count(10)
        self.reset()
        handler = type("Handler", (_Handler,), {"standin": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = None

    # ---- lifecycle
    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="gce-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def reset(self):
        with self.lock:
            self.instances: dict = {}   # (project, zone, name) -> dict
            self.disks: dict = {}       # (project, zone, name) -> dict
            self.firewalls: dict = {}   # (project, name) -> dict
            self.addresses: dict = {}   # (project, region, name) -> dict
            self.operations: dict = {}  # (project, scope, name) -> dict  (scope: zones/x, regions/x, global)
            self.globals: dict = {}     # (project, collection, name) -> dict: global addresses, snapshots, images
            self.request_ids: dict = {}  # (project, requestId) -> the operation that request started
            self.preempt_on_create: dict = {}  # zone -> how many of the next spot VMs created there are preempted
            self.faults: list = []
            self.requests: list = []

    # ---- Python control API (same as the /_standin endpoints)
    def add_fault(self, operation: str, code: str, *, zone: str | None = None, region: str | None = None,
                  project: str | None = None, as_: str = "operation", count: int | None = None, **extra):
        if code not in FAULTS:
            raise ValueError(f"unknown fault code {code!r}; known: {sorted(FAULTS)}")
        if as_ not in ("operation", "http"):
            raise ValueError("as must be 'operation' or 'http'")
        api = operation if "." in operation else f"instances.{operation}"
        with self.lock:
            self.faults.append({"api": api, "code": code, "zone": zone, "region": region, "project": project,
                                "as": as_, "count": count, **extra})

    def clear_faults(self):
        with self.lock:
            self.faults.clear()

    def requests_for(self, api: str | None = None, method: str | None = None) -> list:
        with self.lock:
            return [r for r in self.requests if (api is None or r["api"] == api)
                    and (method is None or r["method"] == method)]

    def preempt(self, project: str, zone: str, name: str) -> dict:
        with self.lock:
            inst = self._instance(project, zone, name)
            sched = inst.get("scheduling", {})
            if sched.get("provisioningModel") != "SPOT" and not sched.get("preemptible"):
                raise ApiError(400, f"Instance '{name}' is not a spot or preemptible VM", "invalid")
            op = self._new_op(project, f"zones/{zone}", "compute.instances.preempted", inst["selfLink"],
                              inst["id"])
            self._finish(op)
            if sched.get("instanceTerminationAction") == "DELETE":
                self._remove_instance(project, zone, name)
            else:
                self._to_terminated(inst)
            return _public(op)

    # ---- helpers
    def _check_project(self, project: str):
        if self.projects is not None and project not in self.projects and project not in IMAGES:
            raise _not_found(f"projects/{project}")

    def _region_of(self, zone: str) -> str:
        for region, zones in self.zones.items():
            if zone in zones:
                return region
        # guessed from gcloud output for a mistyped zone
        raise _invalid("zone", zone, "Unknown zone.")

    def _check_zone(self, project: str, zone: str):
        self._region_of(zone)
        return zone

    def _check_region(self, region: str):
        if region not in self.zones:
            raise _not_found(f"regions/{region}")

    def _zone_accelerators(self, zone: str) -> list:
        if zone in self.accelerators:
            return self.accelerators[zone]
        return [] if self.accelerators else list(DEFAULT_ACCELERATORS)

    def _zone_machine_types(self, zone: str) -> list:
        if zone in self.machine_types_by_zone:
            return self.machine_types_by_zone[zone]
        accels = self._zone_accelerators(zone)
        return [m for m, spec in MACHINE_TYPES.items() if spec[2] is None or spec[2] in accels]

    def _natip(self) -> str:
        return f"203.0.113.{10 + next(self._ips) % 240}"

    def _instance(self, project, zone, name) -> dict:
        inst = self.instances.get((project, zone, name))
        if inst is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def _match_fault(self, api: str, project: str, zone: str | None, region: str | None):
        for f in self.faults:
            if f["api"] != api or (f["project"] and f["project"] != project):
                continue
            if f["zone"] and f["zone"] != zone:
                continue
            if f["region"] and f["region"] != (region or (zone and self._region_of(zone))):
                continue
            if f["count"] is not None:
                if f["count"] <= 0:
                    continue
                f["count"] -= 1
            return f
        return None

    def _fault_error(self, fault: dict, project: str, zone: str | None, region: str | None, *, name: str,
                     body: dict | None):
        """-> (http status, http message, operation error dict, direct-HTTP ApiError)."""
        spec = FAULTS[fault["code"]]
        region = region or (zone and self._region_of(zone)) or ""
        metric = fault.get("quota_metric") or self._quota_metric_for(body or {})
        limit = float(fault.get("limit", 0))
        message = fault.get("message") or spec["message"].format(
            project=project, zone=zone or "", region=region, metric=metric, limit=limit, name=name)
        if fault["code"] == "QUOTA_EXCEEDED" and metric == "GPUS_ALL_REGIONS":
            message = f"Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: {limit} globally."
        op_err = {"code": fault["code"], "message": message}
        details = None
        if fault["code"] == "QUOTA_EXCEEDED":
            global_metric = metric == "GPUS_ALL_REGIONS"
            quota_info = {
                "metricName": f"compute.googleapis.com/{metric.lower()}",
                "limitName": metric.replace("_", "-") + ("-per-project" if global_metric else "-per-project-region"),
                "dimensions": {"global": "global"} if global_metric else {"region": region},
                "limit": limit,
            }
            op_err["errorDetails"] = [{"quotaInfo": quota_info}]
            details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXCEEDED",
                        "domain": "compute.googleapis.com", "metadata": {"quota_metric": metric, "region": region}}]
        elif fault["code"] == "SERVICE_DISABLED":
            details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                        "domain": "googleapis.com",
                        "metadata": {"service": "compute.googleapis.com", "consumer": f"projects/{project}"}}]
        else:
            details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": fault["code"],
                        "domain": "compute.googleapis.com"}]
        http_err = ApiError(spec["http"], message, spec["reason"], details=details)
        return spec["http"], spec["http_message"], op_err, http_err

    def _quota_metric_for(self, body: dict) -> str:
        accels = body.get("guestAccelerators") or []
        accel = _last(accels[0]["acceleratorType"]) if accels else None
        if not accel:
            spec = MACHINE_TYPES.get(_last(body.get("machineType", "")))
            accel = spec[2] if spec else None
        if not accel:
            return "CPUS"
        metric = ACCELERATOR_TYPES.get(accel, ("", 0, "GPUS_ALL_REGIONS"))[2]
        spot = (body.get("scheduling") or {}).get("provisioningModel") == "SPOT" or \
            (body.get("scheduling") or {}).get("preemptible")
        return f"PREEMPTIBLE_{metric}" if spot else metric

    # ---- operations
    def _new_op(self, project: str, scope: str, op_type: str, target: str, target_id: str | None = None, *,
                on_done=None, error=None) -> dict:
        name = f"operation-{int(time.time() * 1000)}-{random.getrandbits(48):012x}"
        op = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": op_type,
            "targetLink": target, "status": "PENDING", "user": "standin@example.com", "progress": 0,
            "insertTime": _now(), "selfLink": f"{API}/projects/{project}/{scope}/operations/{name}",
            "_created": time.monotonic(), "_polls": 0, "_on_done": on_done, "_error": error,
        }
        if target_id:
            op["targetId"] = target_id
        if scope.startswith("zones/"):
            op["zone"] = f"{API}/projects/{project}/{scope}"
        elif scope.startswith("regions/"):
            op["region"] = f"{API}/projects/{project}/{scope}"
        self.operations[(project, scope, name)] = op
        return op

    def _advance(self, op: dict, force: bool = False):
        """One observation of an operation: PENDING -> RUNNING -> DONE."""
        if op["status"] == "DONE" or self.stuck_operations:
            return
        op["_polls"] += 1
        if force or op["_polls"] >= self.op_polls or time.monotonic() - op["_created"] >= self.op_seconds:
            self._finish(op)
        else:
            op["status"], op["progress"] = "RUNNING", 50
            op.setdefault("startTime", _now())
            if op["_on_done"] is not None and hasattr(op["_on_done"], "running"):
                op["_on_done"].running()

    def _finish(self, op: dict):
        if op["status"] == "DONE":
            return
        op.setdefault("startTime", _now())
        op.update(status="DONE", progress=100, endTime=_now())
        err = op.pop("_error", None)
        if err:
            status, status_msg, op_err = err
            op["error"] = {"errors": [op_err]}
            op["httpErrorStatusCode"], op["httpErrorMessage"] = status, status_msg
            done = op.get("_on_done")
            if done is not None and hasattr(done, "failed"):
                done.failed()
        elif op.get("_on_done") is not None:
            op["_on_done"]()

    def _op_scope_get(self, project: str, scope: str, name: str) -> dict:
        op = self.operations.get((project, scope, name))
        if op is None:
            raise _not_found(f"projects/{project}/{scope}/operations/{name}")
        return op

    # ---- instance state transitions
    def _to_running(self, inst: dict):
        inst["status"] = "RUNNING"
        inst["lastStartTimestamp"] = _now()
        ip = None
        if self.on_instance_running is not None:
            ip = self.on_instance_running(copy.deepcopy(_public(inst)))
            if isinstance(ip, dict):
                inst.setdefault("_guestAttributes", {}).update(ip.get("guestAttributes") or {})
                ip = ip.get("natIP")
        for nic in inst["networkInterfaces"]:
            for ac in nic.get("accessConfigs", []):
                ac["natIP"] = ip or ac.get("_reserved") or self._natip()
                ip = None  # a hook address goes on the first access config only

    def _to_terminated(self, inst: dict):
        inst["status"] = "TERMINATED"
        inst["lastStopTimestamp"] = _now()
        for nic in inst["networkInterfaces"]:
            for ac in nic.get("accessConfigs", []):
                ac.pop("natIP", None)  # an ephemeral external IP is released on stop
        if self.on_instance_stopped is not None:
            self.on_instance_stopped(copy.deepcopy(_public(inst)))

    def _remove_instance(self, project: str, zone: str, name: str):
        inst = self.instances.pop((project, zone, name), None)
        if inst is None:
            return
        for att in inst["disks"]:
            key = (project, zone, _last(att["source"]))
            disk = self.disks.get(key)
            if disk is None:
                continue
            disk["users"] = [u for u in disk.get("users", []) if u != inst["selfLink"]]
            if att.get("autoDelete"):
                self.disks.pop(key, None)
        if self.on_instance_deleted is not None:
            self.on_instance_deleted(copy.deepcopy(_public(inst)))

    def _tick_instance(self, inst: dict):
        op = inst.get("_op")
        if op is not None and op["status"] != "DONE":
            self._advance(op)

    # ---- validation of an instance body
    def _validate_instance(self, project: str, zone: str, body: dict):
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise _invalid("resource.name", name, "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if (project, zone, name) in self.instances:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                           "alreadyExists")
        self._validate_labels("resource.labels", body.get("labels") or {})
        mt_url = body.get("machineType", "")
        mt = _last(mt_url)
        m = re.search(r"zones/([^/]+)/machineTypes/", mt_url)
        if not mt or (m and m.group(1) != zone) or mt not in MACHINE_TYPES or mt not in self._zone_machine_types(zone):
            raise _invalid("resource.machineType", mt_url,
                           f"Machine type with name '{mt}' does not exist in zone '{zone}'.")
        fixed = MACHINE_TYPES[mt][2]
        accels = body.get("guestAccelerators") or []
        for i, acc in enumerate(accels):
            url = acc.get("acceleratorType", "")
            name_ = _last(url)
            zm = re.search(r"zones/([^/]+)/acceleratorTypes/", url)
            if name_ not in self._zone_accelerators(zone) or (zm and zm.group(1) != zone):
                raise _invalid(f"resource.guestAccelerators[{i}].acceleratorType", url,
                               f"Accelerator type '{name_}' does not exist in zone '{zone}'.")
            count = int(acc.get("acceleratorCount", 0))
            if count < 1 or count > ACCELERATOR_TYPES[name_][1]:
                raise _invalid(f"resource.guestAccelerators[{i}].acceleratorCount", count, "Out of range.")
            if fixed and (name_ != fixed or count != MACHINE_TYPES[mt][3]):
                raise _invalid(f"resource.guestAccelerators[{i}]", name_,
                               f"Machine type '{mt}' comes with {MACHINE_TYPES[mt][3]} x {fixed}.")
            if not fixed and not mt.startswith("n1-"):
                raise _invalid("resource.guestAccelerators", name_,
                               f"Machine type '{mt}' does not support guest accelerators.")
        has_gpu = bool(accels) or bool(fixed)
        sched = body.get("scheduling") or {}
        spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible")
        on_host = sched.get("onHostMaintenance", "TERMINATE" if spot else "MIGRATE")
        if has_gpu and on_host != "TERMINATE":
            raise _invalid("resource.scheduling.onHostMaintenance", on_host,
                           "Instances with guest accelerators do not support live migration.")
        if spot and sched.get("automaticRestart") is True:
            raise _invalid("resource.scheduling.automaticRestart", "true",
                           "Preemptible instances cannot be automatically restarted.")
        if sched.get("instanceTerminationAction") not in (None, "STOP", "DELETE"):
            raise _invalid("resource.scheduling.instanceTerminationAction", sched["instanceTerminationAction"],
                           "Must be STOP or DELETE.")
        if sched.get("provisioningModel") not in (None, "SPOT", "STANDARD"):
            raise _invalid("resource.scheduling.provisioningModel", sched["provisioningModel"],
                           "Must be SPOT or STANDARD.")
        disks = body.get("disks") or []
        boots = [d for d in disks if d.get("boot")]
        if len(boots) != 1:
            raise _invalid("resource.disks", len(boots), "Exactly one boot disk is required.")
        params = boots[0].get("initializeParams")
        if not params:
            raise _invalid("resource.disks[0].initializeParams", None, "The stand-in only creates new boot disks.")
        self._resolve_image(params.get("sourceImage", ""))
        self._validate_labels("resource.disks[0].initializeParams.labels", params.get("labels") or {})
        dname = params.get("diskName") or name
        if (project, zone, dname) in self.disks:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/disks/{dname}' already exists",
                           "alreadyExists")
        dtype = _last(params.get("diskType", "pd-standard"))
        if dtype not in ("pd-standard", "pd-balanced", "pd-ssd", "hyperdisk-balanced"):
            raise _invalid("resource.disks[0].initializeParams.diskType", params.get("diskType"),
                           "Disk type does not exist.")
        for item in (body.get("metadata") or {}).get("items", []):
            if "key" not in item:
                raise _invalid("resource.metadata.items", item, "Metadata items need a key.")

    @staticmethod
    def _validate_labels(field: str, labels: dict):
        if len(labels) > 64:
            raise _invalid(field, len(labels), "At most 64 labels.")
        for k, v in labels.items():
            if not LABEL_KEY_RE.match(k) or not LABEL_VALUE_RE.match(str(v)):
                raise _invalid(field, f"{k}={v}", "Label keys and values must be lowercase letters, digits, "
                               "'_' or '-', keys start with a letter, at most 63 characters.")

    def _resolve_image(self, source: str) -> dict:
        m = re.search(r"(?:^|/)projects/([^/]+)/global/images/(family/)?([^/]+)$", source)
        if not m:
            raise _invalid("resource.disks[0].initializeParams.sourceImage", source,
                           "Expected projects/{project}/global/images/[family/]{name}.")
        return self.image_get(m.group(1), m.group(3), family=bool(m.group(2)))

    # ---- images, zones, types
    def image_get(self, project: str, name: str, family: bool = False) -> dict:
        entries = IMAGES.get(project, [])
        hits = [e for e in entries if (e[1] if family else e[0]) == name]
        if not hits:
            kind = "images/family" if family else "images"
            raise _not_found(f"projects/{project}/global/{kind}/{name}")
        iname, fam = hits[-1]
        return {"kind": "compute#image", "id": str(int(hashlib.sha1(iname.encode()).hexdigest()[:15], 16)),
                "name": iname, "family": fam, "status": "READY", "diskSizeGb": "10", "architecture": "X86_64",
                "creationTimestamp": "2025-10-01T00:00:00.000-07:00",
                "selfLink": f"{API}/projects/{project}/global/images/{iname}"}

    def _zone_obj(self, project: str, zone: str) -> dict:
        region = self._region_of(zone)
        return {"kind": "compute#zone", "id": str(abs(hash(zone)) % 10**12), "name": zone, "status": "UP",
                "description": zone, "region": f"{API}/projects/{project}/regions/{region}",
                "selfLink": f"{API}/projects/{project}/zones/{zone}", "availableCpuPlatforms": ["Intel Cascade Lake"]}

    def _region_obj(self, project: str, region: str) -> dict:
        return {"kind": "compute#region", "name": region, "status": "UP",
                "zones": [f"{API}/projects/{project}/zones/{z}" for z in self.zones[region]],
                "selfLink": f"{API}/projects/{project}/regions/{region}"}

    def _accel_obj(self, project: str, zone: str, name: str) -> dict:
        desc, max_cards, _ = ACCELERATOR_TYPES[name]
        return {"kind": "compute#acceleratorType", "id": str(abs(hash(name)) % 10**9), "name": name,
                "description": desc, "zone": f"{API}/projects/{project}/zones/{zone}",
                "maximumCardsPerInstance": max_cards,
                "selfLink": f"{API}/projects/{project}/zones/{zone}/acceleratorTypes/{name}"}

    def _mt_obj(self, project: str, zone: str, name: str) -> dict:
        cpus, mem, accel, count = MACHINE_TYPES[name]
        obj = {"kind": "compute#machineType", "id": str(abs(hash(name)) % 10**9), "name": name,
               "description": f"{cpus} vCPUs, {mem / 1024:g} GB RAM", "guestCpus": cpus, "memoryMb": mem,
               "zone": zone, "isSharedCpu": name == "e2-medium",
               "selfLink": f"{API}/projects/{project}/zones/{zone}/machineTypes/{name}"}
        if accel:
            obj["accelerators"] = [{"guestAcceleratorType": accel, "guestAcceleratorCount": count}]
        return obj

    # ---- instances
    def instance_insert(self, project: str, zone: str, body: dict, request_id: str | None = None, *,
                        faults: bool = True) -> dict:
        """requestId: a request the server already took answers its operation again and does nothing
        (instances.insert, requestId: https://cloud.google.com/compute/docs/reference/rest/v1/instances/insert).
        A fault with `after_create: true` (an http one) does the insert, then answers the error: the answer
        was lost on the way, the case the requestId is for."""
        if request_id and (project, request_id) in self.request_ids:
            return self.request_ids[(project, request_id)]
        self._validate_instance(project, zone, body)
        name = body["name"]
        link = f"{API}/projects/{project}/zones/{zone}/instances/{name}"
        fault = self._match_fault("instances.insert", project, zone, None) if faults else None
        if fault and fault.get("after_create"):
            self.instance_insert(project, zone, body, request_id, faults=False)
            raise self._fault_error(fault, project, zone, None, name=name, body=body)[3]
        if fault:
            status, status_msg, op_err, http_err = self._fault_error(fault, project, zone, None, name=name, body=body)
            if fault["as"] == "http":
                raise http_err
            op = self._new_op(project, f"zones/{zone}", "insert", link, error=(status, status_msg, op_err))
            if fault.get("keep_disk"):
                self._create_disk_for(project, zone, body, None)
            return op
        inst = self._build_instance(project, zone, body, link)
        self.instances[(project, zone, name)] = inst

        standin = self

        class Done:
            def __call__(self):
                inst.pop("_op", None)
                standin._to_running(inst)
                if inst["scheduling"].get("provisioningModel") == "SPOT" and standin.preempt_on_create.get(zone):
                    standin.preempt_on_create[zone] -= 1  # reclaimed right after it started (tests: see preempt)
                    standin.preempt(project, zone, name)

            def running(self):
                inst["status"] = "STAGING"

        op = self._new_op(project, f"zones/{zone}", "insert", link, inst["id"], on_done=Done())
        inst["_op"] = op
        if request_id:
            self.request_ids[(project, request_id)] = op
        return op

    def _create_disk_for(self, project: str, zone: str, body: dict, users) -> dict:
        boot = next(d for d in body["disks"] if d.get("boot"))
        params = boot["initializeParams"]
        dname = params.get("diskName") or body["name"]
        image = self._resolve_image(params["sourceImage"])
        size = str(params.get("diskSizeGb") or image["diskSizeGb"])
        dtype = _last(params.get("diskType", "pd-standard"))
        disk = {
            "kind": "compute#disk", "id": str(next(self._ids)), "creationTimestamp": _now(), "name": dname,
            "sizeGb": size, "zone": f"{API}/projects/{project}/zones/{zone}", "status": "READY",
            "selfLink": f"{API}/projects/{project}/zones/{zone}/disks/{dname}",
            "sourceImage": image["selfLink"], "sourceImageId": image["id"],
            "type": f"{API}/projects/{project}/zones/{zone}/diskTypes/{dtype}",
            "labels": dict(params.get("labels") or {}), "users": list(users or []),
        }
        disk["labelFingerprint"] = fingerprint(disk["labels"])
        self.disks[(project, zone, dname)] = disk
        return disk

    def _build_instance(self, project: str, zone: str, body: dict, link: str) -> dict:
        name = body["name"]
        disk = self._create_disk_for(project, zone, body, [link])
        boot = next(d for d in body["disks"] if d.get("boot"))
        mt = _last(body["machineType"])
        nics = []
        for i, nic in enumerate(body.get("networkInterfaces") or [{}]):
            acs = [{"kind": "compute#accessConfig", "type": ac.get("type", "ONE_TO_ONE_NAT"),
                    "name": ac.get("name", "External NAT"), "networkTier": ac.get("networkTier", "PREMIUM"),
                    **({"_reserved": ac["natIP"]} if ac.get("natIP") else {})}
                   for ac in nic.get("accessConfigs", [])]
            network = nic.get("network") or "global/networks/default"
            if not network.startswith("http"):
                network = f"{API}/projects/{project}/{network.split('projects/' + project + '/')[-1]}"
            nics.append({"kind": "compute#networkInterface", "name": f"nic{i}", "network": network,
                         "networkIP": f"10.128.0.{next(self._ips) % 250 + 2}", "accessConfigs": acs,
                         "fingerprint": fingerprint([name, i])})
        sched = dict(body.get("scheduling") or {})
        spot = sched.get("provisioningModel") == "SPOT"
        sched.setdefault("provisioningModel", "STANDARD")
        sched.setdefault("onHostMaintenance", "TERMINATE" if spot else "MIGRATE")
        sched.setdefault("automaticRestart", not spot)
        sched.setdefault("preemptible", spot)
        if spot:
            sched.setdefault("instanceTerminationAction", "STOP")
        accels = [{"acceleratorType": a["acceleratorType"] if a["acceleratorType"].startswith("http")
                   else f"{API}/projects/{project}/zones/{zone}/acceleratorTypes/{_last(a['acceleratorType'])}",
                   "acceleratorCount": int(a["acceleratorCount"])} for a in body.get("guestAccelerators") or []]
        fixed = MACHINE_TYPES[mt]
        if fixed[2] and not accels:
            accels = [{"acceleratorType": f"{API}/projects/{project}/zones/{zone}/acceleratorTypes/{fixed[2]}",
                       "acceleratorCount": fixed[3]}]
        labels = dict(body.get("labels") or {})
        metadata = dict(body.get("metadata") or {})
        metadata = {"kind": "compute#metadata", "items": list(metadata.get("items", [])),
                    "fingerprint": fingerprint(metadata.get("items", []))}
        tags = {"items": list((body.get("tags") or {}).get("items", []))}
        tags["fingerprint"] = fingerprint(tags["items"])
        inst = {
            "kind": "compute#instance", "id": str(next(self._ids)), "creationTimestamp": _now(), "name": name,
            "description": body.get("description", ""), "tags": tags,
            "machineType": f"{API}/projects/{project}/zones/{zone}/machineTypes/{mt}",
            "status": "PROVISIONING", "zone": f"{API}/projects/{project}/zones/{zone}",
            "canIpForward": False, "networkInterfaces": nics,
            "disks": [{"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                       "source": disk["selfLink"], "deviceName": boot.get("deviceName", disk["name"]),
                       "index": 0, "boot": True, "autoDelete": bool(boot.get("autoDelete", True)),
                       "interface": "SCSI", "diskSizeGb": disk["sizeGb"]}],
            "metadata": metadata, "selfLink": link, "scheduling": sched, "cpuPlatform": "Intel Cascade Lake",
            "labels": labels, "labelFingerprint": fingerprint(labels), "startRestricted": False,
            "deletionProtection": False, "fingerprint": fingerprint([name, time.time()]),
        }
        if accels:
            inst["guestAccelerators"] = accels
        if body.get("serviceAccounts"):
            inst["serviceAccounts"] = body["serviceAccounts"]
        return inst

    def set_guest_attributes(self, project: str, zone: str, name: str, values: dict):
        """What the guest does with PUT .../computeMetadata/v1/instance/guest-attributes/<namespace>/<key>."""
        with self.lock:
            self._instance(project, zone, name).setdefault("_guestAttributes", {}).update(values)

    def instance_guest_attributes(self, project: str, zone: str, name: str, query: dict) -> dict:
        """A namespace query ("hostkeys/") lists queryValue.items; a full path ("hostkeys/ssh-ed25519")
        answers variableKey/variableValue, as the REST reference describes."""
        inst = self._instance(project, zone, name)
        path = (query.get("queryPath") or [""])[0]
        attrs = inst.get("_guestAttributes") or {}
        link = f"{API}/projects/{project}/zones/{zone}/instances/{name}/getGuestAttributes"
        found = {k: v for k, v in attrs.items() if not path or k == path or (path.endswith("/") and k.startswith(path))}
        if not found:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{path}")
        if path and not path.endswith("/"):
            return {"kind": "compute#guestAttributes", "variableKey": path, "variableValue": found[path], "selfLink": link}
        items = [{"namespace": k.split("/", 1)[0], "key": k.split("/", 1)[1], "value": v} for k, v in sorted(found.items())]
        return {"kind": "compute#guestAttributes", "queryPath": path, "queryValue": {"items": items}, "selfLink": link}

    def instance_get(self, project: str, zone: str, name: str) -> dict:
        inst = self._instance(project, zone, name)
        self._tick_instance(inst)
        return inst

    def instance_delete(self, project: str, zone: str, name: str) -> dict:
        inst = self._instance(project, zone, name)
        err = self._op_fault("instances.delete", project, zone, None, name)

        def done():
            self._remove_instance(project, zone, name)

        if err is None and inst["status"] in ("RUNNING", "STAGING", "PROVISIONING"):
            inst["status"] = "STOPPING"
        return self._new_op(project, f"zones/{zone}", "delete", inst["selfLink"], inst["id"], on_done=done,
                            error=err)

    def instance_stop(self, project: str, zone: str, name: str) -> dict:
        inst = self._instance(project, zone, name)
        err = self._op_fault("instances.stop", project, zone, None, name)
        if inst["status"] in ("TERMINATED", "STOPPED", "SUSPENDED") or err:
            return self._new_op(project, f"zones/{zone}", "stop", inst["selfLink"], inst["id"], error=err)
        standin = self

        class Done:
            def __call__(self):
                standin._to_terminated(inst)

            def running(self):
                pass

        inst["status"] = "STOPPING"
        op = self._new_op(project, f"zones/{zone}", "stop", inst["selfLink"], inst["id"], on_done=Done())
        inst["_op"] = op
        return op

    def instance_start(self, project: str, zone: str, name: str) -> dict:
        inst = self._instance(project, zone, name)
        if inst["status"] in ("STOPPING", "PENDING_STOP", "DEPROVISIONING", "SUSPENDING", "SUSPENDED"):
            raise ApiError(400, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready",
                           "resourceNotReady")
        err = self._op_fault("instances.start", project, zone, None, name)
        if inst["status"] != "TERMINATED" or err:
            return self._new_op(project, f"zones/{zone}", "start", inst["selfLink"], inst["id"], error=err)
        standin = self

        class Done:
            def __call__(self):
                inst.pop("_op", None)
                standin._to_running(inst)

            def running(self):
                pass

        inst["status"] = "STAGING"
        op = self._new_op(project, f"zones/{zone}", "start", inst["selfLink"], inst["id"], on_done=Done())
        inst["_op"] = op
        return op

    def instance_suspend(self, project: str, zone: str, name: str) -> dict:
        """RUNNING -> SUSPENDING -> SUSPENDED (https://cloud.google.com/compute/docs/instances/suspend-resume-instance)."""
        inst = self._instance(project, zone, name)
        if inst["status"] != "RUNNING":
            raise ApiError(400, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready",
                           "resourceNotReady")  # message guessed

        def done():
            inst["status"] = "SUSPENDED"
            for nic in inst["networkInterfaces"]:
                for ac in nic.get("accessConfigs", []):
                    ac.pop("natIP", None)  # guessed: an ephemeral address is released as on stop

        inst["status"] = "SUSPENDING"
        op = self._new_op(project, f"zones/{zone}", "suspend", inst["selfLink"], inst["id"], on_done=done)
        inst["_op"] = op
        return op

    def instance_resume(self, project: str, zone: str, name: str) -> dict:
        """SUSPENDED -> STAGING -> RUNNING; anything but SUSPENDED is refused (message guessed)."""
        inst = self._instance(project, zone, name)
        if inst["status"] != "SUSPENDED":
            raise ApiError(400, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not suspended",
                           "resourceNotReady")

        def done():
            inst.pop("_op", None)
            self._to_running(inst)

        inst["status"] = "STAGING"
        op = self._new_op(project, f"zones/{zone}", "resume", inst["selfLink"], inst["id"], on_done=done)
        inst["_op"] = op
        return op

    def instance_set_metadata(self, project: str, zone: str, name: str, body: dict) -> dict:
        """instances.setMetadata: the request carries the current metadata fingerprint; a stale one is 412
        conditionNotMet (https://cloud.google.com/compute/docs/metadata/setting-custom-metadata#rest)."""
        inst = self._instance(project, zone, name)
        if body.get("fingerprint") != inst["metadata"]["fingerprint"]:
            raise ApiError(412, "Supplied fingerprint does not match current metadata fingerprint.", "conditionNotMet")
        items = list(body.get("items") or [])
        for item in items:
            if "key" not in item:
                raise _invalid("metadata.items", item, "Metadata items need a key.")
        inst["metadata"] = {"kind": "compute#metadata", "items": items, "fingerprint": fingerprint([items, time.time()])}
        op = self._new_op(project, f"zones/{zone}", "setMetadata", inst["selfLink"], inst["id"])
        self._finish(op)
        return op

    # ---- global labelled kinds: addresses, snapshots, user images (insert/list/get/delete)
    GLOBAL_KINDS = {"addresses": "compute#address", "snapshots": "compute#snapshot", "images": "compute#image"}

    def global_insert(self, project: str, collection: str, body: dict) -> dict:
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise _invalid("resource.name", name, "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if (project, collection, name) in self.globals:
            raise ApiError(409, f"The resource 'projects/{project}/global/{collection}/{name}' already exists",
                           "alreadyExists")
        self._validate_labels("resource.labels", body.get("labels") or {})
        link = f"{API}/projects/{project}/global/{collection}/{name}"
        res = {"kind": self.GLOBAL_KINDS[collection], "id": str(next(self._ids)), "creationTimestamp": _now(),
               "name": name, "labels": dict(body.get("labels") or {}), "selfLink": link,
               "status": "RESERVED" if collection == "addresses" else "READY"}
        res.update({k: v for k, v in body.items() if k in ("sourceDisk", "description", "address")})
        res["labelFingerprint"] = fingerprint(res["labels"])
        return self._new_op(project, "global", "insert", link, res["id"],
                            on_done=lambda: self.globals.__setitem__((project, collection, name), res))

    def global_list(self, project: str, collection: str, query: dict) -> dict:
        items = [r for (pp, c, _), r in self.globals.items() if pp == project and c == collection]
        if collection == "images":
            items += [self.image_get(project, n) for n, _ in IMAGES.get(project, [])]
        return self.list_page(items, query, self.GLOBAL_KINDS[collection] + "List",
                              f"{API}/projects/{project}/global/{collection}")

    def global_get(self, project: str, collection: str, name: str) -> dict:
        res = self.globals.get((project, collection, name))
        if res is None:
            raise _not_found(f"projects/{project}/global/{collection}/{name}")
        return res

    def global_delete(self, project: str, collection: str, name: str) -> dict:
        res = self.global_get(project, collection, name)
        return self._new_op(project, "global", "delete", res["selfLink"], res["id"],
                            on_done=lambda: self.globals.pop((project, collection, name), None))

    def instance_set_labels(self, project: str, zone: str, name: str, body: dict) -> dict:
        inst = self._instance(project, zone, name)
        return self._set_labels(inst, project, f"zones/{zone}", body, "instances.setLabels")

    def _set_labels(self, res: dict, project: str, scope: str, body: dict, api: str) -> dict:
        labels = body.get("labels") or {}
        self._validate_labels("labels", labels)
        if body.get("labelFingerprint") != res["labelFingerprint"]:
            raise ApiError(412, "Labels fingerprint either invalid or resource labels have changed",
                           "conditionNotMet")
        res["labels"] = dict(labels)
        res["labelFingerprint"] = fingerprint(res["labels"])
        op = self._new_op(project, scope, "setLabels", res["selfLink"], res["id"])
        self._finish(op)
        return op

    def _read_fault(self, api, project, zone, region, name):
        """Faults on calls that change nothing are always answered as HTTP errors."""
        fault = self._match_fault(api, project, zone, region)
        if fault is not None:
            raise self._fault_error(fault, project, zone, region, name=name, body=None)[3]

    def _op_fault(self, api, project, zone, region, name):
        fault = self._match_fault(api, project, zone, region)
        if fault is None:
            return None
        status, status_msg, op_err, http_err = self._fault_error(fault, project, zone, region, name=name, body=None)
        if fault["as"] == "http":
            raise http_err
        return status, status_msg, op_err

    # ---- listing
    def list_page(self, items: list, query: dict, kind: str, self_link: str) -> dict:
        parsed = parse_filter(query.get("filter", [""])[0])
        items = [i for i in items if filter_matches(i, parsed)]
        items.sort(key=lambda i: i.get("name", ""))
        start, size = self._page(query)
        page = items[start:start + size]
        out = {"kind": kind, "id": self_link, "items": [_public(i) for i in page], "selfLink": self_link}
        if start + size < len(items):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return out

    @staticmethod
    def _page(query: dict):
        try:
            size = int(query.get("maxResults", ["500"])[0])
            token = query.get("pageToken", [""])[0]
            start = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError as exc:
            raise _invalid("pageToken", query.get("pageToken"), "Invalid page token.") from exc
        if size < 0 or size > 500:
            raise _invalid("maxResults", size, "Must be between 0 and 500.")
        return start, size or 500

    def aggregated(self, project: str, query: dict, collection: dict, *, scope_kind: str, key: str,
                   kind: str) -> dict:
        parsed = parse_filter(query.get("filter", [""])[0])
        pairs = []
        for (proj, scope, _name), res in collection.items():
            if proj == project and filter_matches(res, parsed):
                pairs.append((scope, res))
        pairs.sort(key=lambda p: (p[0], p[1]["name"]))
        start, size = self._page(query)
        page = pairs[start:start + size]
        scopes = list(self.zones) if scope_kind == "regions" else [z for zs in self.zones.values() for z in zs]
        items = {}
        for scope in scopes:
            hits = [_public(r) for s, r in page if s == scope]
            sk = f"{scope_kind}/{scope}"
            if hits:
                items[sk] = {key: hits}
            else:
                items[sk] = {"warning": {"code": "NO_RESULTS_ON_PAGE",
                                         "message": f"There are no results for scope '{sk}' on this page.",
                                         "data": [{"key": "scope", "value": sk}]}}
        out = {"kind": kind, "id": f"projects/{project}/aggregated/{key}", "items": items,
               "selfLink": f"{API}/projects/{project}/aggregated/{key}"}
        if start + size < len(pairs):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return out

    # ---- disks
    def disk_delete(self, project: str, zone: str, name: str) -> dict:
        disk = self.disks.get((project, zone, name))
        if disk is None:
            raise _not_found(f"projects/{project}/zones/{zone}/disks/{name}")
        if disk.get("users"):
            raise ApiError(400, f"The disk resource 'projects/{project}/zones/{zone}/disks/{name}' is already "
                                f"being used by '{disk['users'][0].split('/v1/')[-1]}'",
                           "resourceInUseByAnotherResource")
        return self._new_op(project, f"zones/{zone}", "delete", disk["selfLink"], disk["id"],
                            on_done=lambda: self.disks.pop((project, zone, name), None),
                            error=self._op_fault("disks.delete", project, zone, None, name))

    # ---- firewalls
    def _validate_firewall(self, body: dict, field: str = "resource"):
        for i, rule in enumerate(body.get("allowed", []) + body.get("denied", [])):
            proto = rule.get("IPProtocol")
            if not proto:
                raise _invalid(f"{field}.allowed[{i}].IPProtocol", None, "IPProtocol is required.")
            for port in rule.get("ports", []):
                if not re.match(r"^\d{1,5}(-\d{1,5})?$", str(port)):
                    raise _invalid(f"{field}.allowed[{i}].ports", port, "Invalid port.")
        for cidr in body.get("sourceRanges", []):
            if not CIDR_RE.match(cidr):
                raise _invalid(f"{field}.sourceRanges", cidr, "Invalid IPv4 CIDR range.")
        if "labels" in body:
            raise ApiError(400, "Invalid JSON payload received. Unknown name \"labels\" at 'resource': "
                                "Cannot find field.", "invalid")

    def firewall_insert(self, project: str, body: dict) -> dict:
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise _invalid("resource.name", name, "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if (project, name) in self.firewalls:
            raise ApiError(409, f"The resource 'projects/{project}/global/firewalls/{name}' already exists",
                           "alreadyExists")
        if not body.get("allowed") and not body.get("denied"):
            raise _invalid("resource", name, "A firewall rule needs allowed or denied.")
        self._validate_firewall(body)
        link = f"{API}/projects/{project}/global/firewalls/{name}"
        fw = {"kind": "compute#firewall", "id": str(next(self._ids)), "creationTimestamp": _now(), "name": name,
              "description": body.get("description", ""),
              "network": body.get("network") or f"{API}/projects/{project}/global/networks/default",
              "priority": int(body.get("priority", 1000)), "direction": body.get("direction", "INGRESS"),
              "sourceRanges": list(body.get("sourceRanges", [])), "targetTags": list(body.get("targetTags", [])),
              "allowed": copy.deepcopy(body.get("allowed", [])), "disabled": bool(body.get("disabled", False)),
              "selfLink": link}
        if body.get("denied"):
            fw["denied"] = copy.deepcopy(body["denied"])
        return self._new_op(project, "global", "insert", link, fw["id"],
                            on_done=lambda: self.firewalls.__setitem__((project, name), fw),
                            error=self._op_fault("firewalls.insert", project, None, None, name))

    def _firewall(self, project: str, name: str) -> dict:
        fw = self.firewalls.get((project, name))
        if fw is None:
            raise _not_found(f"projects/{project}/global/firewalls/{name}")
        return fw

    def firewall_patch(self, project: str, name: str, body: dict) -> dict:
        fw = self._firewall(project, name)
        self._validate_firewall(body)
        changes = {k: copy.deepcopy(v) for k, v in body.items()
                   if k in ("description", "sourceRanges", "targetTags", "allowed", "denied", "priority", "disabled")}

        def done():
            fw.update(changes)

        return self._new_op(project, "global", "patch", fw["selfLink"], fw["id"], on_done=done,
                            error=self._op_fault("firewalls.patch", project, None, None, name))

    def firewall_delete(self, project: str, name: str) -> dict:
        fw = self._firewall(project, name)
        return self._new_op(project, "global", "delete", fw["selfLink"], fw["id"],
                            on_done=lambda: self.firewalls.pop((project, name), None),
                            error=self._op_fault("firewalls.delete", project, None, None, name))

    # ---- addresses
    def address_insert(self, project: str, region: str, body: dict) -> dict:
        self._check_region(region)
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise _invalid("resource.name", name, "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if (project, region, name) in self.addresses:
            raise ApiError(409, f"The resource 'projects/{project}/regions/{region}/addresses/{name}' already "
                                "exists", "alreadyExists")
        self._validate_labels("resource.labels", body.get("labels") or {})
        link = f"{API}/projects/{project}/regions/{region}/addresses/{name}"
        addr = {"kind": "compute#address", "id": str(next(self._ids)), "creationTimestamp": _now(), "name": name,
                "description": body.get("description", ""), "address": body.get("address") or self._natip(),
                "status": "RESERVED", "region": f"{API}/projects/{project}/regions/{region}",
                "addressType": body.get("addressType", "EXTERNAL"), "networkTier": body.get("networkTier", "PREMIUM"),
                "labels": dict(body.get("labels") or {}), "selfLink": link}
        addr["labelFingerprint"] = fingerprint(addr["labels"])
        return self._new_op(project, f"regions/{region}", "insert", link, addr["id"],
                            on_done=lambda: self.addresses.__setitem__((project, region, name), addr),
                            error=self._op_fault("addresses.insert", project, None, region, name))

    def address_delete(self, project: str, region: str, name: str) -> dict:
        addr = self.addresses.get((project, region, name))
        if addr is None:
            raise _not_found(f"projects/{project}/regions/{region}/addresses/{name}")
        return self._new_op(project, f"regions/{region}", "delete", addr["selfLink"], addr["id"],
                            on_done=lambda: self.addresses.pop((project, region, name), None),
                            error=self._op_fault("addresses.delete", project, None, region, name))

    # ---- routing
    def handle(self, method: str, path: str, query: dict, body: dict | None):
        """-> (status, payload, api name, context dict)."""
        ctx: dict = {}
        if path.startswith("/_standin/"):
            return self._control(method, path, body) + ("_standin", ctx)
        m = re.match(r"^/compute/v1/projects/([^/]+)(/.*)?$", path)
        if not m:
            return 404, ApiError(404, f"Not found: {path}", "notFound").body(), "unknown", ctx
        project, rest = m.group(1), m.group(2) or ""
        ctx["project"] = project
        for pattern, verb, api, fn in self._routes():
            rm = re.match(pattern, rest)
            if rm and verb == method:
                ctx.update({k: v for k, v in rm.groupdict().items() if k in ("zone", "region", "name")})
                try:
                    with self.lock:
                        self._check_project(project)
                        if "zone" in ctx:
                            self._check_zone(project, ctx["zone"])
                        if "region" in ctx:
                            self._check_region(ctx["region"])
                        if not api.endswith((".delete", ".stop", ".start", ".patch", ".insert", ".resume", ".suspend",
                                             ".setMetadata")):
                            self._read_fault(api, project, ctx.get("zone"), ctx.get("region"),
                                             ctx.get("name", ""))
                        result = fn(project, body, query, **rm.groupdict())
                        return 200, _public(result), api, ctx
                except ApiError as err:
                    return err.code, err.body(), api, ctx
        allowed = any(re.match(p, rest) for p, *_ in self._routes())
        code = 405 if allowed else 404
        return code, ApiError(code, f"No route for {method} {path}", "notFound").body(), "unknown", ctx

    def _routes(self):
        Z = r"^/zones/(?P<zone>[^/]+)"
        R = r"^/regions/(?P<region>[^/]+)"
        N = r"(?P<name>[^/]+)"
        s = self

        def ops_scope(zone=None, region=None):
            return f"zones/{zone}" if zone else f"regions/{region}" if region else "global"

        def op_get(p, b, q, *, zone=None, region=None, name=None):
            op = s._op_scope_get(p, ops_scope(zone, region), name)
            s._advance(op)
            return op

        def op_wait(p, b, q, *, zone=None, region=None, name=None):
            op = s._op_scope_get(p, ops_scope(zone, region), name)
            if s.stuck_operations:
                s.lock.release()
                try:
                    time.sleep(s.wait_max_seconds)
                finally:
                    s.lock.acquire()
                return op
            s._advance(op, force=True)
            return op

        def op_delete(p, b, q, *, zone=None, region=None, name=None):
            s._op_scope_get(p, ops_scope(zone, region), name)
            s.operations.pop((p, ops_scope(zone, region), name))
            return {}

        def op_list(p, b, q, zone=None, region=None):
            sc = ops_scope(zone, region)
            items = [o for (pp, ss, _), o in s.operations.items() if pp == p and ss == sc]
            return s.list_page(items, q, "compute#operationList", f"{API}/projects/{p}/{sc}/operations")

        def zone_instances(p, q, zone):
            return [i for (pp, z, _), i in s.instances.items() if pp == p and z == zone]

        def inst_list(p, b, q, zone):
            for inst in zone_instances(p, q, zone):
                s._tick_instance(inst)
            return s.list_page(zone_instances(p, q, zone), q, "compute#instanceList",
                               f"{API}/projects/{p}/zones/{zone}/instances")

        def inst_agg(p, b, q):
            for inst in list(s.instances.values()):
                s._tick_instance(inst)
            coll = {(pp, f"{z}", n): i for (pp, z, n), i in s.instances.items()}
            return s.aggregated(p, q, coll, scope_kind="zones", key="instances", kind="compute#instanceAggregatedList")

        def disk_get(p, b, q, zone, name):
            d = s.disks.get((p, zone, name))
            if d is None:
                raise _not_found(f"projects/{p}/zones/{zone}/disks/{name}")
            return d

        def disk_list(p, b, q, zone):
            items = [d for (pp, z, _), d in s.disks.items() if pp == p and z == zone]
            return s.list_page(items, q, "compute#diskList", f"{API}/projects/{p}/zones/{zone}/disks")

        def disk_agg(p, b, q):
            return s.aggregated(p, q, s.disks, scope_kind="zones", key="disks", kind="compute#diskAggregatedList")

        def disk_set_labels(p, b, q, zone, name):
            return s._set_labels(disk_get(p, b, q, zone, name), p, f"zones/{zone}", b or {}, "disks.setLabels")

        def fw_list(p, b, q):
            items = [f for (pp, _), f in s.firewalls.items() if pp == p]
            return s.list_page(items, q, "compute#firewallList", f"{API}/projects/{p}/global/firewalls")

        def addr_get(p, b, q, region, name):
            a = s.addresses.get((p, region, name))
            if a is None:
                raise _not_found(f"projects/{p}/regions/{region}/addresses/{name}")
            return a

        def addr_list(p, b, q, region):
            items = [a for (pp, r, _), a in s.addresses.items() if pp == p and r == region]
            return s.list_page(items, q, "compute#addressList", f"{API}/projects/{p}/regions/{region}/addresses")

        def addr_agg(p, b, q):
            return s.aggregated(p, q, s.addresses, scope_kind="regions", key="addresses",
                                kind="compute#addressAggregatedList")

        def zones_list(p, b, q):
            items = [s._zone_obj(p, z) for zs in s.zones.values() for z in zs]
            return s.list_page(items, q, "compute#zoneList", f"{API}/projects/{p}/zones")

        def accel_list(p, b, q, zone):
            items = [s._accel_obj(p, zone, a) for a in s._zone_accelerators(zone)]
            return s.list_page(items, q, "compute#acceleratorTypeList",
                               f"{API}/projects/{p}/zones/{zone}/acceleratorTypes")

        def accel_get(p, b, q, zone, name):
            if name not in s._zone_accelerators(zone):
                raise _not_found(f"projects/{p}/zones/{zone}/acceleratorTypes/{name}")
            return s._accel_obj(p, zone, name)

        def mt_get(p, b, q, zone, name):
            if name not in MACHINE_TYPES or name not in s._zone_machine_types(zone):
                raise _not_found(f"projects/{p}/zones/{zone}/machineTypes/{name}")
            return s._mt_obj(p, zone, name)

        def mt_list(p, b, q, zone):
            items = [s._mt_obj(p, zone, m) for m in s._zone_machine_types(zone)]
            return s.list_page(items, q, "compute#machineTypeList", f"{API}/projects/{p}/zones/{zone}/machineTypes")

        body = lambda b: b or {}  # noqa: E731

        return [
            (r"^/zones$", "GET", "zones.list", zones_list),
            (Z + r"$", "GET", "zones.get", lambda p, b, q, zone: s._zone_obj(p, zone)),
            (r"^/regions$", "GET", "regions.list",
             lambda p, b, q: s.list_page([s._region_obj(p, r) for r in s.zones], q, "compute#regionList",
                                         f"{API}/projects/{p}/regions")),
            (R + r"$", "GET", "regions.get", lambda p, b, q, region: s._region_obj(p, region)),
            (Z + r"/acceleratorTypes$", "GET", "acceleratorTypes.list", accel_list),
            (Z + r"/acceleratorTypes/" + N + "$", "GET", "acceleratorTypes.get", accel_get),
            (Z + r"/machineTypes$", "GET", "machineTypes.list", mt_list),
            (Z + r"/machineTypes/" + N + "$", "GET", "machineTypes.get", mt_get),
            (r"^/global/images$", "GET", "images.list", lambda p, b, q: s.global_list(p, "images", q)),
            (r"^/global/images$", "POST", "images.insert", lambda p, b, q: s.global_insert(p, "images", body(b))),
            (r"^/global/images/" + N + "$", "DELETE", "images.delete",
             lambda p, b, q, name: s.global_delete(p, "images", name)),
            (r"^/global/(?P<coll>snapshots|addresses)$", "GET", "global.list",
             lambda p, b, q, coll: s.global_list(p, coll, q)),
            (r"^/global/(?P<coll>snapshots|addresses)$", "POST", "global.insert",
             lambda p, b, q, coll: s.global_insert(p, coll, body(b))),
            (r"^/global/(?P<coll>snapshots|addresses)/" + N + "$", "GET", "global.get",
             lambda p, b, q, coll, name: s.global_get(p, coll, name)),
            (r"^/global/(?P<coll>snapshots|addresses)/" + N + "$", "DELETE", "global.delete",
             lambda p, b, q, coll, name: s.global_delete(p, coll, name)),
            (r"^/global/images/family/" + N + "$", "GET", "images.getFromFamily",
             lambda p, b, q, name: s.image_get(p, name, family=True)),
            (r"^/global/images/" + N + "$", "GET", "images.get", lambda p, b, q, name: s.image_get(p, name)),
            (Z + r"/instances$", "POST", "instances.insert",
             lambda p, b, q, zone: s.instance_insert(p, zone, body(b), (q.get("requestId") or [None])[0])),
            (Z + r"/instances$", "GET", "instances.list", inst_list),
            (Z + r"/instances/" + N + "$", "GET", "instances.get",
             lambda p, b, q, zone, name: s.instance_get(p, zone, name)),
            (Z + r"/instances/" + N + "/getGuestAttributes$", "GET", "instances.getGuestAttributes",
             lambda p, b, q, zone, name: s.instance_guest_attributes(p, zone, name, q)),
            (Z + r"/instances/" + N + "$", "DELETE", "instances.delete",
             lambda p, b, q, zone, name: s.instance_delete(p, zone, name)),
            (Z + r"/instances/" + N + "/start$", "POST", "instances.start",
             lambda p, b, q, zone, name: s.instance_start(p, zone, name)),
            (Z + r"/instances/" + N + "/stop$", "POST", "instances.stop",
             lambda p, b, q, zone, name: s.instance_stop(p, zone, name)),
            (Z + r"/instances/" + N + "/setLabels$", "POST", "instances.setLabels",
             lambda p, b, q, zone, name: s.instance_set_labels(p, zone, name, body(b))),
            (Z + r"/instances/" + N + "/setMetadata$", "POST", "instances.setMetadata",
             lambda p, b, q, zone, name: s.instance_set_metadata(p, zone, name, body(b))),
            (Z + r"/instances/" + N + "/suspend$", "POST", "instances.suspend",
             lambda p, b, q, zone, name: s.instance_suspend(p, zone, name)),
            (Z + r"/instances/" + N + "/resume$", "POST", "instances.resume",
             lambda p, b, q, zone, name: s.instance_resume(p, zone, name)),
            (r"^/aggregated/instances$", "GET", "instances.aggregatedList", inst_agg),
            (Z + r"/disks$", "GET", "disks.list", disk_list),
            (Z + r"/disks/" + N + "$", "GET", "disks.get", disk_get),
            (Z + r"/disks/" + N + "$", "DELETE", "disks.delete",
             lambda p, b, q, zone, name: s.disk_delete(p, zone, name)),
            (Z + r"/disks/" + N + "/setLabels$", "POST", "disks.setLabels", disk_set_labels),
            (r"^/aggregated/disks$", "GET", "disks.aggregatedList", disk_agg),
            (r"^/global/firewalls$", "POST", "firewalls.insert", lambda p, b, q: s.firewall_insert(p, body(b))),
            (r"^/global/firewalls$", "GET", "firewalls.list", fw_list),
            (r"^/global/firewalls/" + N + "$", "GET", "firewalls.get", lambda p, b, q, name: s._firewall(p, name)),
            (r"^/global/firewalls/" + N + "$", "PATCH", "firewalls.patch",
             lambda p, b, q, name: s.firewall_patch(p, name, body(b))),
            (r"^/global/firewalls/" + N + "$", "DELETE", "firewalls.delete",
             lambda p, b, q, name: s.firewall_delete(p, name)),
            (R + r"/addresses$", "POST", "addresses.insert",
             lambda p, b, q, region: s.address_insert(p, region, body(b))),
            (R + r"/addresses$", "GET", "addresses.list", addr_list),
            (R + r"/addresses/" + N + "$", "GET", "addresses.get", addr_get),
            (R + r"/addresses/" + N + "$", "DELETE", "addresses.delete",
             lambda p, b, q, region, name: s.address_delete(p, region, name)),
            (r"^/aggregated/addresses$", "GET", "addresses.aggregatedList", addr_agg),
            (Z + r"/operations$", "GET", "zoneOperations.list", op_list),
            (Z + r"/operations/" + N + "$", "GET", "zoneOperations.get", op_get),
            (Z + r"/operations/" + N + "$", "DELETE", "zoneOperations.delete", op_delete),
            (Z + r"/operations/" + N + "/wait$", "POST", "zoneOperations.wait", op_wait),
            (R + r"/operations$", "GET", "regionOperations.list", op_list),
            (R + r"/operations/" + N + "$", "GET", "regionOperations.get", op_get),
            (R + r"/operations/" + N + "$", "DELETE", "regionOperations.delete", op_delete),
            (R + r"/operations/" + N + "/wait$", "POST", "regionOperations.wait", op_wait),
            (r"^/global/operations$", "GET", "globalOperations.list", op_list),
            (r"^/global/operations/" + N + "$", "GET", "globalOperations.get", op_get),
            (r"^/global/operations/" + N + "$", "DELETE", "globalOperations.delete", op_delete),
            (r"^/global/operations/" + N + "/wait$", "POST", "globalOperations.wait", op_wait),
        ]

    def _control(self, method: str, path: str, body: dict | None):
        body = body or {}
        try:
            if path == "/_standin/faults" and method == "POST":
                self.add_fault(body.get("operation", "insert"), body.get("code", ""), zone=body.get("zone"),
                               region=body.get("region"), project=body.get("project"),
                               as_=body.get("as", "operation"), count=body.get("count"),
                               **{k: v for k, v in body.items()
                                  if k in ("quota_metric", "limit", "keep_disk", "message", "after_create")})
                return 200, {"faults": len(self.faults)}
            if path == "/_standin/faults" and method == "DELETE":
                self.clear_faults()
                return 200, {"faults": 0}
            if path == "/_standin/faults" and method == "GET":
                with self.lock:
                    return 200, {"faults": copy.deepcopy(self.faults), "table": FAULTS}
            if path == "/_standin/requests" and method == "GET":
                with self.lock:
                    return 200, {"requests": copy.deepcopy(self.requests)}
            if path == "/_standin/requests" and method == "DELETE":
                with self.lock:
                    self.requests.clear()
                return 200, {"requests": []}
            if path == "/_standin/preempt" and method == "POST":
                return 200, self.preempt(body["project"], body["zone"], body["name"])
            if path == "/_standin/config" and method == "POST":
                with self.lock:
                    for key in ("op_polls", "op_seconds", "stuck_operations", "wait_max_seconds"):
                        if key in body:
                            setattr(self, key, body[key])
                return 200, {k: getattr(self, k) for k in ("op_polls", "op_seconds", "stuck_operations",
                                                             "wait_max_seconds")}
            if path == "/_standin/reset" and method == "POST":
                self.reset()
                return 200, {}
        except ApiError as err:
            return err.code, err.body()
        except (ValueError, KeyError) as err:
            return 400, ApiError(400, f"bad control request: {err}", "invalid").body()
        return 404, ApiError(404, f"No control route {method} {path}", "notFound").body()


class _Handler(BaseHTTPRequestHandler):
    standin: GceStandin = None  # set per server by GceStandin
    disable_nagle_algorithm = True  # without it every request stalls ~40 ms (Nagle + delayed ACK)
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: the request log endpoint is the record
        pass

    def _serve(self, method: str):
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, ApiError(400, "Invalid JSON payload received.", "parseError").body())
                return
        status, payload, api, ctx = self.standin.handle(method, parsed.path, query, body)
        if api != "_standin":
            with self.standin.lock:
                self.standin.requests.append({
                    "method": method, "path": parsed.path, "api": api, "project": ctx.get("project"),
                    "zone": ctx.get("zone"), "region": ctx.get("region"), "name": ctx.get("name"),
                    "query": {k: v[0] if len(v) == 1 else v for k, v in query.items()}, "body": body,
                    "status": status, "time": time.time(),
                })
        self._send(status, payload)

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def do_PUT(self):  # noqa: N802
        self._serve("PUT")


def main(argv=None):
    """Run the stand-in on its own: python tests/standins/gce_server.py --port 8089"""
    parser = argparse.ArgumentParser(description="TEST STAND-IN of the Compute Engine v1 REST API")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--accelerators", help='JSON {"zone": ["nvidia-l4", ...]}', default=None)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the stand-in listens on loopback only")
    accels = json.loads(args.accelerators) if args.accelerators else None
    gce = GceStandin(args.host, args.port, accelerators=accels)
    print(f"GCE stand-in listening on {gce.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        gce.httpd.serve_forever()


if __name__ == "__main__":
    main()
