"""The vast.ai backend: GPU instances rented from vast's marketplace through its REST API v0.

Reference: https://docs.vast.ai/api-reference (vast-ai/docs api-reference/openapi/yaml/*.yaml, 2026-08).
Base URL https://console.vast.ai, auth `Authorization: Bearer $VAST_API_KEY`.

Calls (each method below names its own):
- POST /api/v0/bundles/ (search offers): filters are {field: {op: value}} objects - gpu_name, num_gpus,
  rentable, rented, verified, reliability, direct_port_count, disk_space, cuda_max_good, geolocation,
  dph_total; `type` ondemand | bid (interruptible: priced at the offer's `min_bid`); `order`. Answer
  {"offers": [...]}, each with id, gpu_name, dph_total, min_bid, inet_down_cost/inet_up_cost ($/GB),
  storage_cost ($/GB-month), geolocation ("City, CC"), direct_port_count, cuda_max_good, reliability...
  gpu_name values carry spaces ("RTX 4090"); the reference's `RTX_4090` example is the CLI's spelling,
  which the vastai CLI turns into spaces before it sends the query.
- PUT /api/v0/asks/{offer id}/ (create instance): {image, label, disk, runtype, env, price (the bid, for
  interruptible), cancel_unavail} -> {"success": true, "new_contract": <instance id>}; 404/410
  `no_such_ask` when the offer went away meanwhile (the next offer is tried).
- POST /api/v0/instances/{id}/ssh/ {"ssh_key"} (attach ssh): the operator's key on the instance.
- GET /api/v0/instances/{id}/ (show instance: {"instances": {...}}), GET /api/v1/instances/ (show
  instances: keyset pages of 25, `next_token`), PUT /api/v0/instances/{id}/ {"state": "running"|"stopped"}
  (manage instance), DELETE /api/v0/instances/{id}/ (destroy instance).
- Errors: {"success": false, "error": <code>, "msg": <text>}; 429 {"detail": "API requests too frequent
  endpoint threshold=..."} without Retry-After (retried with backoff). The create reference documents
  no "not enough credit" answer; vast's other endpoints say `insufficient_balance` (transfer credit),
  `missing_billing` (manage instance) and "Insufficient credit" (prepay, HTTP 411), so any of these words
  in a create refusal is read as no credit.

Choices:
- Zones are countries (two-letter codes, the `geolocation` filter), in preference order; `any` or no
  zones: anywhere. A zone with no matching offer is a stockout for the walk, and its reason says which
  filter removed the offers (one relaxed search, then each filter checked on what it returned).
- Interruptible when sdcloud_spot is true: `type: bid`, bid = the offer's min_bid. An outbid instance is
  paused, keeping its disk, and resumes by itself (vast-ai/docs guides/instances/choosing/instance-types.mdx).
- No labels: the deployment is the instance `label`, `sdcloud:<deployment>` (sdcloud.pods).
- SSH: runtype `ssh_direct` (vast's own launcher starts sshd on a direct port); each internal port maps
  to a random external port, read from the instance's `ports` - a docker-style mapping
  {"22/tcp": [{"HostIp", "HostPort"}]} once the container runs (the show-instance schema calls it a list;
  vast answers the docker mapping, as its CLI and users read it). UI ports are asked with `-p P:P` in env.
- Prices: the instance's dph_total ($/h), inet_down_cost ($/GB downloaded: models are large) and
  storage_cost x disk ($/month, billed while stopped too: vast-ai/docs guides/instances/pricing.mdx).
- Stop keeps the container disk; a start needs the same machine's GPU free again - until it is, vast
  keeps the instance waiting (the reference is silent on how this reads; the start wait says so).
"""

from __future__ import annotations

import datetime
import os

from ansible.module_utils.sdcloud import catalog
from ansible.module_utils.sdcloud.base import (
    CODE_NO_CAPACITY,
    PENDING,
    RUNNING,
    STOPPED,
    STOPPING,
    Deadline,
    Instance,
    InstanceSpec,
    Refusal,
    SdcloudError,
)
from ansible.module_utils.sdcloud.pods import (
    ANY_ZONE,
    ApiError,
    JsonApi,
    PodBackend,
    api_key,
    deployment_of,
    pod_labels,
    pod_name,
)

PROVIDER = "vastai"
API_URL = "https://console.vast.ai"
ENV_ENDPOINT = "SDCLOUD_VAST_ENDPOINT"
ENV_KEY = "VAST_API_KEY"
# How an instance stops itself (autostop, roles/autostop): vast.ai puts CONTAINER_API_KEY and CONTAINER_ID in every
# instance's environment, "to start, stop or destroy the instance itself" (vast-ai/docs
# guides/instances/docker-environment.mdx); the request is manage_instance's, as this backend sends it.
SELF_STOP = {"method": "PUT", "path": "/api/v0/instances/{id}/", "body": {"state": "stopped"},
             "key_var": "CONTAINER_API_KEY", "id_var": "CONTAINER_ID"}
# An image with CUDA whose sshd vast's ssh launcher runs: vast's own base image, the create reference's default.
DEFAULT_IMAGE = "vastai/base-image:@vastai-automatic-tag"
SSH_PORT = 22
MIN_RELIABILITY = 0.95
MIN_CUDA = 12.1
OFFERS_PER_ZONE = 3  # offers tried in one zone when the first ones go away between search and create
NO_CREDIT_WORDS = ("insufficient_balance", "insufficient_credit", "missing_billing", "insufficient credit",
                   "not enough credit", "balance")
CREDIT_FIX = "add credit at https://cloud.vast.ai/billing/, then re-run"


def _country(geolocation: str | None) -> str:
    """"Washington, US" -> "US" (vast's geolocation is "<place>, <country code>")."""
    return (geolocation or "").rsplit(",", 1)[-1].strip() or ANY_ZONE


def _mapped(ports, internal: int) -> int | None:
    try:
        return int(ports[f"{internal}/tcp"][0]["HostPort"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _state(d: dict) -> str:
    actual, intended = d.get("actual_status"), d.get("intended_status") or d.get("cur_state")
    if intended == "stopped":
        return STOPPING if actual == "running" else STOPPED
    if actual == "running":
        return RUNNING
    if actual in ("exited", "offline", "unknown"):  # never recovers by itself (the disk still bills)
        return STOPPED
    return PENDING  # created, loading, scheduling, or null while the image is pulled


def instance_from_vast(d: dict) -> Instance:
    """base.Instance from a vast instance object: the one place one becomes an Instance."""
    offer = catalog.find_offering(PROVIDER, d.get("gpu_name"))
    state = _state(d)
    ip = (d.get("public_ipaddr") or "").strip() or None
    raw_ports = d.get("ports") if isinstance(d.get("ports"), dict) else {}
    ports = {}
    for key, binds in raw_ports.items():
        internal, _, kind = key.partition("/")
        port = _mapped(raw_ports, int(internal)) if internal.isdigit() and binds else None
        ports[internal] = {"ip": ip, "port": port, "type": kind or "tcp",
                           "url": f"http://{ip}:{port}" if port and internal != str(SSH_PORT) else None}
    ssh_port = _mapped(raw_ports, SSH_PORT)
    running = state == RUNNING and ssh_port is not None
    size = d.get("disk_space")
    storage = d.get("storage_cost")
    deployment = deployment_of(d.get("label"))
    started = d.get("start_date")
    return Instance(
        name=deployment or d.get("label") or str(d["id"]), provider=PROVIDER, id=str(d["id"]),
        zone=_country(d.get("geolocation")), region=_country(d.get("geolocation")), state=state,
        gpu=offer.gpu if offer else None, machine_type=d.get("gpu_name"), spot=bool(d.get("is_bid")),
        public_ip=ip if running else None, private_ip=None,
        labels=pod_labels(deployment) if deployment else {},
        created=datetime.datetime.fromtimestamp(float(started), datetime.UTC).isoformat() if started else None,
        hourly_price=float(d["dph_total"]) if d.get("dph_total") is not None else None,
        ssh_user="root", image=d.get("image_uuid"), disk_size_gb=int(float(size)) if size else None,
        ssh_port=ssh_port if running else None, ports=ports or None,
        disk_monthly_cost=(round(float(storage) * float(size), 2) if storage is not None and size
                           else catalog.disk_monthly_price(PROVIDER, size, "volume") if size else None),
        bandwidth_price_gb=float(d["inet_down_cost"]) if d.get("inet_down_cost") is not None else None,
    )


class VastBackend(PodBackend):
    provider = PROVIDER
    default_image = DEFAULT_IMAGE

    def __init__(self, key: str, *, zones=None, endpoint: str | None = None, ports=None,
                 max_hourly_price: float | None = None, start_command: str | None = None):
        self.api = JsonApi(endpoint or os.environ.get(ENV_ENDPOINT) or API_URL, key, PROVIDER,
                           f"{ENV_KEY} (or `api_key`)")
        self.zones = [z.strip().upper() if z.strip().lower() != ANY_ZONE else ANY_ZONE
                      for z in zones or [] if z and z.strip()]
        self.ui_ports = sorted({int(p) for p in ports or []} - {SSH_PORT})
        self.max_hourly_price = max_hourly_price
        self.start_command = start_command  # `onstart`: run at every container start, after vast's sshd

    @classmethod
    def from_params(cls, params: dict) -> VastBackend:
        return cls(api_key(params, ENV_KEY), zones=params.get("zones") or [], endpoint=params.get("endpoint"),
                   ports=params.get("ports") or [], max_hourly_price=params.get("max_hourly_price"),
                   start_command=params.get("start_command"))

    def _error(self, exc: ApiError, doing: str) -> SdcloudError:
        text = f"{exc.message} {(exc.body or {}).get('error', '') if isinstance(exc.body, dict) else ''}".lower()
        if any(w in text for w in NO_CREDIT_WORDS) or exc.status in (402, 411):
            return SdcloudError(f"vast.ai refused {doing}: not enough credit ({exc.message}): {CREDIT_FIX}",
                                code="InsufficientBalance", status=exc.status)
        if exc.status == 403:
            fix = "the API key lacks permission for it: create a key with instance read/write permissions"
        elif exc.status == 404:
            fix = "it is gone (destroyed in the console?): re-run to pick up what exists"
        else:
            fix = "see vast.ai's message; re-run once it is fixed"
        return SdcloudError(f"vast.ai HTTP {exc.status} while {doing}: {exc.message} -- {fix}",
                            code=f"HTTP{exc.status}", status=exc.status)

    # --- reads -----------------------------------------------------------------------------------
    def _all(self) -> list:
        out, token = [], None
        while True:
            query = {"limit": 25, **({"after_token": token} if token else {})}
            try:
                page = self._call("GET", "/api/v1/instances/", query=query, doing="listing instances")
            except ApiError as exc:
                raise self._error(exc, "listing instances (GET /api/v1/instances/)") from exc
            out.extend((page or {}).get("instances") or [])
            token = (page or {}).get("next_token")
            if not token:
                return out

    def list_instances(self, deployment: str | None = None) -> list:
        found = [instance_from_vast(d) for d in self._all() if deployment_of(d.get("label"))]
        found = [i for i in found if deployment is None or i.name == deployment]
        return sorted(found, key=lambda i: (i.name, i.id))

    def read_instance(self, instance: Instance) -> Instance | None:
        try:
            got = self._call("GET", f"/api/v0/instances/{instance.id}/", doing=f"reading instance {instance.id}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self._error(exc, f"reading instance {instance.id}") from exc
        d = (got or {}).get("instances")
        return instance_from_vast(d) if d else None

    # --- offers ----------------------------------------------------------------------------------
    def _filters(self, spec: InstanceSpec, offer, zone: str) -> dict:
        """Our offer filters: (field, op, value, what it means) - the search body and the "which filter"
        sentence come from the same list."""
        rules = [
            ("direct_port_count", "gte", 1 + len(self.ui_ports), "direct ports (SSH and the UI ports)"),
            ("disk_space", "gte", int(spec.disk_size_gb), "GB of free disk (disk_size_gb)"),
            ("reliability", "gte", MIN_RELIABILITY, "reliability"),
            ("cuda_max_good", "gte", MIN_CUDA, "as the highest CUDA the host driver runs"),
            ("verified", "eq", True, "a verified host"),
        ]
        if zone != ANY_ZONE:
            rules.append(("geolocation", "in", [zone], "a host in the zone (zones)"))
        if self.max_hourly_price:
            rules.append(("dph_total", "lte", float(self.max_hourly_price), "$/h at most (max_hourly_price)"))
        return rules

    def _search(self, offer, spot: bool, rules: list, limit: int) -> list:
        body = {"limit": limit, "type": "bid" if spot else "ondemand", "rentable": {"eq": True},
                "rented": {"eq": False}, "gpu_name": {"eq": offer.machine_type}, "num_gpus": {"eq": offer.gpu_count},
                "order": [["dph_total", "asc"]]}
        for field, op, value, _why in rules:
            body[field] = {op: value}
        return list((self._call("POST", "/api/v0/bundles/", body, doing=f"searching {offer.machine_type} offers")
                     or {}).get("offers") or [])

    @staticmethod
    def _passes(offer: dict, field: str, op: str, value) -> bool:
        got = offer.get(field)
        if field == "geolocation":
            return _country(got) in value
        if got is None:
            return False
        if op == "eq":
            return got == value
        return float(got) >= value if op == "gte" else float(got) <= value

    def _why_none(self, offer, spot: bool, rules: list, zone: str) -> str:
        """Which filter left no offer: one search without our filters, then each checked on its offers."""
        market = "interruptible" if spot else "on-demand"
        relaxed = self._search(offer, spot, [], 64)
        if not relaxed:
            return f"no rentable {market} {offer.machine_type} offer on vast.ai right now (gpu_name)"
        blocked = []
        for field, op, value, why in rules:
            n = sum(not self._passes(o, field, op, value) for o in relaxed)
            if n:
                shown = ", ".join(value) if isinstance(value, list) else value
                blocked.append(f"{n} fail {field} {op} {shown} ({why})")
        return (f"no {market} {offer.machine_type} offer matches in {zone}: of {len(relaxed)} rentable ones, "
                + ("; ".join(blocked) or "none passes the filters together"))

    # --- placement hooks -------------------------------------------------------------------------
    def placement_zones(self, spec: InstanceSpec) -> list:
        zones = [z.strip().upper() if z.strip().lower() != ANY_ZONE else ANY_ZONE for z in spec.zones or []]
        return zones or list(self.zones) or [ANY_ZONE]

    def offers_in_zone(self, zone: str, offer) -> str | None:
        if zone != ANY_ZONE and (len(zone) != 2 or not zone.isalpha()):
            return f"{zone!r} is not a country code: vast.ai zones are two-letter countries (US, DE ...) or any"
        return None  # whether a host there has one is the search's to say, at create time

    def prepare_placement(self, spec: InstanceSpec, offer) -> dict:
        if not spec.ssh_public_key:
            raise SdcloudError("vast.ai instances are reached by SSH with the operator's key: set ssh_public_key",
                               code="NoSshKey")
        return {"spec": spec, "offer": offer}

    def ask_body(self, spec: InstanceSpec, ask: dict, spot: bool) -> dict:
        env = " ".join(f"-p {p}:{p}" for p in [SSH_PORT, *self.ui_ports])
        body = {"image": spec.image or DEFAULT_IMAGE, "label": pod_name(spec.name), "disk": int(spec.disk_size_gb),
                "runtype": "ssh_direct", "env": env, "target_state": "running"}
        if self.start_command:
            body["onstart"] = self.start_command
        if spot:
            body["price"] = float(ask.get("min_bid") or ask.get("dph_total"))
        else:
            body["cancel_unavail"] = True
        return body

    def try_zone(self, placement: dict, zone: str, spot: bool, deadline: Deadline) -> Instance:
        spec, offer = placement["spec"], placement["offer"]
        rules = self._filters(spec, offer, zone)
        asks = self._search(offer, spot, rules, OFFERS_PER_ZONE)
        if not asks:
            raise _NoOffer(self._why_none(offer, spot, rules, zone))
        gone = []
        for ask in asks:
            try:
                made = self._call("PUT", f"/api/v0/asks/{ask['id']}/", self.ask_body(spec, ask, spot), write=True,
                                  doing=f"renting offer {ask['id']} ({offer.machine_type})")
            except ApiError as exc:
                if exc.status in (404, 410):  # taken between the search and the create
                    gone.append(f"offer {ask['id']}: {exc.message}")
                    continue
                raise
            inst_id = (made or {}).get("new_contract")
            launched = Instance(name=spec.name, provider=PROVIDER, id=str(inst_id), zone=zone, region=zone, state=PENDING)
            try:
                self._call("POST", f"/api/v0/instances/{inst_id}/ssh/", {"ssh_key": spec.ssh_public_key.strip()},
                           write=True, doing=f"attaching the SSH key to instance {inst_id}")
            except (ApiError, SdcloudError):
                self._terminate(launched)  # unreachable without the key, and billing: do not leave it behind
                raise
            return Instance(name=spec.name, provider=PROVIDER, id=str(inst_id), zone=_country(ask.get("geolocation")),
                            region=_country(ask.get("geolocation")), state=PENDING, spot=spot,
                            machine_type=offer.machine_type)
        raise _NoOffer("; ".join(gone), code="no_such_ask")

    def classify_error(self, exc: Exception, placement: dict, zone: str, spot: bool):
        if isinstance(exc, _NoOffer):
            return Refusal(CODE_NO_CAPACITY, exc.reason, exc.code)
        if isinstance(exc, ApiError):
            return self._error(exc, f"creating a {placement['offer'].machine_type} instance in {zone}")
        return exc if isinstance(exc, SdcloudError) else SdcloudError(f"unexpected error while creating: {exc}")

    # --- state changes ---------------------------------------------------------------------------
    def _request_state(self, instance: Instance, state: str) -> None:
        want = "running" if state == RUNNING else "stopped"
        try:
            self._call("PUT", f"/api/v0/instances/{instance.id}/", {"state": want}, write=True,
                       doing=f"setting instance {instance.id} {want}")
        except ApiError as exc:
            raise self._error(exc, f"setting instance {instance.id} {want}") from exc

    def start_instance(self, instance: Instance, wait_timeout: int) -> Instance:
        try:
            return super().start_instance(instance, wait_timeout)
        except SdcloudError as err:
            if err.details.get("code") != "Timeout":
                raise
            raise SdcloudError(
                f"{err.msg}. A stopped vast.ai instance stays on its machine and waits until that machine's GPU "
                "is free again (someone else may rent it meanwhile): re-run later, or delete it (state: absent - "
                "its disk goes with it) and create it again on another host", code="GpuUnavailable") from err

    def _delete_path(self, instance: Instance) -> str:
        return f"/api/v0/instances/{instance.id}/"  # destroy instance: irreversible, the disk with it


class _NoOffer(Exception):  # noqa: N818 - a refusal for the zone walk, not an error
    def __init__(self, reason: str, code: str = "no_offer"):
        super().__init__(reason)
        self.reason, self.code = reason, code


__all__ = ["VastBackend", "instance_from_vast"]
