"""sdcloud dynamic inventory: the machines sdcloud manages, on every provider."""

from __future__ import annotations

DOCUMENTATION = r"""
name: sdcloud
short_description: The machines sdcloud manages (local, static, GCP, AWS, RunPod, vast.ai)
description:
  - Lists the machines sdcloud created or was told about, across providers, found by their labels/tags
    (C(sdcloud-managed=true), C(sdcloud-deployment=<name>)) - C(local) machines from this computer's state
    directory, C(static) hosts from this file, GCP instances (aggregatedList), AWS instances (tags), and RunPod
    and vast.ai pods (their name / label C(sdcloud:<deployment>); pods have no labels), with API keys from
    E(RUNPOD_API_KEY) / E(VAST_API_KEY).
  - Hosts are named after the machine (the deployment name); where several providers or zones list the same
    name, each such host is named C(<name>.<provider>) (then C(.<zone>)), with a warning.
  - Groups C(sdcloud_machines) (all), C(sdcloud_target) (the machines of the deployment named by I(deployment)),
    C(provider_<provider>), C(state_<state>) (stopped machines land in C(state_stopped) instead of breaking
    the listing), C(deployment_<name>), C(gpu_<gpu>).
  - Sets C(sdcloud_name) (the deployment) on the C(all) group, so playbooks and C(localhost) read it from here,
    and C(sdcloud_inventory_deployment) (the same, which C(-e sdcloud_name) cannot change, so the preflight refuses
    a deployment the inventory does not group), C(sdcloud_inventory_providers), C(sdcloud_inventory_gcp_project),
    C(sdcloud_inventory_aws_regions) (what this inventory lists), so the preflight can check that it lists the provider the playbooks use,
    and C(sdcloud_known_hosts_file) (see I(known_hosts_file)).
  - Cloud hosts (GCP, AWS, RunPod, vast.ai) get C(ansible_ssh_private_key_file) set to C({{ sdcloud_ssh_key_path }})
    (the operator key from group_vars, templated when used) and host key checking per instance - see
    I(known_hosts_file). Pods also get C(ansible_port), the public port the provider maps to their SSH port
    (it changes on every start), and C(ansible_user) C(root).
  - A provider that cannot be listed (no credentials, API down, SDK missing) is a warning; the others are
    still listed.
  - Uses a YAML configuration file whose name ends with C(sdcloud.yml) or C(sdcloud.yaml).
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: Token that ensures this is a source file for this plugin.
    required: true
    choices: [sdcloud]
  deployment:
    description: The deployment the playbooks work on (group C(sdcloud_target)).
    type: str
    default: sdcloud
    env:
      - name: SDCLOUD_NAME
  providers:
    description: Which providers to list.
    type: list
    elements: str
    default: [local, static]
    env:
      - name: SDCLOUD_INVENTORY_PROVIDERS
  local_net:
    description: Which local bridge (0-9) to list machines of.
    type: int
    default: 0
    env:
      - name: SDCLOUD_NET
  local_state_dir:
    description: State directory of local machines.
    type: path
    default: /var/lib/sdcloud
    env:
      - name: SDCLOUD_STATE_DIR
  static_hosts:
    description:
      - Hosts you already have (a home GPU box, a RunPod or vast.ai pod), reached over SSH.
      - Each item has C(name), C(address), and optionally C(user) (default C(root)), C(port) (22),
        C(ssh_private_key_file), C(gpu), C(deployment) (default I(deployment)).
    type: list
    elements: dict
    default: []
  gcp_project:
    description: GCP project to list (needed for C(gcp)).
    type: str
    env:
      - name: GOOGLE_CLOUD_PROJECT
      - name: CLOUDSDK_CORE_PROJECT
  gcp_endpoint:
    description: Compute Engine API endpoint (a private endpoint, or a test stand-in).
    type: str
    env:
      - name: SDCLOUD_GCP_ENDPOINT
  aws_regions:
    description: AWS regions to list (needed for C(aws)).
    type: list
    elements: str
    default: []
    env:
      - name: SDCLOUD_AWS_REGIONS
  aws_endpoint:
    description: EC2 API endpoint (a private endpoint, or a test stand-in).
    type: str
    env:
      - name: AWS_ENDPOINT_URL
  runpod_endpoint:
    description: RunPod REST API v2 base URL (default C(https://api.runpod.io); a test stand-in).
    type: str
    env:
      - name: SDCLOUD_RUNPOD_ENDPOINT
  vast_endpoint:
    description: vast.ai REST API base URL (default C(https://console.vast.ai); a test stand-in).
    type: str
    env:
      - name: SDCLOUD_VAST_ENDPOINT
  known_hosts_file:
    description:
      - Known-hosts file for cloud machines and static hosts. Cloud public IPs change on every start and are
        reused by other customers' machines (and pods come back on reused addresses), so each machine's host
        key is recorded under a name of its own (C(HostKeyAlias=sdcloud-<provider>-<instance id>), for static
        hosts C(sdcloud-static-<name>)) instead of its IP, trusted on first use
        (C(StrictHostKeyChecking=accept-new)); a later key change for the same machine is refused.
      - teardown.yml removes the entries of the machines it deletes.
    type: path
    default: ~/.ssh/sdcloud_known_hosts
    env:
      - name: SDCLOUD_KNOWN_HOSTS
"""

EXAMPLES = r"""
# inventory/sdcloud.yml
plugin: sdcloud
deployment: sdcloud
providers: [local, static, gcp, aws, runpod, vastai]
gcp_project: my-project
aws_regions: [us-east-1, us-west-2]
static_hosts:
  - name: homebox
    address: 192.0.2.10
    user: ubuntu
    gpu: nvidia-rtx-4090
keyed_groups:
  - key: sdcloud_instance.zone
    prefix: zone
"""

import collections
import os
import re

import ansible.module_utils
from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.template import trust_as_template
from ansible.utils.display import Display

_MU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)

from ansible.module_utils.sdcloud.base import (  # noqa: E402
    LABEL_DEPLOYMENT,
    Instance,
    SdcloudError,
    backend_from_params,
    host_key_alias,
    local_instance,
)

display = Display()
NO_HOSTKEY_CHECK = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
KNOWN_PROVIDERS = ("local", "static", "gcp", "aws", "runpod", "vastai")
CLOUDS = ("gcp", "aws", "runpod", "vastai")
# Cloud hosts: the operator key from group_vars (templated when the connection is made).
CLOUD_KEY = "{{ sdcloud_ssh_key_path }}"


def cloud_ssh_args(provider, instance_id, known_hosts_file):
    return ("-o HostKeyAlias=%s -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=%s"
            % (host_key_alias(provider, instance_id), known_hosts_file))


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", str(name))


def host_names(instances):
    """Inventory names for the listed instances, in order: the instance name (the deployment name for
    machines sdcloud made), and where several providers list the same name - a deployment left on GCP
    while the next one went to AWS - `name.provider`, then `name.provider.zone`, then `.id`. Deployment
    names cannot contain a dot, so these never clash with a machine's real name; one host per machine,
    never two machines merged into one host."""
    parts = [(i["name"], i["provider"], i["zone"], i["id"]) for i in instances]
    counts = [collections.Counter(".".join(p[:depth]) for p in parts) for depth in (1, 2, 3)]
    out = []
    for p in parts:
        depth = next((d for d in (1, 2, 3) if counts[d - 1][".".join(p[:d])] == 1), 4)
        out.append(".".join(p[:depth]))
    return out


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "sdcloud"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("sdcloud.yml", "sdcloud.yaml"))

    # -- listing, one function per provider; each returns (Instance, hostvars) pairs ----------
    def _local(self):
        from ansible.module_utils.sdcloud import nspawn

        net = nspawn.Network(net=self.get_option("local_net"), state_root=self.get_option("local_state_dir"))
        out = []
        for m in net.machines():
            info = m.info()
            inst = local_instance(m.name, info)
            hv = {"ansible_ssh_common_args": NO_HOSTKEY_CHECK,
                  "sdcloud_operator_cidrs": [f"{net.gateway}/32"],
                  "sdcloud_local_proxy": info.get("proxy")}
            if info.get("ssh_private_key_file"):
                hv["ansible_ssh_private_key_file"] = info["ssh_private_key_file"]
            out.append((inst, hv))
        return out

    def _static(self):
        out = []
        for i, h in enumerate(self.get_option("static_hosts") or []):
            if not isinstance(h, dict) or not h.get("name") or not h.get("address"):
                raise AnsibleParserError("static_hosts[%d] needs at least name and address, got %r" % (i, h))
            deployment = h.get("deployment") or self.get_option("deployment")
            inst = Instance(name=h["name"], provider="static", id=h["name"], zone="static", region="static",
                            state="running", gpu=h.get("gpu"), public_ip=h["address"], ssh_user=h.get("user", "root"),
                            labels={LABEL_DEPLOYMENT: deployment}, hourly_price=h.get("hourly_price"))
            hv = {"ansible_port": int(h.get("port", 22))}
            # like cloud machines: the host key is pinned under the host's name, not its address
            # (pods and rented boxes come back on reused addresses and ports)
            hv.update(self._host_key_vars(inst))
            if h.get("ssh_private_key_file"):
                hv["ansible_ssh_private_key_file"] = h["ssh_private_key_file"]
            out.append((inst, hv))
        return out

    # Clouds list through the backend the modules use (Backend.list_instances), built from the same
    # parameters the modules take; GCP lists every zone of the project, AWS the regions given.
    def _gcp(self):
        project = self.get_option("gcp_project")
        if not project:
            raise SdcloudError("provider gcp is listed but no project is set: set gcp_project in inventory/sdcloud.yml "
                               "or GOOGLE_CLOUD_PROJECT")
        return self._cloud({"provider": "gcp", "project": project, "endpoint": self.get_option("gcp_endpoint")})

    def _aws(self):
        regions = self._aws_regions()
        if not regions:
            raise SdcloudError("provider aws is listed but no region is set: set aws_regions in inventory/sdcloud.yml "
                               "or SDCLOUD_AWS_REGIONS")
        return self._cloud({"provider": "aws", "zones": regions, "endpoint": self.get_option("aws_endpoint")})

    # Pods list the whole account (no zones); the API key comes from RUNPOD_API_KEY / VAST_API_KEY.
    def _runpod(self):
        return self._cloud({"provider": "runpod", "endpoint": self.get_option("runpod_endpoint")})

    def _vastai(self):
        return self._cloud({"provider": "vastai", "endpoint": self.get_option("vast_endpoint")})

    def _cloud(self, params):
        return [(i, self._cloud_hostvars(i)) for i in backend_from_params(params).list_instances()]

    def _cloud_hostvars(self, inst):
        hv = self._host_key_vars(inst)
        if inst.ssh_port:  # pods: SSH on the port the provider mapped to 22
            hv["ansible_port"] = inst.ssh_port
        return hv

    def _host_key_vars(self, inst):
        known_hosts = os.path.expanduser(self.get_option("known_hosts_file"))
        return {"ansible_ssh_common_args": cloud_ssh_args(inst.provider, inst.id, known_hosts),
                "sdcloud_host_key_alias": host_key_alias(inst.provider, inst.id)}

    def _providers(self):
        providers = self.get_option("providers")
        if isinstance(providers, str):
            providers = [p.strip() for p in providers.split(",") if p.strip()]
        return list(providers)

    def _aws_regions(self):
        regions = self.get_option("aws_regions")
        if isinstance(regions, str):
            regions = [r.strip() for r in regions.split(",") if r.strip()]
        return list(regions or [])

    def _fetch(self):
        providers = self._providers()
        unknown = sorted(set(providers) - set(KNOWN_PROVIDERS))
        if unknown:
            raise AnsibleParserError(f"unknown provider(s) {unknown} in providers: use {list(KNOWN_PROVIDERS)}")
        hosts = []
        for p in providers:
            try:
                for inst, hv in getattr(self, "_" + p)():
                    hosts.append({"instance": inst.to_dict(), "hostvars": hv})
            except SdcloudError as e:
                # one unreachable cloud must not hide the others' machines
                display.warning(f"sdcloud inventory: cannot list {p} machines: {e.msg}")
            except ImportError as e:
                display.warning(f"sdcloud inventory: cannot list {p} machines: its SDK does not import ({e}): "
                                "run `make setup` (pip install -r requirements.txt)")
            except Exception as e:  # noqa: BLE001 - an SDK error we did not map must not hide the other providers
                if p not in CLOUDS:
                    raise
                display.warning(f"sdcloud inventory: cannot list {p} machines: {type(e).__name__}: {e}")
        return hosts

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        hosts = None
        if use_cache:
            try:
                hosts = self._cache[cache_key]
            except KeyError:
                hosts = None
        if hosts is None:
            hosts = self._fetch()
            if self.get_option("cache"):
                self._cache[cache_key] = hosts
        self._populate(hosts)

    def _populate(self, hosts):
        deployment = self.get_option("deployment")
        inv = self.inventory
        inv.add_group("sdcloud_machines")
        inv.add_group("sdcloud_target")
        inv.set_variable("all", "sdcloud_name", deployment)
        inv.set_variable("all", "sdcloud_inventory_deployment", deployment)  # what -e sdcloud_name cannot change
        inv.set_variable("all", "sdcloud_inventory_providers", self._providers())
        inv.set_variable("all", "sdcloud_inventory_gcp_project", self.get_option("gcp_project") or "")
        inv.set_variable("all", "sdcloud_inventory_aws_regions", self._aws_regions())
        inv.set_variable("all", "sdcloud_known_hosts_file", os.path.expanduser(self.get_option("known_hosts_file")))
        strict = self.get_option("strict")
        names = host_names([h["instance"] for h in hosts])
        renamed = [n for n, h in zip(names, hosts, strict=True) if n != h["instance"]["name"]]
        if renamed:
            display.warning("sdcloud inventory: machines of the same name on several providers or zones, "
                            "listed as %s" % ", ".join(renamed))
        for name, h in zip(names, hosts, strict=True):
            inst = h["instance"]
            inv.add_host(name, group="sdcloud_machines")
            dep = inst["labels"].get(LABEL_DEPLOYMENT) or ""
            groups = ["provider_" + inst["provider"], "state_" + inst["state"]]
            if dep:
                groups.append("deployment_" + _safe(dep))
            if inst.get("gpu"):
                groups.append("gpu_" + _safe(inst["gpu"]))
            if dep == deployment and inst["state"] == "running":
                groups.append("sdcloud_target")
            for g in groups:
                inv.add_group(g)
                inv.add_host(name, group=g)
            hv = {"ansible_host": inst.get("public_ip") or inst.get("private_ip"),
                  "ansible_user": inst.get("ssh_user") or "root",
                  "sdcloud_provider": inst["provider"],
                  "sdcloud_state": inst["state"],
                  "sdcloud_instance": inst}
            if inst["provider"] in CLOUDS:
                # a template, trusted: the key path comes from group_vars when the connection is made
                hv["ansible_ssh_private_key_file"] = trust_as_template(CLOUD_KEY)
            hv.update(h["hostvars"])
            for k, v in hv.items():
                if v is not None:
                    inv.set_variable(name, k, v)
            all_vars = inv.get_host(name).get_vars()
            self._set_composite_vars(self.get_option("compose"), all_vars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), all_vars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), all_vars, name, strict=strict)
