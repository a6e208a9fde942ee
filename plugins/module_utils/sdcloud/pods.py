"""What the GPU-pod marketplaces (RunPod, vast.ai) share: a JSON-over-HTTPS client and a Backend base.

Pods are containers rented through a REST API, not VMs in a cloud project, so runpod.py and vastai.py
differ from gcp.py / aws.py in the same ways, written once here:
- One HTTP client (`JsonApi`, stdlib urllib: no SDK to install - RunPod's `runpod` SDK still calls the
  GraphQL API that retires in 2027, vast's `vastai` CLI wraps the same REST calls), Bearer auth, rate
  limits (HTTP 429) retried with jittered backoff - `Retry-After` when the API sends it - then an error that
  says to wait; reads also retry 5xx. Every HTTP error becomes `ApiError` (status, the body's message).
- No labels: neither API stores key=value labels on a pod, so the deployment is written into the one
  free-text field each has (RunPod: the pod `name`; vast: the instance `label`) as `sdcloud:<deployment>`
  (`pod_name`), and read back by `deployment_of`. Deployment names are [a-z0-9-] (the preflight checks),
  so the prefix cannot be confused with a user's own pod named otherwise; pods without it are not ours.
- No firewall resource: the provider maps only the ports asked for at creation; `has_firewall` is False
  and cloud_firewall says so instead of calling the firewall methods.
- No separate disks, addresses or key pairs: the pod is the only resource; its volume is deleted with it.
  list_resources lists the pods, delete_resources terminates them and waits until they are gone.
- No published host keys (host_keys() is the base's []): the first connection trusts the key it is shown,
  under a HostKeyAlias per pod id (the inventory's known_hosts scheme).
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request

from ansible.module_utils.sdcloud.base import (
    KIND_INSTANCE,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    RUNNING,
    STOPPED,
    STOPPING,
    TERMINATED,
    Backend,
    Deadline,
    SdcloudError,
)

NAME_PREFIX = "sdcloud:"
ANY_ZONE = "any"  # the zone that lets the provider's scheduler choose (no location constraint)

# Retries (seconds); tests lower them: keep them module attributes.
RETRY_TRIES = 5
RETRY_BASE = 1.0
RETRY_CAP = 30.0
TIMEOUT = 60


def pod_name(deployment: str) -> str:
    """The pod name (RunPod) / instance label (vast) that records the deployment (no labels on pods)."""
    return NAME_PREFIX + deployment


def deployment_of(name: str | None) -> str | None:
    """The deployment a pod name / label records, or None when the pod is not sdcloud's."""
    if name and name.startswith(NAME_PREFIX) and len(name) > len(NAME_PREFIX):
        return name[len(NAME_PREFIX):]
    return None


def pod_labels(deployment: str) -> dict:
    """The labels an Instance of a pod reports: what its name encodes."""
    return {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: deployment}


class ApiError(Exception):
    """An HTTP error answer: `status`, `message` (the API's own words), `body` (parsed JSON or text)."""

    def __init__(self, status: int, message: str, body=None, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.body, self.retry_after = status, message, body, retry_after


def _message(body, raw: str) -> str:
    """The human part of an error body: RunPod problem+json `detail` (+ `errors`), vast `msg`/`error`/`detail`."""
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("detail", "msg", "error") if body.get(k)] or \
            [str(body[k]) for k in ("title",) if body.get(k)]
        if isinstance(body.get("errors"), list) and body["errors"]:
            parts.append("; ".join(str(e) for e in body["errors"]))
        if parts:
            return " - ".join(dict.fromkeys(parts))
    return (raw or "").strip()[:300] or "no message"


class JsonApi:
    """A JSON REST API with Bearer auth. `call()` returns the parsed body (None for an empty one)."""

    def __init__(self, base_url: str, api_key: str, provider: str, key_setting: str):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.provider = provider
        self.key_setting = key_setting  # how the user gives the key, for the 401 message

    def _once(self, method: str, path: str, body=None, query: dict | None = None):
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.api_key}")
        req.add_header("Accept", "application/json")
        req.add_header("User-Agent", "sdcloud")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310 - https, or a test stand-in
                raw = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode("utf-8", "replace")
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            try:
                retry_after = float(retry_after) if retry_after is not None else None
            except ValueError:
                retry_after = None
            raise ApiError(exc.code, _message(parsed, raw), parsed, retry_after) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SdcloudError(
                f"cannot reach the {self.provider} API at {self.base_url} ({reason}): check the network, a proxy, "
                "or the endpoint override (`endpoint`)", code="EndpointConnection") from exc
        return json.loads(raw) if raw.strip() else None

    def call(self, method: str, path: str, body=None, query: dict | None = None, *, doing: str,
             write: bool = False, sleep=time.sleep):
        """One API call while `doing`: 429 retried (every call: a throttled request did nothing), 5xx
        retried for reads only (a write may have happened). ApiError for any other error status."""
        for n in range(RETRY_TRIES):
            try:
                return self._once(method, path, body, query)
            except ApiError as exc:
                retryable = exc.status == 429 or (exc.status >= 500 and not write)
                if exc.status == 401:
                    raise SdcloudError(
                        f"{self.provider} refused the API key while {doing} ({exc.message}): set {self.key_setting} "
                        "to a valid key (it is never printed)", code="Unauthorized", status=401) from None
                if not retryable:
                    raise
                if n == RETRY_TRIES - 1:
                    if exc.status == 429:
                        raise SdcloudError(
                            f"{self.provider} rate-limited the API while {doing}, {RETRY_TRIES} times in a row "
                            f"({exc.message}): wait a minute and re-run, or run fewer plays at once",
                            code="RateLimited", status=429) from None
                    raise
                wait = random.uniform(0, min(RETRY_CAP, RETRY_BASE * (2**n)))
                if exc.retry_after is not None:
                    wait = min(RETRY_CAP, max(wait, exc.retry_after))
                sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover


def api_key(params: dict, env_var: str) -> str:
    """The API key: the module's `api_key`, else the provider's usual environment variable."""
    key = params.get("api_key") or os.environ.get(env_var)
    if not key:
        raise SdcloudError(f"no {params.get('provider')} API key: export {env_var} (or pass `api_key`; it is never "
                           "printed)", code="NoCredentials")
    return key


class PodBackend(Backend):
    """Backend pieces every pod marketplace shares (see the module docstring). A subclass sets `provider`,
    `spot_supported`, `default_image`, `api` (a JsonApi), and writes the placement hooks, read_instance,
    list_instances, _error, _request_state and _delete_path."""

    has_firewall = False
    spot_supported = True
    # The sentence cloud_firewall returns for a pod provider, and the summary may show.
    no_firewall_reason = ("{provider} pods have no cloud firewall: only the ports sdcloud asked for at creation are "
                          "mapped (SSH and the UI ports), reachable from anywhere; the UI's token and SSH keys are "
                          "the protection")

    def _call(self, method, path, body=None, query=None, *, doing, write=False):
        return self.api.call(method, path, body, query, doing=doing, write=write)

    # Hooks of a pod provider besides the placement ones: its error mapping, the state change call, the
    # delete path.
    def _error(self, exc: ApiError, doing: str) -> SdcloudError:
        raise NotImplementedError

    def _request_state(self, instance, state: str) -> None:
        """Ask the provider to move `instance` to RUNNING or STOPPED (one call, no wait)."""
        raise NotImplementedError

    def _delete_path(self, instance) -> str:
        raise NotImplementedError

    def start_instance(self, instance, wait_timeout: int):
        deadline = Deadline(wait_timeout)
        current = self.read_instance(instance) or instance
        if current.state in (STOPPED, STOPPING):
            self._request_state(current, RUNNING)
        return self.wait_for_state(current, RUNNING, deadline, need_ip=True)

    def stop_instance(self, instance, wait_timeout: int):
        deadline = Deadline(wait_timeout)
        current = self.read_instance(instance) or instance
        if current.state not in (STOPPED, STOPPING):
            self._request_state(current, STOPPED)
        return self.wait_for_state(current, STOPPED, deadline)

    def _terminate(self, instance) -> None:
        try:
            self._call("DELETE", self._delete_path(instance), write=True, doing=f"deleting {instance.id}")
        except ApiError as exc:
            if exc.status != 404:  # gone already
                raise self._error(exc, f"deleting {self.provider} pod {instance.id}") from exc

    def find_instance(self, name: str):
        found = self.list_instances(name)
        if len(found) > 1:
            raise SdcloudError(
                f"deployment {name!r} has {len(found)} {self.provider} pods ({', '.join(i.id for i in found)}): "
                f"sdcloud manages one; terminate the extra ones in the {self.provider} console, or run "
                "cloud_resources state=absent", code="Ambiguous")
        return found[0] if found else None

    def zone_region(self, zone: str) -> str:
        return zone  # no regional quotas on pod marketplaces: a zone is its own region

    def image_for(self, spec, zone: str) -> tuple:
        image = spec.image or self.default_image
        return image, image

    def delete_instance_extras(self, name: str, wait_timeout: int) -> list:
        return []  # the pod is the only resource; its volume goes with it

    def delete_instance(self, instance, wait_timeout: int) -> None:
        deadline = Deadline(wait_timeout)
        if self.read_instance(instance) is None:
            return
        self._terminate(instance)
        self.wait_for_state(instance, TERMINATED, deadline, gone_ok=True)

    # --- firewall: none (has_firewall False; cloud_firewall does not call these) ----------------------
    def get_firewall(self, name: str):
        return None

    def _no_firewall(self, *_args, **_kwargs):
        raise SdcloudError(self.no_firewall_reason.format(provider=self.provider), code="NoFirewall")

    create_firewall = update_firewall = delete_firewall = _no_firewall

    # --- sweep -----------------------------------------------------------------------------------
    def list_resources(self, deployment: str | None = None) -> list:
        from ansible.module_utils.sdcloud.base import Resource  # noqa: PLC0415 - keep the import list short

        return [Resource(kind=KIND_INSTANCE, provider=self.provider, id=i.id, name=i.name, location=i.zone,
                         labels=i.labels, state=i.state) for i in self.list_instances(deployment)]

    def delete_resources(self, resources: list, wait_timeout: int) -> None:
        deadline = Deadline(wait_timeout)
        for res in resources:
            if res.kind != KIND_INSTANCE:
                continue
            inst = self.read_instance(self.instance_stub(res.id, res.name, res.location))
            if inst is not None:
                self._terminate(inst)
                self.wait_for_state(inst, TERMINATED, deadline, gone_ok=True)

    def instance_stub(self, pod_id: str, name: str | None, zone: str | None):
        from ansible.module_utils.sdcloud.base import Instance  # noqa: PLC0415

        return Instance(name=name or pod_id, provider=self.provider, id=pod_id, zone=zone or ANY_ZONE,
                        region=zone or ANY_ZONE, state=RUNNING)
