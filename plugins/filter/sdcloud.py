"""Filters the playbooks use to validate input up front and to read the sdcloud catalog."""

from __future__ import annotations

import ipaddress
import os
import re

import ansible.module_utils
from ansible.errors import AnsibleFilterError

_MU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)

from ansible.module_utils.sdcloud import catalog, runpod, vastai  # noqa: E402
from ansible.module_utils.sdcloud.base import SdcloudError  # noqa: E402

_GCP_ZONE = re.compile(r"[a-z]+-[a-z]+\d+-[a-z]")
_AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d+")
_AWS_AZ = re.compile(r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d+)(?:[a-z]|-[a-z]+-\d+[a-z])")
_RUNPOD_DC = re.compile(r"[A-Z]{2}-[A-Z0-9]+-\d+")  # RunPod data center ids: US-KS-2, EU-RO-1, CA-MTL-1
_COUNTRY = re.compile(r"[A-Za-z]{2}")  # vast.ai: the host's country code (its geolocation's last part)
# The pod providers' backends: they own their API key variables, endpoints and how a pod stops itself
_POD_BACKENDS = {runpod.PROVIDER: runpod, vastai.PROVIDER: vastai}
_API_KEY_VARS = {name: backend.ENV_KEY for name, backend in _POD_BACKENDS.items()}


def sdcloud_invalid_cidrs(values):
    """The items of `values` that are not valid IPv4/IPv6 networks (host bits must be zero)."""
    if isinstance(values, str):
        values = [values]
    bad = []
    for v in values or []:
        try:
            ipaddress.ip_network(str(v), strict=True)
        except ValueError:
            bad.append(v)
    return bad


def sdcloud_world_cidrs(values):
    """The items of `values` that open to the whole internet (0.0.0.0/0, ::/0)."""
    out = []
    for v in values or []:
        try:
            if ipaddress.ip_network(str(v), strict=False).prefixlen == 0:
                out.append(v)
        except ValueError:
            pass
    return out


def sdcloud_ipv6_cidrs(values):
    """The items of `values` that are IPv6 networks (the cloud firewall rules sdcloud makes take IPv4 only)."""
    out = []
    for v in values or []:
        try:
            if ipaddress.ip_network(str(v), strict=False).version == 6:
                out.append(v)
        except ValueError:
            pass
    return out


def sdcloud_host_cidr(address):
    """'203.0.113.7' (or with whitespace/newline, as IP echo services answer) -> '203.0.113.7/32';
    IPv6 -> /128. Fails with a clear message when `address` is not an IP address."""
    text = str(address).strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise AnsibleFilterError(f"sdcloud_host_cidr: {text[:80]!r} is not an IP address") from exc
    return f"{ip}/{ip.max_prefixlen}"


def sdcloud_cidrs_containing(cidrs, address):
    """The items of `cidrs` (valid networks only) that contain `address`; [] when `address` is not an IP."""
    try:
        ip = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return []
    found = []
    for c in cidrs or []:
        try:
            if ip in ipaddress.ip_network(str(c), strict=False):
                found.append(c)
        except (ValueError, TypeError):
            continue
    return found


def sdcloud_tcp_rules(ports, sources):
    """Firewall rules {port, proto: tcp, sources} for `ports` (roles/firewall's firewall_open_ports items)."""
    return [{"port": int(p), "proto": "tcp", "sources": list(sources or [])} for p in ports or []]


def sdcloud_port_problems(ports, ssh_port=22, unprivileged=()):
    """What is wrong with a {setting: port} mapping, one message per problem naming the setting(s): not a
    whole number in 1-65535, the SSH port, below 1024 for a setting in `unprivileged` (the UIs run as
    their own users, who cannot bind those), or the same port as another setting. [] when all is well."""
    problems, seen = [], {}
    for name, value in (ports or {}).items():
        text = str(value).strip()
        port = int(text) if text.isdigit() else None
        if port is None or not 1 <= port <= 65535:
            problems.append(f"{name} is {value!r}: give a TCP port, a whole number from 1 to 65535")
            continue
        if port == int(ssh_port):
            problems.append(f"{name} is {port}, the SSH port: choose another port")
            continue
        if name in unprivileged and port < 1024:
            problems.append(f"{name} is {port}: the UI runs as its own user, which cannot listen below 1024; "
                            f"choose a port from 1024 to 65535")
            continue
        if port in seen:
            problems.append(f"{name} and {seen[port]} are both {port}: give each its own port")
            continue
        seen[port] = name
    return problems


def sdcloud_https_url(port, host, mapped=None):
    """The https:// URL of the proxy's `port`: https://<host>[:<port>] (no port for 443; an IPv6 address in brackets),
    no trailing slash. On a pod, `mapped` (the instance's ports, container port -> {ip, port, type, url}) decides:
    an http port is reached through the provider's HTTPS proxy, at its URL (RunPod); a tcp port at its public
    mapping, https://<ip>:<public port> (vast.ai)."""
    entry = (mapped or {}).get(str(int(port))) or {}
    if entry.get("type") == "http" and entry.get("url"):
        return str(entry["url"]).rstrip("/")
    if entry.get("port"):
        host, port = entry.get("ip") or host, entry["port"]
    host = str(host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}" if int(port) == 443 else f"https://{host}:{int(port)}"


def sdcloud_other_providers_message(others, deployment, provider):
    """The preflight's message for a deployment that also has machines on other providers than `provider`:
    `others` are those hosts' variables (inventory_hostname, sdcloud_instance.provider/state). Names each
    machine and, per provider, the fix (static hosts: their own deployment; clouds: delete or work on it)."""
    others = list(others or [])
    listed = ", ".join(f"{h['inventory_hostname']} ({h['sdcloud_instance']['provider']}, {h['sdcloud_instance']['state']})"
                       for h in others)
    lines = [f"deployment {deployment} also has {listed}, while sdcloud_provider is {provider}."]
    for p in dict.fromkeys(h["sdcloud_instance"]["provider"] for h in others):
        if p == "static":
            names = ", ".join(h["inventory_hostname"] for h in others if h["sdcloud_instance"]["provider"] == "static")
            fix = f"Give static host(s) {names} their own `deployment:` in static_hosts (inventory/sdcloud.yml)"
        else:
            fix = (f"Delete the {p} one (ansible-playbook playbooks/teardown.yml -e sdcloud_provider={p}) "
                   f"or work on it with -e sdcloud_provider={p}")
        lines.append(fix + ", or give this deployment another name (export SDCLOUD_NAME=...).")
    return " ".join(lines)


def sdcloud_gpu_names(provider=None):
    """Neutral GPU names in the catalog (only those `provider` rents, when given)."""
    return catalog.gpu_names(provider or None)


def sdcloud_gpu_offer(gpu, provider):
    """The catalog entry for `gpu` on `provider` (machine type, prices...), or {} when not offered."""
    try:
        return catalog.offering(provider, gpu).to_dict()
    except SdcloudError:
        return {}


def sdcloud_bad_zones(zones, provider):
    """The items of `zones` that are not a zone (GCP: us-central1-a), a region/availability zone (AWS: us-east-1,
    us-east-1b), a data center id (RunPod: US-KS-2) or a country code (vast.ai: US) of `provider`; `any` lets a pod
    provider place it anywhere."""
    def ok(z):
        if provider == "gcp":
            return bool(_GCP_ZONE.fullmatch(z))
        if provider in _POD_BACKENDS and z.lower() == "any":
            return True
        if provider == runpod.PROVIDER:
            return bool(_RUNPOD_DC.fullmatch(z))
        if provider == vastai.PROVIDER:
            return bool(_COUNTRY.fullmatch(z))
        return bool(_AWS_REGION.fullmatch(z) or _AWS_AZ.fullmatch(z))

    return [z for z in map(str, zones or []) if not ok(z)]


def sdcloud_api_key_var(provider):
    """The environment variable that holds `provider`'s API key (RunPod, vast.ai), or "" for any other."""
    return _API_KEY_VARS.get(provider, "")


def sdcloud_pod_self_stop(provider):
    """How a pod of `provider` stops itself through its provider's API (the autostop config's stop_request): the
    request (method, path with {id}, body), the pod environment's key and id variables, and the endpoint - this
    computer's override of it (SDCLOUD_RUNPOD_ENDPOINT / SDCLOUD_VAST_ENDPOINT), else the provider's API."""
    backend = _POD_BACKENDS.get(provider)
    if backend is None:
        raise AnsibleFilterError("sdcloud_pod_self_stop: %r is not a pod provider (%s)" % (provider, ", ".join(_POD_BACKENDS)))
    return dict(backend.SELF_STOP, endpoint=os.environ.get(backend.ENV_ENDPOINT) or backend.API_URL)


def sdcloud_aws_regions(zones):
    """AWS regions named by a list of regions and/or availability zones, in order, without duplicates."""
    out = []
    for z in map(str, zones or []):
        m = _AWS_AZ.fullmatch(z)
        region = z if _AWS_REGION.fullmatch(z) else (m.group("region") if m else None)
        if region and region not in out:
            out.append(region)
    return out


GITHUB = "https://github.com/"


def sdcloud_git_mirror(url, mirror=""):
    """`url` fetched from `mirror` (a URL that stands for https://github.com/) when it lies below
    https://github.com/; unchanged otherwise, or when `mirror` is empty. The roles hand git the rewritten
    URL themselves (git's own url.<mirror>.insteadOf, which the base role also sets, would make a checkout
    look changed on every run: the remote URL git reports is the rewritten one)."""
    url = str(url)
    if mirror and url.startswith(GITHUB):
        return str(mirror) + url[len(GITHUB):]
    return url


def sdcloud_git_mirror_items(items, mirror="", key="git_url"):
    """sdcloud_git_mirror applied to the `key` of each dict in `items` (custom nodes, repositories)."""
    return [dict(item, **{key: sdcloud_git_mirror(item[key], mirror)}) for item in items or []]


_REQ_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<extras>\[[^]]*\])?\s*==\s*(?P<version>[^\s;\\]+)(?P<rest>.*)$")


def _pep503(name):
    return re.sub(r"[-_.]+", "-", str(name)).lower()


def sdcloud_pip_lock(text, overrides=None):
    """A lock file (`name==version ; markers` lines, as uv pip compile writes them) with the versions in
    `overrides` ({name: version}) put in place of the lock's; names the lock lacks are appended. Names
    compare as pip does (case, - _ . alike). Returns the text, ending in a newline."""
    overrides = dict(overrides or {})
    for name, version in overrides.items():
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", str(name)) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9.+!*_-]*$", str(version)):
            raise AnsibleFilterError(
                f"comfyui_pip_overrides: {name!r}: {version!r} is not a package name and a version like torch: \"2.8.0\"")
    wanted = {_pep503(n): str(v) for n, v in overrides.items()}
    seen = set()
    out = []
    for line in str(text).splitlines():
        m = _REQ_LINE.match(line)
        key = _pep503(m.group("name")) if m else None
        if key in wanted:
            seen.add(key)
            out.append("%s%s==%s%s" % (m.group("name"), m.group("extras") or "", wanted[key], m.group("rest")))
        else:
            out.append(line)
    added = [f"{n}=={v}" for n, v in overrides.items() if _pep503(n) not in seen]
    if added:
        out += ["# added by comfyui_pip_overrides"] + added
    return "\n".join(out) + "\n"


class FilterModule:
    def filters(self):
        return {
            "sdcloud_invalid_cidrs": sdcloud_invalid_cidrs,
            "sdcloud_world_cidrs": sdcloud_world_cidrs,
            "sdcloud_host_cidr": sdcloud_host_cidr,
            "sdcloud_ipv6_cidrs": sdcloud_ipv6_cidrs,
            "sdcloud_cidrs_containing": sdcloud_cidrs_containing,
            "sdcloud_tcp_rules": sdcloud_tcp_rules,
            "sdcloud_port_problems": sdcloud_port_problems,
            "sdcloud_https_url": sdcloud_https_url,
            "sdcloud_other_providers_message": sdcloud_other_providers_message,
            "sdcloud_gpu_names": sdcloud_gpu_names,
            "sdcloud_gpu_offer": sdcloud_gpu_offer,
            "sdcloud_bad_zones": sdcloud_bad_zones,
            "sdcloud_aws_regions": sdcloud_aws_regions,
            "sdcloud_api_key_var": sdcloud_api_key_var,
            "sdcloud_pod_self_stop": sdcloud_pod_self_stop,
            "sdcloud_pip_lock": sdcloud_pip_lock,
            "sdcloud_git_mirror": sdcloud_git_mirror,
            "sdcloud_git_mirror_items": sdcloud_git_mirror_items,
        }
