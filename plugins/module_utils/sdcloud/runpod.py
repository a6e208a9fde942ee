"""The RunPod backend: GPU pods through RunPod's REST API v2 (https://api.runpod.io/v2).

Reference: https://docs.runpod.io/api-reference-v2 and its schema https://api.runpod.io/v2/openapi.json
(runpod/docs api-reference-v2/openapi.json, 2026-08). v1 (rest.runpod.io/v1) retires in 2026 and the
GraphQL API the `runpod` SDK's pod calls still use in early 2027, so this calls v2 directly (sdcloud.pods).

Calls (each method below names its own):
- POST /v2/pods (createPod): {name, image, gpu{id, count, minCudaVersion}, cloud, dataCenterIds, disk,
  mounts{persistent{size, path}}, ports ["22/tcp", "8188/http"...], env, startSsh} -> 201 Pod. It "places
  one specific GPU type" and does not search: the zone walk (base.Backend.create_instance) tries one data
  center (`zones`: RunPod data center ids such as US-KS-2, EU-RO-1; `any` or no zones: the scheduler
  chooses) per call, as the reference's own "read-then-create" sample does.
- GET /v2/catalog/gpus?include=AVAILABILITY&product=POD&cloud=... (listGpuTypes): which data centers list
  the GPU (offers_in_zone skips the others without a create call) and its live per-GPU price.
- GET /v2/pods (listPods), GET /v2/pods/{id} (getPod), POST /v2/pods/{id}/action {"action": "start"|"stop"}
  (podAction), DELETE /v2/pods/{id} (deletePod: terminate; the persistent volume goes with it).
- Errors are problem+json {title, status, detail, errors}. createPod's own table: 400 = a rule broken OR
  "this GPU and data center combination could not be placed" (capacity has no machine-readable code, only
  `detail`): a 400 is a stockout for the walk, and when every zone answered 400 the summary shows the last
  detail; 402 insufficient balance (stop: no zone will succeed); 403 the account cannot use that pool
  (skip the zone); 422 the body breaks the contract (stop, a bug); 429 retried after Retry-After.

What RunPod has and has not:
- No spot: v2 has no interruptible field and RunPod removed interruptible pods (runpodctl PR #267), so
  `spot_supported` is False; gpu_instance warns once and creates on-demand.
- No labels: the deployment is encoded in the pod name, `sdcloud:<deployment>` (sdcloud.pods).
- SSH: Ansible needs the direct TCP path (`ssh.direct`: the public IP and the port mapped to 22/tcp);
  `ssh.proxy` (ssh.runpod.io) carries an interactive shell only - no SFTP/SCP, no port forwarding.
  The operator's key goes in as env PUBLIC_KEY (startSsh "injects PUBLIC_KEY ... unless the request
  already sets one"); the image must start sshd from it, as RunPod's official images do.
- UI ports are exposed as http: RunPod's proxy serves them at https://<pod id>-<port>.proxy.runpod.net
  (public, HTTPS, 100 s timeout - runpod/docs pods/configuration/expose-ports.mdx); Instance.ports carries
  that URL.
- Stop keeps the volume: a stopped pod keeps its machine, and its volume bills $0.20/GB-month
  (runpod/docs pods/pricing.mdx). Starting needs a free GPU on that same machine; when someone else rents
  it the start fails ("There are not enough free GPUs on the host machine to start this pod.", the
  GraphQL podResume words in runpod-python #168; v2's podAction reference is silent on the status code of
  this case, so any start refusal carrying that text is recognised).
- The TCP mapping "changes whenever your Pod resets": every start re-reads the address and SSH port.
"""

from __future__ import annotations

import os

from ansible.module_utils.sdcloud import catalog
from ansible.module_utils.sdcloud.base import (
    CODE_NO_CAPACITY,
    CODE_NOT_OFFERED,
    PENDING,
    RUNNING,
    STOPPED,
    TERMINATED,
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

PROVIDER = "runpod"
API_URL = "https://api.runpod.io"  # the v2 schema's server; paths below start with /v2
ENV_ENDPOINT = "SDCLOUD_RUNPOD_ENDPOINT"
ENV_KEY = "RUNPOD_API_KEY"
# How a pod stops itself (autostop, roles/autostop): RunPod puts a pod-scoped RUNPOD_API_KEY and RUNPOD_POD_ID in
# every pod's environment (runpod/docs pods/templates/environment-variables.mdx; pods/manage-pods.mdx stops a pod
# from inside with `runpodctl pod stop $RUNPOD_POD_ID`); the request is the podAction stop this backend sends. The
# reference does not list which endpoints a pod-scoped key may call beyond its own pod's.
SELF_STOP = {"method": "POST", "path": "/v2/pods/{id}/action", "body": {"action": "stop"},
             "key_var": "RUNPOD_API_KEY", "id_var": "RUNPOD_POD_ID"}
# An image with sshd (started from PUBLIC_KEY) and CUDA: RunPod's official PyTorch image, the one the v2
# reference's examples create (runpod/docs api-reference-v2/openapi.json, createPod).
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
DEFAULT_CLOUD = "SECURE"
VOLUME_PATH = "/workspace"
CONTAINER_DISK_GB = 20  # the container disk is wiped on every stop; everything kept lives on the volume
SSH_PORT = 22
GPU_GONE_TEXT = "not enough free gpus"
BALANCE_FIX = "add credit at https://www.console.runpod.io/user/billing (RunPod needs at least one hour's cost " \
    "as balance to deploy), then re-run"

# Pod status -> neutral state (PodStatus in the schema). ERROR allows start/terminate, like EXITED.
_STATES = {"PROVISIONING": PENDING, "STARTING": PENDING, "RUNNING": RUNNING, "EXITED": STOPPED,
           "ERROR": STOPPED, "TERMINATED": TERMINATED}


def proxy_url(pod_id: str, port: int | str) -> str:
    """RunPod's HTTPS proxy address of an http port (runpod/docs pods/configuration/expose-ports.mdx)."""
    return f"https://{pod_id}-{port}.proxy.runpod.net"


def instance_from_pod(pod: dict) -> Instance:
    """base.Instance from a v2 Pod object: the one place a pod becomes an Instance."""
    gpu = pod.get("gpu") or {}
    offer = catalog.find_offering(PROVIDER, gpu.get("id"))
    direct = (pod.get("ssh") or {}).get("direct") or {}
    ports: dict = {}
    for spec in pod.get("ports") or []:
        port, _, kind = str(spec).partition("/")
        if kind == "http":
            ports[port] = {"ip": None, "port": None, "type": "http", "url": proxy_url(pod["id"], port)}
    for mapped in (pod.get("runtime") or {}).get("ports") or []:
        entry = ports.setdefault(str(mapped.get("private")), {"url": None})
        entry.update(ip=mapped.get("ip"), port=mapped.get("public"), type=mapped.get("type"))
    state = _STATES.get(pod.get("status"), PENDING)
    persistent = (pod.get("mounts") or {}).get("persistent") or {}
    size = persistent.get("size")
    cost = pod.get("cost")
    deployment = deployment_of(pod.get("name")) or pod.get("name") or pod["id"]
    return Instance(
        name=deployment, provider=PROVIDER, id=pod["id"], zone=pod.get("dataCenterId") or ANY_ZONE,
        region=pod.get("dataCenterId") or ANY_ZONE, state=state, gpu=offer.gpu if offer else None,
        machine_type=gpu.get("id"), spot=False,
        public_ip=direct.get("host") if state == RUNNING else None, private_ip=None,
        labels=pod_labels(deployment) if deployment_of(pod.get("name")) else {},
        created=pod.get("createdAt"),
        # `cost` is the billed $/h, 0.0 while EXITED: then the catalog's price for when it runs again
        hourly_price=float(cost) if cost else (offer.on_demand_hourly if offer else None),
        ssh_user=direct.get("username") or "root", image=pod.get("image"),
        disk_size_gb=int(size) if size else None,
        ssh_port=int(direct["port"]) if direct.get("port") and state == RUNNING else None,
        ports=ports or None,
        disk_monthly_cost=catalog.disk_monthly_price(PROVIDER, size, "volume") if size else None,
    )


class RunpodBackend(PodBackend):
    provider = PROVIDER
    spot_supported = False
    default_image = DEFAULT_IMAGE

    def __init__(self, key: str, *, zones=None, endpoint: str | None = None, ports=None, cloud: str = DEFAULT_CLOUD,
                 start_command: str | None = None):
        self.api = JsonApi(endpoint or os.environ.get(ENV_ENDPOINT) or API_URL, key, PROVIDER,
                           f"{ENV_KEY} (or `api_key`)")
        self.zones = [z.strip() for z in zones or [] if z and z.strip()]
        self.ui_ports = sorted({int(p) for p in ports or []} - {SSH_PORT})
        self.cloud = cloud
        self.start_command = start_command  # createPod `args`: run instead of the image's CMD
        self._catalog: dict | None = None

    @classmethod
    def from_params(cls, params: dict) -> RunpodBackend:
        return cls(api_key(params, ENV_KEY), zones=params.get("zones") or [], endpoint=params.get("endpoint"),
                   ports=params.get("ports") or [], cloud=(params.get("pod_cloud") or DEFAULT_CLOUD).upper(),
                   start_command=params.get("start_command"))

    def _error(self, exc: ApiError, doing: str) -> SdcloudError:
        if exc.status == 402:
            return SdcloudError(f"RunPod refused {doing}: insufficient balance ({exc.message}): {BALANCE_FIX}",
                                code="InsufficientBalance", status=402)
        if exc.status == 403:
            fix = "the API key lacks access to it: give the key read/write access to Pods, or use another key"
        elif exc.status == 404:
            fix = "it is gone (terminated in the console?): re-run to pick up what exists"
        elif exc.status == 409:
            fix = "the pod is not in a state that allows it (see its status in the console): re-run in a minute"
        elif exc.status == 422:
            fix = "sdcloud sent a body RunPod's v2 schema refuses: report it, with this message"
        else:
            fix = "see RunPod's message; re-run once it is fixed"
        return SdcloudError(f"RunPod HTTP {exc.status} while {doing}: {exc.message} -- {fix}",
                            code=f"HTTP{exc.status}", status=exc.status)

    # --- reads -----------------------------------------------------------------------------------
    def _pods(self) -> list:
        try:
            page = self._call("GET", "/v2/pods", doing="listing pods (GET /v2/pods)")
        except ApiError as exc:
            raise self._error(exc, "listing pods") from exc
        return list((page or {}).get("pods") or [])

    def list_instances(self, deployment: str | None = None) -> list:
        found = [instance_from_pod(p) for p in self._pods() if deployment_of(p.get("name"))]
        found = [i for i in found if i.state != TERMINATED and (deployment is None or i.name == deployment)]
        return sorted(found, key=lambda i: (i.name, i.id))

    def _get(self, pod_id: str) -> dict | None:
        try:
            return self._call("GET", f"/v2/pods/{pod_id}", doing=f"reading pod {pod_id}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise self._error(exc, f"reading pod {pod_id}") from exc

    def read_instance(self, instance: Instance) -> Instance | None:
        pod = self._get(instance.id)
        if pod is None or pod.get("status") == "TERMINATED":
            return None
        return instance_from_pod(pod)

    def _gpu_catalog(self, gpu_id: str) -> dict | None:
        """The catalog entry of one GPU type with pod availability per data center (read once per run)."""
        if self._catalog is None:
            query = {"include": "AVAILABILITY", "product": "POD", "cloud": self.cloud}
            try:
                page = self._call("GET", "/v2/catalog/gpus", query=query, doing="reading the GPU catalog")
            except ApiError as exc:
                raise self._error(exc, "reading the GPU catalog (GET /v2/catalog/gpus)") from exc
            self._catalog = {g.get("id"): g for g in (page or {}).get("gpus") or []}
        return self._catalog.get(gpu_id)

    # --- placement hooks -------------------------------------------------------------------------
    def placement_zones(self, spec: InstanceSpec) -> list:
        return list(spec.zones or self.zones) or [ANY_ZONE]

    def offers_in_zone(self, zone: str, offer) -> str | None:
        entry = self._gpu_catalog(offer.machine_type)
        if entry is None:
            return f"RunPod's catalog lists no GPU type {offer.machine_type!r} ({self.cloud} cloud)"
        if not entry.get(self.cloud.lower(), True):
            return f"{offer.machine_type} is not offered on RunPod's {self.cloud} cloud"
        if zone == ANY_ZONE:
            return None
        centers = {d.get("id") for d in entry.get("dataCenters") or []}
        if zone not in centers:
            listed = ", ".join(sorted(c for c in centers if c)) or "none"
            return f"data center {zone} does not offer {offer.machine_type} for pods (it is listed in: {listed})"
        return None

    def prepare_placement(self, spec: InstanceSpec, offer) -> dict:
        if not spec.ssh_public_key:
            raise SdcloudError("RunPod pods are reached by SSH with the operator's key: set ssh_public_key",
                               code="NoSshKey")
        return {"spec": spec, "offer": offer}

    def pod_body(self, spec: InstanceSpec, offer, zone: str) -> dict:
        """The createPod body (CreatePodRequest) for spec in zone."""
        body = {
            "name": pod_name(spec.name),
            "image": spec.image or DEFAULT_IMAGE,
            "gpu": {"id": offer.machine_type, "count": offer.gpu_count},
            "cloud": self.cloud,
            "disk": CONTAINER_DISK_GB,
            "mounts": {"persistent": {"size": int(spec.disk_size_gb), "path": VOLUME_PATH}},
            # 22/tcp: the direct SSH mapping Ansible needs; UI ports over RunPod's HTTPS proxy
            "ports": [f"{SSH_PORT}/tcp"] + [f"{p}/http" for p in self.ui_ports],
            "env": {"PUBLIC_KEY": spec.ssh_public_key.strip()},
            "startSsh": True,
        }
        if zone != ANY_ZONE:
            body["dataCenterIds"] = [zone]
        if self.start_command:
            body["args"] = self.start_command
        return body

    def try_zone(self, placement: dict, zone: str, spot: bool, deadline: Deadline) -> Instance:
        spec, offer = placement["spec"], placement["offer"]
        pod = self._call("POST", "/v2/pods", self.pod_body(spec, offer, zone), write=True,
                         doing=f"creating pod {pod_name(spec.name)} ({offer.machine_type}) in {zone}")
        return instance_from_pod(pod)

    def classify_error(self, exc: Exception, placement: dict, zone: str, spot: bool):
        what = f"creating a {placement['offer'].machine_type} pod in {zone}"
        if not isinstance(exc, ApiError):
            return exc if isinstance(exc, SdcloudError) else SdcloudError(f"unexpected error while {what}: {exc}")
        if exc.status == 400:  # a rule broken, or no capacity: the reference gives both one status
            return Refusal(CODE_NO_CAPACITY, exc.message, "HTTP400")
        if exc.status == 403:  # "your account cannot access the requested pool": skip this candidate
            return Refusal(CODE_NOT_OFFERED, f"this API key/account cannot use that pool: {exc.message}", "HTTP403")
        return self._error(exc, what)

    # --- state changes ---------------------------------------------------------------------------
    def _action(self, instance: Instance, action: str) -> None:
        try:
            self._call("POST", f"/v2/pods/{instance.id}/action", {"action": action}, write=True,
                       doing=f"{action} of pod {instance.id}")
        except ApiError as exc:
            if action == "start" and GPU_GONE_TEXT in exc.message.lower():
                raise SdcloudError(
                    f"RunPod cannot start pod {instance.id} ({instance.name}): {exc.message} A stopped pod stays "
                    "on its machine, and another renter took that machine's GPU. Re-run later to try again, or "
                    "delete it (state: absent - its /workspace volume goes with it) and create it again, on "
                    "any machine with a free GPU", code="GpuUnavailable", status=exc.status) from exc
            raise self._error(exc, f"the {action} of pod {instance.id}") from exc

    def _request_state(self, instance: Instance, state: str) -> None:
        self._action(instance, "start" if state == RUNNING else "stop")

    def _delete_path(self, instance: Instance) -> str:
        return f"/v2/pods/{instance.id}"  # deletePod: terminate, the persistent volume with it


__all__ = ["RunpodBackend", "instance_from_pod", "proxy_url"]
