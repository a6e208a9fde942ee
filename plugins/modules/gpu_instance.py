#!/usr/bin/python
"""Ansible module: one GPU VM (GCP, AWS) or GPU pod (RunPod, vast.ai) per sdcloud deployment."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_instance
short_description: Create, start, stop or delete the GPU VM or pod of an sdcloud deployment
description:
  - Finds the deployment's instance by its labels/tags (C(sdcloud-managed=true), C(sdcloud-deployment=<name>)),
    compares it with the wanted O(state) and changes only what differs.
  - Creation walks the O(zones) preference list on stockout, skips zones that do not offer the machine type,
    names the quota that blocks it (and how to raise it), and can fall back from spot to on-demand.
  - Spot instances are created so that preemption stops them and keeps the disk (GCP SPOT with
    instanceTerminationAction STOP; AWS persistent spot request with interruption behaviour stop).
  - Check mode returns the plan and changes nothing. Diff mode returns the state before and after.
  - RunPod (REST API v2) and vast.ai (REST API v0) rent GPU pods, containers reached over SSH on a port the
    provider maps. They have no labels, so the deployment is recorded in the pod name (RunPod) or the
    instance label (vast.ai) as C(sdcloud:<name>). O(zones) are RunPod data center ids (V(US-KS-2)) or vast.ai
    country codes (V(US), V(DE)); V(any) or none lets the provider choose. RunPod has no spot capacity; with
    O(spot=true) the module warns once and creates on-demand. vast.ai's spot is an interruptible instance bid
    at the offer's minimum bid (paused, disk kept, when outbid).
version_added: "0.1.0"
author: sdcloud
extends_documentation_fragment: [cloud]
options:
  name:
    description: The deployment name. Also the instance name (GCP) / C(Name) tag (AWS); pods are named C(sdcloud:<name>).
    type: str
    required: true
  state:
    description:
      - V(present) and V(running) create the instance if missing and start it if stopped (resume it if suspended,
        waiting first for a stop in progress), then wait until it runs with a public IP.
      - For an existing instance, O(ssh_public_key) is checked against the key it accepts, GCP, its C(ssh-keys)
        metadata is updated to the key (changed); AWS cannot change the key of an instance, so the module fails
        naming how to fix it when the deployment's key pair holds another key.
      - V(stopped) stops it and keeps its disk (storage is still billed; the result says how much). A stopped pod
        keeps its volume but not its GPU; a later start can find that GPU rented by someone else (the error says so).
      - V(absent) deletes the instance and its disk, and on AWS the key pair and security group made for it; a pod
        is terminated with its volume.
    type: str
    default: present
    choices: [present, running, stopped, absent]
  gpu:
    description:
      - Neutral GPU name, mapped per cloud by the sdcloud catalog, for example V(nvidia-t4), V(nvidia-l4),
        V(nvidia-a10g) (AWS only), V(nvidia-l40s) (AWS, pods), V(nvidia-a100), V(nvidia-a100-80gb), V(nvidia-h100).
      - Pods (RunPod, vast.ai) also rent V(nvidia-rtx-3090), V(nvidia-rtx-4090), V(nvidia-rtx-5090),
        V(nvidia-rtx-a4000), V(nvidia-rtx-a5000), V(nvidia-rtx-a6000).
      - Required to create an instance.
    type: str
  zones:
    description:
      - Preference list. GCP, zones (V(us-central1-a)).
      - AWS, regions and/or availability zones; a region (V(us-east-1)) expands to its available zones in
        alphabetical order, an availability zone (V(us-east-1b)) is tried as given.
      - The existing instance is looked up in the regions these name, so keep the list stable for a deployment.
      - RunPod, data center ids (V(US-KS-2), V(EU-RO-1)), each tried with one create call; a data center the GPU
        catalog does not list for the GPU is skipped. vast.ai, two-letter country codes. V(any) (or no zones) lets
        the provider place it anywhere.
    type: list
    elements: str
    default: []
  spot:
    description: Use spot capacity (about a third of the on-demand price; may be preempted, the disk is kept).
    type: bool
    default: true
  spot_fallback:
    description: What to do when no zone has spot capacity. V(on-demand) retries every zone on-demand.
    type: str
    default: none
    choices: [none, on-demand]
  disk_size_gb:
    description: Boot disk size in GB. Pods, the persistent volume (RunPod C(/workspace)) or the container disk (vast.ai).
    type: int
    default: 100
  image:
    description:
      - Image to boot. AWS, an AMI id (V(ami-...)), an alias (V(dlami-ubuntu-22.04) (default),
        V(dlami-ubuntu-24.04), V(ubuntu-22.04), V(ubuntu-24.04)) or an AMI name filter such as
        V(my-sd-image-*) (searched among images owned by Amazon, Canonical and your account; newest wins).
      - GCP, an image self-link, C(projects/<p>/global/images/<name>), C(projects/<p>/global/images/family/<family>)
        (its newest image), an image name in O(project), or an alias (V(dlvm-ubuntu-22.04) (default),
        V(ubuntu-22.04), V(ubuntu-24.04), V(debian-12), each the newest image of its family).
      - Default, the Deep Learning image with the NVIDIA driver (AWS Deep Learning Base OSS Nvidia Driver
        GPU AMI (Ubuntu 22.04); GCP Deep Learning VM).
      - RunPod and vast.ai, a container image with CUDA and an sshd that takes the operator's key (RunPod, from
        E(PUBLIC_KEY)); default RunPod's C(runpod/pytorch) image, vast.ai's C(vastai/base-image).
      - Mutually exclusive with O(image_family).
    type: str
  image_family:
    description:
      - GCP, an image family; the newest image in it is booted, looked up at creation (the one chosen is
        recorded in the instance's metadata C(sdcloud-image)). V(project/family) names the image project
        (V(ubuntu-os-cloud/ubuntu-2204-lts)); a bare family is looked up in the image project sdcloud's catalog
        knows for it (V(ubuntu-2204-lts) in C(ubuntu-os-cloud)), else in O(project); an alias
        (V(dlvm-ubuntu-22.04) ...) works as for O(image).
      - AWS, the same values as O(image) (an alias or an AMI name filter); AMIs have no families.
      - Mutually exclusive with O(image).
    type: str
  ssh_public_key:
    description:
      - OpenSSH public key line to authorize for O(ssh_user). AWS, imported as key pair C(sdcloud-<name>); a key pair
        of that name holding another key is replaced before an instance is created.
    type: str
  ssh_user:
    description: Login user of the image (pods log in as C(root), whatever this says).
    type: str
    default: ubuntu
  ports:
    description:
      - Pods (RunPod, vast.ai), the container ports to expose besides SSH (the UI ports, e.g. V(8188)); they can
        only be set at creation. RunPod serves them through its HTTPS proxy (C(https://<pod id>-<port>.proxy.runpod.net),
        public, 100 s timeout); vast.ai maps each to a random public port. Ignored by GCP and AWS.
    type: list
    elements: int
    default: []
  pod_cloud:
    description: RunPod, V(SECURE) (RunPod's data centers) or V(COMMUNITY) (community hosts, cheaper).
    type: str
    default: SECURE
    choices: [SECURE, COMMUNITY]
  max_hourly_price:
    description: vast.ai, the most USD per hour an offer may cost (offer filter C(dph_total)); unset, no limit.
    type: float
  start_command:
    description:
      - Pods, the container's start hook, set at creation (an existing pod keeps the one it was created with).
      - RunPod, the pod's docker start command (createPod C(args)); it runs instead of the image's own start
        command, so it must still start sshd (RunPod's images do that in C(/start.sh)), e.g.
        V(bash -c '/workspace/start-hook.sh; exec /start.sh').
      - vast.ai, C(onstart), run at every container start after vast's own launcher started sshd.
    type: str
  labels:
    description: Extra labels (GCP) / tags (AWS) for every resource created. sdcloud's own keys always win.
    type: dict
    default: {}
  wait_timeout:
    description: Seconds to wait for the instance to reach the wanted state; the error says what it waited for.
    type: int
    default: 600
  host_keys_timeout:
    description:
      - When above 0 and the instance runs, also return the SSH host keys its guest published through the cloud
        API (GCP guest attributes, namespace C(hostkeys)), waiting up to this many seconds for them, so the caller
        can pin them before the first connection; AWS reads the keys cloud-init prints on the serial console
        (GetConsoleOutput). Pods publish none (the result's list is empty, with a warning).
    type: int
    default: 0
notes:
  - Supports check mode (returns the plan) and diff mode.
  - Prices in the result come from the sdcloud catalog (a dated snapshot), not from the cloud's billing.
"""

EXAMPLES = r"""
- name: Create (or start) a spot L4 on AWS, trying two zones then the rest of us-west-2
  gpu_instance:
    provider: aws
    name: sd1
    gpu: nvidia-l4
    zones: [us-east-1b, us-east-1c, us-west-2]
    spot: true
    spot_fallback: on-demand
    ssh_public_key: "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
  register: gpu_instance_result

- name: Show how to connect
  ansible.builtin.debug:
    msg: "ssh {{ gpu_instance_result.instance.ssh_user }}@{{ gpu_instance_result.instance.public_ip }}"

- name: Create a T4 on GCP
  gpu_instance:
    provider: gcp
    project: my-project
    name: sd1
    gpu: nvidia-t4
    zones: [us-central1-a, us-central1-b]

- name: Create an RTX 4090 pod on RunPod (on-demand; RunPod has no spot) with ComfyUI's port behind its proxy
  gpu_instance:
    provider: runpod
    name: sd1
    gpu: nvidia-rtx-4090
    zones: [EU-RO-1, any]
    spot: false
    ports: [8188]
    disk_size_gb: 100
    ssh_public_key: "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
  register: gpu_instance_pod

- name: Show how to connect (SSH on the mapped port)
  ansible.builtin.debug:
    msg: "ssh -p {{ gpu_instance_pod.instance.ssh_port }} root@{{ gpu_instance_pod.instance.public_ip }}"

- name: Stop it, keeping the disk
  gpu_instance:
    provider: aws
    name: sd1
    zones: [us-east-1b, us-east-1c, us-west-2]
    state: stopped

- name: Delete it
  gpu_instance:
    provider: aws
    name: sd1
    zones: [us-east-1b, us-east-1c, us-west-2]
    state: absent
"""

RETURN = r"""
instance:
  description: The instance after the change (null when absent or in check mode before creation).
  returned: always
  type: dict
  contains:
    name: {description: Deployment name., type: str}
    provider: {description: "gcp, aws, runpod or vastai.", type: str}
    id: {description: Cloud instance id (pod id, vast.ai instance id)., type: str}
    zone: {description: Zone it runs in., type: str}
    region: {description: Its region., type: str}
    state:
      description:
        - V(running), V(stopped), V(pending), V(stopping), V(terminated), or V(suspended) (GCP SUSPENDING /
          SUSPENDED, its memory kept and billed; O(state=present) resumes it, O(state=stopped) reports it and
          changes nothing).
      type: str
    gpu: {description: Neutral GPU name., type: str}
    machine_type: {description: Machine / instance type., type: str}
    spot: {description: Whether it is a spot instance., type: bool}
    public_ip: {description: Public IPv4 (changes on every start)., type: str}
    private_ip: {description: Private IPv4., type: str}
    labels: {description: Its labels / tags., type: dict}
    created: {description: Creation time (RFC 3339)., type: str}
    hourly_price: {description: Catalog price in USD per hour (spot or on-demand)., type: float}
    ssh_user: {description: Login user., type: str}
    image: {description: Image it booted from., type: str}
    disk_size_gb: {description: Boot disk size in GB (pods, the volume)., type: int}
    ssh_port:
      description: Pods, the public port mapped to the pod's SSH port 22 (null on VMs, which listen on 22, and while a pod
        is not running). It changes on every start.
      type: int
    ports:
      description:
        - Pods, container port (a string) -> C(ip), C(port) (the public mapping, null until it runs), C(type)
          (C(tcp)/C(http)) and C(url) (RunPod's HTTPS proxy URL of an http port; vast.ai C(http://ip:port)). Null on VMs.
      type: dict
    disk_monthly_cost:
      description: USD per month the disk bills while stopped, when the provider prices it per instance (RunPod
        volume $0.20/GB-month stopped; vast.ai the host's own storage price); null on VMs (see O(state=stopped)).
      type: float
    bandwidth_price_gb:
      description: vast.ai, USD per GB downloaded on this host (models are large); null elsewhere.
      type: float
attempts:
  description:
    - Every zone considered while creating, in order (spot first, then on-demand with O(spot_fallback)), with
      the outcome and why a zone failed or was skipped, in the same words on every provider ([] when nothing was
      created). When nothing could be created the failure carries the same list, and its C(code) is the most
      telling of the attempts' codes.
  returned: always
  type: list
  elements: dict
  contains:
    zone: {description: The zone., type: str}
    spot: {description: Whether spot capacity was asked for., type: bool}
    result:
      description: V(created), V(failed) (the cloud was asked and refused) or V(skipped) (it was not asked).
      type: str
    code:
      description:
        - Why it failed or was skipped (null when created).
        - V(NotOffered) (skipped) the zone does not offer the machine type or GPU, or is no zone of that cloud.
        - V(NoCapacity) (failed) a stockout; the next zone is tried.
        - V(QuotaExceeded) (failed) a quota refused it; (skipped) a quota an earlier zone hit covers this zone too
          (a regional quota, its region; a global one, every zone).
        - V(Throttled) (failed) the API kept throttling the create call after retries.
        - V(NoNetwork) (skipped) nothing to attach the instance to in that zone (AWS, no subnet in the zone).
        - V(Preempted) (failed) the spot instance was created but reclaimed before it ran (found at the next poll
          of the create wait); it was deleted and the next zone is tried.
      type: str
    cloud_code:
      description: The cloud's own error code (V(ZONE_RESOURCE_POOL_EXHAUSTED), V(InsufficientInstanceCapacity),
        V(QUOTA_EXCEEDED), V(VcpuLimitExceeded) ...); null when the cloud was not asked.
      type: str
    reason: {description: The cloud's message when it refused; why it was skipped otherwise., type: str}
  sample:
    - {zone: us-east-1a, spot: true, result: failed, code: NoCapacity, cloud_code: InsufficientInstanceCapacity,
       reason: "We currently do not have sufficient g6.xlarge capacity ..."}
    - {zone: us-east-1e, spot: true, result: skipped, code: NotOffered, cloud_code: null,
       reason: us-east-1e does not offer g6.xlarge}
    - {zone: us-east-1b, spot: true, result: created, code: null, cloud_code: null, reason: null}
plan:
  description: In check mode, when the instance would be created, what create would try; the same keys on every provider.
  returned: check mode, when there is no instance yet
  type: dict
  contains:
    provider: {description: gcp or aws., type: str}
    machine_type: {description: Machine / instance type., type: str}
    gpu: {description: Neutral GPU name., type: str}
    gpu_count: {description: GPUs in that machine type., type: int}
    zones: {description: The zones that would be tried, in order (those offering the machine type)., type: list, elements: str}
    zones_not_offering: {description: The zones of O(zones) that would be skipped, each with why., type: dict}
    spot: {description: Whether spot is tried first., type: bool}
    spot_fallback: {description: The O(spot_fallback) given., type: str}
    image:
      description: The image it would boot (GCP self-link, AWS AMI id), looked up for the first zone; null when no zone
        offers the type.
      type: str
    image_name: {description: That image's name., type: str}
    disk_size_gb: {description: Boot disk size in GB., type: int}
    hourly_price: {description: Catalog price in USD per hour (spot or on-demand as asked)., type: float}
    on_demand_hourly_price: {description: Catalog on-demand price in USD per hour., type: float}
    price_note: {description: Where the prices come from., type: str}
deleted:
  description: What was deleted, in order (the instance with its disk, then on AWS its key pair, security group and
    spot request; on GCP boot disks a half-failed create left).
  returned: when O(state=absent), except in check mode
  type: list
  elements: dict
  contains:
    kind: {description: "instance, disk, firewall, key_pair or spot_request.", type: str}
    id: {description: The cloud id (AWS) or name (GCP) of what was deleted., type: str}
  sample:
    - {kind: instance, id: i-0123456789abcdef0}
    - {kind: key_pair, id: sdcloud-sd1}
    - {kind: firewall, id: sg-0123456789abcdef0}
host_keys:
  description: The published SSH host keys, "type base64" lines ([] when none were published in time).
  returned: when host_keys_timeout is above 0 and the instance runs
  type: list
  elements: str
host_key_alias:
  description: The name to record them under in known_hosts (the HostKeyAlias the inventory gives the host).
  returned: when host_keys_timeout is above 0 and the instance runs
  type: str
disk_monthly_cost:
  description: USD per month the boot disk costs while the instance is stopped (catalog price; pods, the provider's).
  returned: when state is stopped
  type: float
msg:
  description: What was done, in one sentence.
  returned: always
  type: str
"""

from ansible.module_utils.sdcloud import catalog
from ansible.module_utils.sdcloud.base import (
    PENDING,
    RUNNING,
    STOPPED,
    STOPPING,
    SUSPENDED,
    Instance,
    InstanceSpec,
    SdcloudError,
    host_key_alias,
)
from ansible.module_utils.sdcloud.module import cloud_module, run


def argument_spec() -> dict:
    return {
        "name": {"type": "str", "required": True},
        "state": {"type": "str", "default": "present", "choices": ["present", "running", "stopped", "absent"]},
        "gpu": {"type": "str"},
        "spot": {"type": "bool", "default": True},
        "spot_fallback": {"type": "str", "default": "none", "choices": ["none", "on-demand"]},
        "disk_size_gb": {"type": "int", "default": 100},
        "image": {"type": "str"},
        "image_family": {"type": "str"},
        "ssh_public_key": {"type": "str"},
        "ssh_user": {"type": "str", "default": "ubuntu"},
        "labels": {"type": "dict", "default": {}},
        "wait_timeout": {"type": "int", "default": 600},
        "host_keys_timeout": {"type": "int", "default": 0},
        "ports": {"type": "list", "elements": "int", "default": []},
        "pod_cloud": {"type": "str", "default": "SECURE", "choices": ["SECURE", "COMMUNITY"]},
        "max_hourly_price": {"type": "float"},
        "start_command": {"type": "str"},
    }


def _summary(inst) -> dict:
    if inst is None:
        return {"state": "absent"}
    return {"state": inst.state, "id": inst.id, "zone": inst.zone, "machine_type": inst.machine_type,
            "spot": inst.spot, "public_ip": inst.public_ip}


def _spec(params) -> InstanceSpec:
    return InstanceSpec(
        name=params["name"], gpu=params["gpu"], zones=list(params["zones"]), spot=params["spot"],
        spot_fallback=params["spot_fallback"], disk_size_gb=params["disk_size_gb"], image=params["image"],
        image_family=params["image_family"], ssh_public_key=params["ssh_public_key"], ssh_user=params["ssh_user"],
        labels=dict(params["labels"] or {}),
    )


def _disk_cost(provider, inst, disk_size_gb) -> float:
    if inst.disk_monthly_cost is not None:  # priced by the provider for this instance (pods)
        return inst.disk_monthly_cost
    size = inst.disk_size_gb or disk_size_gb
    disk_type = None
    if inst.gpu and inst.gpu in catalog.GPUS and provider in catalog.GPUS[inst.gpu]:
        disk_type = catalog.GPUS[inst.gpu][provider].disk_type
    return catalog.disk_monthly_price(provider, size, disk_type)


def _validate(params) -> None:
    if params["disk_size_gb"] < 10:
        raise SdcloudError(f"disk_size_gb={params['disk_size_gb']} is too small: use at least 10 (100 recommended)")
    if params["wait_timeout"] < 0:
        raise SdcloudError("wait_timeout must be >= 0 seconds")
    if params["gpu"]:
        catalog.offering(params["provider"], params["gpu"])  # raises with the valid names


def _key_changed(module, backend, found, result) -> bool:
    """Make the existing instance accept ssh_public_key (the operator's key may have changed since it was
    created): True when that changed something (or would, in check mode); result["key_msg"] says what."""
    p = module.params
    if not p["ssh_public_key"]:
        return False
    if not backend.ensure_ssh_key(found, p["ssh_user"], p["ssh_public_key"], p["wait_timeout"], module.check_mode):
        return False
    result["changed"] = True
    verb = "would authorize" if module.check_mode else "authorized"
    result["key_msg"] = f"{verb} the current ssh_public_key for {p['ssh_user']} (the instance had another key)"
    return True


def _create(module, backend, result) -> dict:
    """No instance yet: create one (or, in check mode, say what would be). Returns the diff's `after`."""
    p = module.params
    provider = p["provider"]
    if not p["gpu"]:
        raise SdcloudError(f"deployment {p['name']!r} has no instance and `gpu` is not set: set gpu to one "
                           f"of {', '.join(catalog.gpu_names(provider))}")
    if not p["zones"] and provider == "gcp":
        raise SdcloudError("no zones: set `zones`, e.g. [us-central1-a, us-central1-b]")
    spec = _spec(p)
    if spec.spot and not backend.spot_supported:
        module.warn(f"{provider} has no spot capacity: creating an on-demand pod at the on-demand price "
                    "(set spot: false to silence this)")
        spec.spot = False
    result["changed"] = True
    if module.check_mode:
        plan = backend.plan_create(spec)
        result["plan"] = plan
        zones = ", ".join(plan.get("zones") or []) or "no zone offering it"
        result["msg"] = (f"would create {plan.get('machine_type')} ({p['gpu']}, "
                         f"{'spot' if p['spot'] else 'on-demand'}) trying {zones}")
        return {"state": RUNNING, "machine_type": plan.get("machine_type"), "spot": p["spot"]}
    inst, attempts = backend.create_instance(spec, p["wait_timeout"])
    result.update(instance=inst.to_dict(), attempts=[a.to_dict() for a in attempts])
    traffic = f" + ${inst.bandwidth_price_gb:g}/GB downloaded" if inst.bandwidth_price_gb is not None else ""
    result["msg"] = (f"created {inst.machine_type} ({inst.gpu}, {'spot' if inst.spot else 'on-demand'}) "
                     f"in {inst.zone}, ~${inst.hourly_price}/h{traffic} ({catalog.price_note(provider)})")
    return _summary(inst)


def _bring_up(module, backend, found, result, before) -> dict:
    """An instance that is not running (or whose key just changed): start or resume it. Returns `after`."""
    p = module.params
    result["changed"] = result["changed"] or found.state != PENDING
    if found.state == RUNNING:
        result["instance"] = found.to_dict()
        result["msg"] = f"{found.id} runs in {found.zone}; {result['key_msg']}"
        return before
    verb = "resume" if found.state == SUSPENDED else "start"
    if module.check_mode:
        result["instance"] = found.to_dict()
        result["msg"] = f"would {verb} {found.id} in {found.zone}" if result["changed"] else f"{found.id} is starting"
        after = dict(before, state=RUNNING)
    else:
        inst = backend.start_instance(found, p["wait_timeout"])
        result["instance"] = inst.to_dict()
        result["msg"] = f"{verb}d {inst.id} in {inst.zone}, ~${inst.hourly_price}/h" if verb == "resume" else \
            f"started {inst.id} in {inst.zone}, ~${inst.hourly_price}/h"
        after = _summary(inst)
    if result.get("key_msg"):
        result["msg"] += f"; {result['key_msg']}"
    return after


def _check_ports(p, found) -> None:
    """Pods: a pod's exposed ports are fixed when it is created; one that lacks a port asked for now (public access
    turned on later) cannot serve it. Only what the provider reports is compared (vast.ai lists a stopped
    instance's mappings not at all)."""
    if found is None or not found.ports:
        return
    missing = sorted({int(port) for port in p["ports"]} - {int(port) for port in found.ports})
    if missing:
        raise SdcloudError(
            f"deployment {p['name']!r}: pod {found.id} was created exposing {', '.join(sorted(found.ports, key=int))} "
            f"only, not {', '.join(map(str, missing))}, and a pod's ports are set when it is created. Run teardown "
            "(state=absent; the volume is deleted) and provision again, or keep the access it was created for "
            "(sdcloud_access)")


def _present(module, backend, found, result, before) -> dict:
    p = module.params
    if found is None:
        return _create(module, backend, result)
    _check_ports(p, found)
    if _key_changed(module, backend, found, result) or found.state in (STOPPED, STOPPING, PENDING, SUSPENDED):
        return _bring_up(module, backend, found, result, before)
    result["instance"] = found.to_dict()
    result["msg"] = f"{found.id} is {found.state} in {found.zone}"
    if p["gpu"] and found.gpu and found.gpu != p["gpu"]:
        module.warn(f"deployment {p['name']!r} runs {found.gpu} ({found.machine_type}), not {p['gpu']}: "
                    "to change the GPU, run state=absent then state=present (the disk is deleted)")
    return before


def _stopped(module, backend, found, result, before) -> dict:
    p = module.params
    provider, check = p["provider"], module.check_mode
    if found is None:
        result["msg"] = f"deployment {p['name']!r} has no instance: nothing to stop"
        return before
    if found.state == SUSPENDED:  # not stopped: say what it still costs, change nothing
        cost = _disk_cost(provider, found, p["disk_size_gb"])
        result.update(instance=found.to_dict(), disk_monthly_cost=cost, msg=(
            f"{found.id} is suspended, not stopped: its memory is kept in storage and billed besides the "
            f"{found.disk_size_gb or p['disk_size_gb']} GB disk (about ${cost:.2f}/month for the disk alone). "
            "state: present resumes it; to bill the disk only, resume it (state: present) and stop it "
            "(state: stopped); state: absent deletes it"))
        return before
    result["changed"] = found.state != STOPPED
    if check or not result["changed"]:
        inst, after = found, dict(before, state=STOPPED)
    else:
        inst = backend.stop_instance(found, p["wait_timeout"])
        after = _summary(inst)
    cost = _disk_cost(provider, inst, p["disk_size_gb"])
    result["instance"] = inst.to_dict()
    result["disk_monthly_cost"] = cost
    verb = "would stop" if check and result["changed"] else ("stopped" if result["changed"] else "is stopped:")
    result["msg"] = (f"{verb} {inst.id}; the {inst.disk_size_gb or p['disk_size_gb']} GB disk still costs "
                     f"about ${cost:.2f}/month until state=absent")
    return after


def _absent(module, backend, found, result) -> dict:
    p = module.params
    if found is not None:
        result["changed"] = True
        if not module.check_mode:
            backend.delete_instance(found, p["wait_timeout"])
    if module.check_mode:
        result["msg"] = f"would delete {found.id} and its disk" if found else "nothing to delete"
        return {"state": "absent"}
    extras = backend.delete_instance_extras(p["name"], p["wait_timeout"])
    result["changed"] = result["changed"] or bool(extras)
    result["deleted"] = ([{"kind": "instance", "id": found.id}] if found else []) + \
        [{"kind": r.kind, "id": r.id} for r in extras]
    names = ", ".join(f"{d['kind']} {d['id']}" for d in result["deleted"])
    result["msg"] = f"deleted {names}" if names else "nothing to delete"
    return {"state": "absent"}


def _host_keys(module, backend, result) -> None:
    """Read the running instance's SSH host keys through the API, for the playbook to pin."""
    p = module.params
    provider = p["provider"]
    inst = Instance(**result["instance"])
    result["host_keys"] = backend.host_keys(inst, p["host_keys_timeout"])
    result["host_key_alias"] = host_key_alias(provider, inst.id)
    if not result["host_keys"]:
        where = {"gcp": "in its guest attributes (an image without the guest agent?)",
                 "aws": "on its serial console (an image without cloud-init, the console not posted yet, "
                        "or no ec2:GetConsoleOutput permission?)"}.get(provider, f"({provider} publishes none)")
        module.warn(f"{inst.name} published no SSH host keys {where} within {p['host_keys_timeout']}s: "
                    "the first SSH connection trusts the key it is shown")


def ensure(module, backend) -> dict:
    """The module's logic; returns exit_json kwargs. Raises SdcloudError."""
    p = module.params
    state = p["state"]
    result = {"changed": False, "instance": None, "attempts": []}
    found = backend.find_instance(p["name"])
    before = _summary(found)
    if state in ("present", "running"):
        after = _present(module, backend, found, result, before)
    elif state == STOPPED:
        after = _stopped(module, backend, found, result, before)
    else:
        after = _absent(module, backend, found, result)
    if p["host_keys_timeout"] > 0 and not module.check_mode and state in ("present", "running") and result["instance"]:
        _host_keys(module, backend, result)
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    return result


def main():
    module = cloud_module(argument_spec(), mutually_exclusive=[("image", "image_family")])
    run(module, ensure, validate=_validate)


if __name__ == "__main__":
    main()
