"""TEST STAND-IN -- not vast.ai.

An in-memory server speaking the part of vast.ai's REST API that sdcloud's vastai backend uses, written
from the public reference https://docs.vast.ai/api-reference (vast-ai/docs api-reference/openapi/yaml,
2026-08). Nothing here is observed from the real service; where the reference is silent, it says so.

Endpoints (server https://console.vast.ai):
- POST /api/v0/bundles/ (search_offers.yaml): filters {field: {eq|neq|gt|lt|gte|lte|in|notin: v}} on the
  offer fields; `geolocation` matches the country code of "City, CC"; `type` bid|ondemand; `order`
  [[field, asc|desc]]; `limit`. Rented offers are not listed (rentable false while rented).
- PUT /api/v0/asks/{id}/ (create_instance.yaml): -> {"success": true, "new_contract": id}; an unknown or
  rented offer -> 404 {"error": "invalid_args", "msg": "error 404/3603: no_such_ask ..."}; no image or a bid
  outside 0.001-128 -> 400 invalid_args / invalid_price.
- POST /api/v0/instances/{id}/ssh/ (attach_ssh.yaml) -> {"success": true, "msg": "SSH key attached successfully"}.
- GET /api/v0/instances/{id}/ (show_instance.yaml) -> {"instances": {...}}; unknown -> 404
  {"error": "no_such_instance"} (show's reference documents only 400/401/429 - the manage/label
  references' not-found shape is used).
- GET /api/v1/instances/ (show_instances.yaml): keyset pages, limit <= 25, `next_token` (null at the end).
- PUT /api/v0/instances/{id}/ {"state": "running"|"stopped"} (manage_instance.yaml) -> {"success": true}.
- DELETE /api/v0/instances/{id}/ (destroy_instance.yaml) -> {"success": true, "msg": ...}; unknown -> 404.
Errors are {"success": false, "error": <code>, "msg": <text>}; 401 {"error": "auth_error", "msg": "Invalid
user key"} without the key; 429 {"detail": "API requests too frequent endpoint threshold=..."}.

Instance shape (show_instance.yaml): id, label, actual_status (null while the image loads, then running;
"exited" once stopped), intended_status, cur_state, next_state, image_uuid, image_runtype, gpu_name,
num_gpus, dph_total, is_bid, min_bid, geolocation, public_ipaddr, ports, ssh_host/ssh_port (vast's proxy),
direct_port_count, disk_space, storage_cost, inet_down_cost, inet_up_cost, start_date, machine_id,
status_msg. `ports` is the docker mapping {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41022"}], ...}
(the reference calls it a list of ports; vast's CLI and users read it as the docker mapping): the 22/tcp
entry comes from the SSH slot the instance gets each time it turns running (pod_standin); other ports
get the slot's own mapping ({"ports": {8188: 18188}}), else the slot's port + their index.

Faults (add_fault(op, kind, zone=None, count=None)):
- create gone -> 410 no_such_ask (the offer went away between search and create: create_instance.yaml).
- create no_balance -> 400 {"error": "insufficient_credit", "msg": "Insufficient credit"}: the create
  reference documents no credit error; status and code are guessed from prepay's 411 "Insufficient credit".
- any rate_limit -> 429 {"detail": "API requests too frequent endpoint threshold=4.5"} (no Retry-After).
- start gpu_gone -> the start is accepted, but the instance stays actual_status "scheduling" with a
  status_msg until the fault is cleared (the reference is silent on how a busy GPU reads; guessed).
No capacity needs no fault: seed `offers` that do not match.
"""

from __future__ import annotations

import base64
import copy
import operator
import sys
import time

from pod_standin import JsonStandin, Reply, serve

# Offers: realistic fields (search_offers.yaml example), stand-in values.
BASE_OFFER = {"num_gpus": 1, "rentable": True, "rented": False, "verified": True, "verification": "verified",
              "reliability": 0.995, "cuda_max_good": 12.8, "direct_port_count": 20, "disk_space": 500.0,
              "inet_down": 900.0, "inet_up": 600.0, "inet_down_cost": 0.004, "inet_up_cost": 0.003,
              "storage_cost": 0.15, "gpu_arch": "nvidia", "cpu_cores_effective": 8, "gpu_ram": 24564}
DEFAULT_OFFERS = [
    {"id": 1001, "gpu_name": "RTX 4090", "dph_total": 0.41, "min_bid": 0.25, "geolocation": "Oregon, US",
     "machine_id": 501},
    {"id": 1002, "gpu_name": "RTX 4090", "dph_total": 0.38, "min_bid": 0.22, "geolocation": "Bavaria, DE",
     "machine_id": 502},
    {"id": 1003, "gpu_name": "RTX 3090", "dph_total": 0.22, "min_bid": 0.12, "geolocation": "Quebec, CA",
     "machine_id": 503},
    {"id": 1004, "gpu_name": "RTX A6000", "dph_total": 0.47, "min_bid": 0.28, "geolocation": "Texas, US",
     "machine_id": 504},
]
RATE_LIMITED = {"detail": "API requests too frequent endpoint threshold=4.5"}


def error(status: int, code: str, msg: str) -> Reply:
    return Reply(status, {"success": False, "error": code, "msg": msg})


OPERATORS = {"eq": operator.eq, "neq": operator.ne, "gt": operator.gt, "lt": operator.lt, "gte": operator.ge,
             "lte": operator.le, "in": lambda got, want: got in want, "notin": lambda got, want: got not in want}


def _matches(offer: dict, field: str, cond: dict) -> bool:
    got = offer.get(field)
    if field == "geolocation" and got:
        got = got.rsplit(",", 1)[-1].strip()
    for op, want in cond.items():
        if op not in OPERATORS:
            raise error(400, "invalid_request", f"unknown operator {op!r} for {field}")
        if op in ("gt", "lt", "gte", "lte") and got is None:
            return False
        if not OPERATORS[op](got, want):
            return False
    return True


class VastStandin(JsonStandin):
    """with VastStandin(slots=["10.11.0.5:22"]) as vast: ... VastBackend(key, endpoint=vast.url) ..."""

    name = "vast.ai REST API stand-in"
    FAULT_KINDS = {"gone", "no_balance", "rate_limit", "gpu_gone"}

    def __init__(self, *args, offers: list | None = None, reads_to_run: int = 2, **kwargs):
        self.seed_offers = [dict(BASE_OFFER, **o) for o in (offers if offers is not None else DEFAULT_OFFERS)]
        self.reads_to_run = reads_to_run
        super().__init__(*args, **kwargs)

    def reset_state(self):
        self.offers = {o["id"]: copy.deepcopy(o) for o in getattr(self, "seed_offers", [])}
        self.instances: dict = {}

    def unauthorized(self, header):
        return 401, {"success": False, "error": "auth_error", "msg": "Invalid user key"}, {}

    def not_found(self, method, path):
        return 404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"}, {}

    def _fault(self, op: str, zone: str | None = None):
        f = self.fault(op, zone)
        if f and f["kind"] == "rate_limit":
            raise Reply(429, RATE_LIMITED)
        return f

    def _inst(self, inst_id) -> dict:
        inst = self.instances.get(int(inst_id))
        if inst is None:
            raise error(404, "no_such_instance", f"Instance {inst_id} not found.")
        return inst

    def _public(self, inst: dict) -> dict:
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def _run(self, inst: dict):
        host, port, mapped = self.next_slot()
        inst.update(actual_status="running", cur_state="running", public_ipaddr=host, status_msg="running")
        ports = {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
        for n, internal in enumerate(inst["_ui_ports"], start=1):  # the slot's mapping, else the next ports up
            public = (mapped or {}).get(internal, port + n)
            ports[f"{internal}/tcp"] = [{"HostIp": "0.0.0.0", "HostPort": str(public)}]
        inst["ports"] = ports
        self.notify("on_running", inst)

    def _tick(self, inst: dict):
        if inst["intended_status"] == "running" and inst["actual_status"] != "running":
            if inst.get("_waiting_gpu"):
                if not any(f["kind"] == "gpu_gone" for f in self.faults):
                    inst["_waiting_gpu"] = False
                return
            inst["_reads"] += 1
            if inst["_reads"] >= self.reads_to_run:
                self._run(inst)
            else:
                inst["actual_status"] = "loading"

    # ---- routes
    def routes(self):
        i = r"/api/v0/instances/(?P<inst_id>\d+)/"
        return [
            ("POST", r"/api/v0/bundles/", self.search),
            ("PUT", r"/api/v0/asks/(?P<ask_id>\d+)/", self.create),
            ("POST", i + "ssh/", self.attach_ssh),
            ("GET", i, self.show),
            ("PUT", i, self.manage),
            ("DELETE", i, self.destroy),
            ("GET", r"/api/v1/instances/", self.list_instances),
        ]

    def search(self, body, query):
        body = body or {}
        self._fault("search")
        skip = {"limit", "type", "order", "allocated_storage"}
        found = [o for o in self.offers.values()
                 if not o["rented"] and all(_matches(o, k, v) for k, v in body.items() if k not in skip)]
        for field, direction in reversed(body.get("order") or []):
            found.sort(key=lambda o, f=field: o.get(f) or 0, reverse=direction == "desc")
        bid = body.get("type") == "bid"
        out = [dict(o, is_bid=bid) for o in found[: int(body.get("limit") or 64)]]
        return {"offers": out}

    def create(self, body, query, ask_id):
        body = body or {}
        offer = self.offers.get(int(ask_id))
        zone = (offer or {}).get("geolocation", "").rsplit(",", 1)[-1].strip() or None
        fault = self._fault("create", zone)
        if fault and fault["kind"] == "no_balance":
            raise error(400, "insufficient_credit", "Insufficient credit")
        if offer is None or offer["rented"]:
            raise error(404, "invalid_args", f"error 404/3603: no_such_ask Instance type by id {ask_id} is not "
                                             "available.")
        if fault and fault["kind"] == "gone":
            raise error(410, "no_such_ask", f"error 410/3907: no_such_ask Instance type {ask_id} is no longer "
                                            "available.")
        if not body.get("image"):
            raise error(400, "invalid_args", "error 400/3467: Invalid args: 'image' is required")
        if "price" in body and not 0.001 <= float(body["price"]) <= 128.0:
            raise error(400, "invalid_price", "error 400: bid price must be between 0.001 and 128")
        if float(body.get("disk") or 8) < 8:
            raise error(400, "invalid_args", "error 400: disk must be at least 8 GB")
        offer["rented"] = True
        inst_id = 70000 + self.new_id()
        ui_ports = [int(tok.split(":")[1]) for tok in body.get("env", "").split() if ":" in tok and
                    tok.split(":")[0].isdigit() and tok.split(":")[0] != "22"]
        bid = "price" in body
        self.instances[inst_id] = {
            "id": inst_id, "label": body.get("label"), "actual_status": None, "intended_status": "running",
            "cur_state": "running", "next_state": "running", "image_uuid": body["image"],
            "image_runtype": body.get("runtype", "ssh"), "onstart": body.get("onstart"),
            "gpu_name": offer["gpu_name"], "num_gpus": offer["num_gpus"],
            "dph_total": float(body["price"]) if bid else offer["dph_total"], "is_bid": bid, "min_bid": offer["min_bid"],
            "geolocation": offer["geolocation"], "public_ipaddr": None, "ports": {},
            "ssh_host": f"ssh{inst_id % 10}.vast.ai", "ssh_port": 20000 + inst_id % 10000,
            "direct_port_count": offer["direct_port_count"], "disk_space": float(body.get("disk") or 8),
            "storage_cost": offer["storage_cost"], "inet_down_cost": offer["inet_down_cost"],
            "inet_up_cost": offer["inet_up_cost"], "start_date": time.time(), "machine_id": offer["machine_id"],
            "status_msg": None, "_reads": 0, "_ask": offer["id"], "_ui_ports": ui_ports, "_ssh_keys": [],
            # what vast.ai puts in every instance's environment (guides/instances/docker-environment.mdx)
            "_injected": {"CONTAINER_ID": str(inst_id), "CONTAINER_API_KEY": self.scoped_key(inst_id)},
        }
        return {"success": True, "new_contract": inst_id}

    def attach_ssh(self, body, query, inst_id):
        inst = self._inst(inst_id)
        key = (body or {}).get("ssh_key", "")
        if not key.startswith(("ssh-", "ecdsa-")):
            raise error(400, "invalid_args", "invalid ssh key")
        inst["_ssh_keys"].append(key)
        return {"success": True, "msg": "SSH key attached successfully"}

    def show(self, body, query, inst_id):
        self._fault("get")
        inst = self._inst(inst_id)
        self._tick(inst)
        return {"instances": self._public(inst)}

    def manage(self, body, query, inst_id):
        inst = self._inst(inst_id)
        state = (body or {}).get("state")
        fault = self._fault("start" if state == "running" else "stop")
        if state == "stopped":
            inst.update(intended_status="stopped", cur_state="stopped", actual_status="exited", ports={},
                        public_ipaddr=None, status_msg="stopped")
            self.notify("on_stopped", inst)
        elif state == "running":
            inst.update(intended_status="running", cur_state="running", actual_status="scheduling", _reads=0)
            if fault and fault["kind"] == "gpu_gone":
                inst.update(_waiting_gpu=True, status_msg="waiting for the machine's GPU to be free")
        elif "label" in (body or {}):
            inst["label"] = body["label"]
        else:
            raise error(400, "invalid_args", "state must be running or stopped")
        return {"success": True}

    def destroy(self, body, query, inst_id):
        self._fault("delete")
        inst = self._inst(inst_id)
        self.notify("on_deleted", inst)
        del self.instances[inst["id"]]
        self.offers[inst["_ask"]]["rented"] = False
        return {"success": True, "msg": "Instance destroyed successfully"}

    def list_instances(self, body, query):
        self._fault("list")
        limit = int(query.get("limit") or 25)
        limit = 5 if limit <= 0 else min(limit, 25)
        after = int(base64.b64decode(query["after_token"]).decode()) if query.get("after_token") else 0
        ids = sorted(i for i in self.instances if i > after)
        page = ids[:limit]
        for inst_id in page:
            self._tick(self.instances[inst_id])
        more = len(ids) > limit
        token = base64.b64encode(str(page[-1]).encode()).decode() if more else None
        return {"success": True, "count": len(page), "next_token": token,
                "instances": [self._public(self.instances[i]) for i in page]}


if __name__ == "__main__":
    serve(VastStandin, sys.argv[1:])
