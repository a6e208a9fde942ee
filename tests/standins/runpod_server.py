"""TEST STAND-IN -- not RunPod.

An in-memory server speaking the part of RunPod's REST API v2 that sdcloud's runpod backend uses, written
from the public reference: https://docs.runpod.io/api-reference-v2 and its schema
https://api.runpod.io/v2/openapi.json (runpod/docs api-reference-v2/openapi.json, 2026-08). Nothing
here is observed from the real service; where the reference is silent, the comment says so.

Endpoints (paths as in the schema, server https://api.runpod.io):
- POST /v2/pods (createPod): CreatePodRequest -> 201 Pod. Unknown body keys -> 422 with `errors` (the
  schema's unevaluatedProperties: false); no `image` -> 422; placed in the first listed data center that
  stocks the GPU (`stock`), else 400 (capacity "carries no machine-readable code of its own - only a
  human-readable detail"). The pod starts PROVISIONING, then STARTING, then RUNNING on later reads
  (`reads_to_run`).
- GET /v2/pods (listPods) -> {"pods": [...]}; GET /v2/pods/{id} (getPod); DELETE /v2/pods/{id}
  (deletePod) -> 204, then 404 (a terminated pod "no longer appears").
- POST /v2/pods/{id}/action {"action": start|stop|restart|terminate} (podAction): 200 Pod, 204 for
  terminate, 409 when the action is not in the pod's `actions`.
- GET /v2/catalog/gpus (listGpuTypes): with include=AVAILABILITY (which needs product, else 400) each GPU
  carries availability and `dataCenters` (only those that stock it).
Errors are problem+json {title, status, detail[, errors]}; 401 "missing bearer token" without the key.
Every response carries the RateLimit / RateLimit-Policy headers the schema describes.

Pod shape: id, name, image, args, disk, ports, env, registry, status, actions, mounts, gpu{id, count},
cloud, dataCenterId, cudaVersion, ssh{proxy, direct}, template, cost, locked, globalNetworking, runtime
(null unless RUNNING: uptime, ports[{private, public, type, ip}]), createdAt, startedAt. `ssh.direct` and
the 22/tcp runtime port come from the SSH slot the pod gets each time it turns RUNNING (pod_standin).

Faults (add_fault(op, kind, zone=None, count=None)):
- create no_capacity -> 400. Detail text: the reference is silent; the words are the GraphQL API's
  ("There are no longer any instances available with the requested specifications...", as quoted in
  mlabonne/llm-autoeval #3).
- create no_balance -> 402 "Insufficient balance" (status from createPod's table; detail text guessed).
- create forbidden -> 403 (createPod: "Your account cannot access the requested pool").
- any rate_limit -> 429 with Retry-After (seconds; `retry_after`, default 0 for fast tests) and a detail
  like the schema's example "rate limit exceeded for the minute window".
- start gpu_gone -> 400 "There are not enough free GPUs on the host machine to start this pod." (the
  GraphQL podResume words, runpod-python #168; podAction's reference is silent on this case's status).
"""

from __future__ import annotations

import datetime
import sys

from pod_standin import JsonStandin, Reply, serve

# GPU ids and memory from runpod/docs references/gpu-types.mdx; per-GPU secure/community prices are
# stand-in values near the v2 catalog example (RTX 4090 secure 0.44, community 0.31).
GPU_TYPES = {
    "NVIDIA GeForce RTX 3090": ("RTX 3090", 24, 0.43, 0.22),
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 24, 0.44, 0.31),
    "NVIDIA GeForce RTX 5090": ("RTX 5090", 32, 0.89, 0.69),
    "NVIDIA RTX A4000": ("RTX A4000", 16, 0.25, 0.17),
    "NVIDIA RTX A5000": ("RTX A5000", 24, 0.27, 0.16),
    "NVIDIA RTX A6000": ("RTX A6000", 48, 0.49, 0.33),
    "NVIDIA L4": ("L4", 24, 0.43, 0.28),
    "NVIDIA L40S": ("L40S", 48, 0.86, 0.79),
    "NVIDIA A100 80GB PCIe": ("A100 PCIe", 80, 1.64, 1.19),
    "NVIDIA H100 80GB HBM3": ("H100 SXM", 80, 2.99, 2.69),
}
DATA_CENTERS = {"US-KS-2": "US Kansas 2", "EU-RO-1": "Europe Romania 1", "CA-MTL-1": "Canada Montreal 1"}
CREATE_KEYS = {"name", "image", "gpu", "cpu", "cloud", "dataCenterIds", "disk", "mounts", "ports", "env", "args",
               "registry", "startSsh", "startJupyter", "templateId", "globalNetworking"}
ACTIONS = {"PROVISIONING": ["stop", "terminate"], "STARTING": ["stop", "terminate"],
           "RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"],
           "ERROR": ["start", "terminate"]}
NO_CAPACITY = ("There are no longer any instances available with the requested specifications. Please refresh "
               "and try again.")
GPU_GONE = "There are not enough free GPUs on the host machine to start this pod."
RATE_HEADERS = {"RateLimit": '"minute";r=59;t=60', "RateLimit-Policy": '"minute";q=60;w=60'}
PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, errors=None, headers=None) -> Reply:
    body = {"title": title, "status": status, "detail": detail, **({"errors": errors} if errors else {})}
    return Reply(status, body, {"Content-Type": PROBLEM, **RATE_HEADERS, **(headers or {})})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunpodStandin(JsonStandin):
    """with RunpodStandin(slots=["10.10.0.5:22"]) as rp: ... RunpodBackend(key, endpoint=rp.url) ..."""

    name = "RunPod REST API v2 stand-in"
    FAULT_KINDS = {"no_capacity", "no_balance", "forbidden", "rate_limit", "gpu_gone"}

    def __init__(self, *args, stock: dict | None = None, reads_to_run: int = 2, retry_after: int = 0, **kwargs):
        # stock: GPU id -> data centers that have it for pods (default: every GPU in every data center)
        self.stock = {g: list(dcs) for g, dcs in (stock or {g: list(DATA_CENTERS) for g in GPU_TYPES}).items()}
        self.reads_to_run, self.retry_after = reads_to_run, retry_after
        super().__init__(*args, **kwargs)

    def reset_state(self):
        self.pods: dict = {}  # id -> pod dict (internal keys start with "_")

    def unauthorized(self, header):
        detail = "missing bearer token" if not header else "invalid bearer token"
        return 401, {"title": "Unauthorized", "status": 401, "detail": detail}, {"Content-Type": PROBLEM}

    def not_found(self, method, path):
        return 404, {"title": "Not Found", "status": 404, "detail": f"no route {method} {path}"}, \
            {"Content-Type": PROBLEM}

    # ---- helpers
    def _fault(self, op: str, zone: str | None = None):
        f = self.fault(op, zone)
        if f and f["kind"] == "rate_limit":
            raise problem(429, "Too Many Requests", "rate limit exceeded for the minute window",
                          headers={"Retry-After": self.retry_after})
        return f

    def _public(self, pod: dict) -> dict:
        out = {k: v for k, v in pod.items() if not k.startswith("_")}
        out["actions"] = list(ACTIONS.get(pod["status"], []))
        return out

    def _pod(self, pod_id: str) -> dict:
        pod = self.pods.get(pod_id)
        if pod is None:
            raise problem(404, "Not Found", "pod not found")
        return pod

    def _run(self, pod: dict):
        host, port, _ports = self.next_slot()  # http ports go through RunPod's proxy: no public mapping
        pod["status"], pod["startedAt"], pod["cost"] = "RUNNING", _now(), pod["_price"]
        pod["ssh"]["direct"] = {"host": host, "port": port, "username": "root",
                                "command": f"ssh root@{host} -p {port}"}
        mapped = [{"private": 22, "public": port, "type": "tcp", "ip": host}]
        for spec in pod["ports"]:
            number, _, kind = spec.partition("/")
            if kind == "http":  # http ports go through the proxy: no public IP mapping (expose-ports.mdx)
                mapped.append({"private": int(number), "public": None, "type": "http", "ip": None})
        pod["runtime"] = {"uptime": 0, "ports": mapped}
        self.notify("on_running", pod)

    def _tick(self, pod: dict):
        """PROVISIONING -> STARTING -> RUNNING as the pod is read (reads_to_run reads in all)."""
        if pod["status"] in ("PROVISIONING", "STARTING"):
            pod["_reads"] += 1
            if pod["_reads"] >= self.reads_to_run:
                self._run(pod)
            elif pod["status"] == "PROVISIONING":
                pod["status"] = "STARTING"
                pod["ssh"]["proxy"] = {"host": "ssh.runpod.io", "port": 22, "username": f"{pod['id']}-64411eb2",
                                       "command": f"ssh {pod['id']}-64411eb2@ssh.runpod.io"}

    def _stop(self, pod: dict):
        pod.update(status="EXITED", cost=0.0, runtime=None)
        pod["ssh"]["direct"] = None  # "absent while the pod is provisioning or stopped"
        self.notify("on_stopped", pod)

    # ---- routes
    def routes(self):
        return [
            ("POST", r"/v2/pods", self.create),
            ("GET", r"/v2/pods", self.list_pods),
            ("GET", r"/v2/pods/(?P<pod_id>[^/]+)", self.get_pod),
            ("DELETE", r"/v2/pods/(?P<pod_id>[^/]+)", self.delete_pod),
            ("POST", r"/v2/pods/(?P<pod_id>[^/]+)/action", self.action),
            ("GET", r"/v2/catalog/gpus", self.gpus),
        ]

    def create(self, body, query):
        body = body or {}
        extra = sorted(set(body) - CREATE_KEYS)
        if extra:
            raise problem(422, "Unprocessable Entity", "Request validation failed.",
                          [f"$: additional properties '{k}' not allowed" for k in extra])
        if not body.get("name") or not body.get("image"):
            raise problem(422, "Unprocessable Entity", "Request validation failed.",
                          ["$: required properties 'name', 'image' missing"])
        gpu = body.get("gpu") or {}
        if gpu.get("id") not in GPU_TYPES:
            raise problem(400, "Bad Request", f"unknown GPU type {gpu.get('id')!r}")
        cloud = body.get("cloud", "SECURE")
        wanted = body.get("dataCenterIds") or list(DATA_CENTERS)
        zone = wanted[0] if len(wanted) == 1 else None
        fault = self._fault("create", zone)
        if fault and fault["kind"] == "no_balance":
            raise problem(402, "Payment Required", "Insufficient balance: add funds to deploy this pod.")
        if fault and fault["kind"] == "forbidden":
            raise problem(403, "Forbidden", "access denied")
        placed = next((dc for dc in wanted if dc in self.stock.get(gpu["id"], [])), None)
        if placed is None or (fault and fault["kind"] == "no_capacity"):
            raise problem(400, "Bad Request", NO_CAPACITY)
        pod_id = f"{self.new_id():04d}standin"
        name, mem, secure, community = GPU_TYPES[gpu["id"]]
        count = int(gpu.get("count", 1))
        pod = {
            "id": pod_id, "name": body["name"], "image": body["image"], "args": body.get("args", ""),
            "disk": body.get("disk", 50), "ports": list(body.get("ports") or []), "env": dict(body.get("env") or {}),
            "registry": None, "status": "PROVISIONING", "mounts": body.get("mounts") or {},
            "gpu": {"id": gpu["id"], "count": count}, "cloud": cloud, "dataCenterId": placed, "cudaVersion": "12.8",
            "ssh": {"proxy": None, "direct": None}, "template": None, "cost": 0.0, "locked": False,
            "globalNetworking": {"enabled": False}, "runtime": None, "createdAt": _now(), "startedAt": None,
            "_reads": 0, "_price": round((secure if cloud == "SECURE" else community) * count, 2),
            "_start_ssh": bool(body.get("startSsh")),
            # what RunPod puts in every pod's environment besides `env` (pods/templates/environment-variables.mdx)
            "_injected": {"RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": self.scoped_key(pod_id)},
        }
        self.pods[pod_id] = pod
        raise Reply(201, self._public(pod), RATE_HEADERS)

    def list_pods(self, body, query):
        self._fault("list")
        for pod in self.pods.values():
            self._tick(pod)
        return {"pods": [self._public(p) for p in self.pods.values()]}

    def get_pod(self, body, query, pod_id):
        self._fault("get")
        pod = self._pod(pod_id)
        self._tick(pod)
        return self._public(pod)

    def delete_pod(self, body, query, pod_id):
        self._fault("delete")
        self.notify("on_deleted", self._pod(pod_id))
        del self.pods[pod_id]  # terminate is immediate here; then 404, as for any unknown pod
        raise Reply(204, None, RATE_HEADERS)

    def action(self, body, query, pod_id):
        action = (body or {}).get("action")
        if action not in ("start", "stop", "restart", "terminate"):
            raise problem(422, "Unprocessable Entity", "Request validation failed.",
                          [f"$.action: value must be one of start, stop, restart, terminate, got {action!r}"])
        pod = self._pod(pod_id)
        fault = self._fault(action, pod["dataCenterId"])
        if action not in ACTIONS.get(pod["status"], []):
            raise problem(409, "Conflict", f"cannot {action} a pod that is {pod['status']}")
        if action == "terminate":
            self.notify("on_deleted", pod)
            del self.pods[pod_id]
            raise Reply(204, None, RATE_HEADERS)
        if action == "start":
            if fault and fault["kind"] == "gpu_gone":
                raise problem(400, "Bad Request", GPU_GONE)
            pod.update(status="STARTING", _reads=0)
        elif action == "stop":
            self._stop(pod)
        return self._public(pod)

    def gpus(self, body, query):
        self._fault("catalog")
        include = query.get("include")
        if include and not query.get("product"):
            raise problem(400, "Bad Request", "include=AVAILABILITY requires product")
        out = []
        for gpu_id, (name, mem, secure, community) in GPU_TYPES.items():
            entry = {"id": gpu_id, "name": name, "pool": None, "manufacturer": "NVIDIA", "memory": mem,
                     "secure": True, "community": True, "price": {"secure": secure, "community": community},
                     "maxCount": {"secure": 8, "community": 4}}
            if include == "AVAILABILITY":
                centers = [{"id": dc, "name": DATA_CENTERS[dc], "availability": "HIGH"}
                           for dc in self.stock.get(gpu_id, [])]
                entry["availability"] = "HIGH" if centers else "NONE"
                if centers:  # "omitted entirely when the configuration is unavailable everywhere"
                    entry["dataCenters"] = centers
            out.append(entry)
        return {"gpus": out}


if __name__ == "__main__":
    serve(RunpodStandin, sys.argv[1:])
