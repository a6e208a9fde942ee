"""The one place where cloud SDK clients are built.

Every backend builds its clients here, so an endpoint override (a stand-in server in tests, a
private endpoint in production) reaches every call, including operation polling.

- aws_client(service, region, endpoint_url=None, profile=None) -> boto3 client
- gcp_clients(project, endpoint=None, credentials_file=None) -> GcpClients (lazy attributes:
  .instances, .zone_operations, .firewalls, ... see GcpClients.CLASSES; and .get_json(path, params),
  a REST read that needs neither google-cloud-compute nor google.api_core loaded)
- lazy_module(name): a module imported on first attribute access

SDK imports are guarded: the modules report a missing SDK with missing_required_lib via
HAS_BOTO3 / HAS_GCP and BOTO3_IMPORT_ERROR / GCP_IMPORT_ERROR.
"""

from __future__ import annotations

import importlib
import importlib.util
import os

from ansible.module_utils.sdcloud.base import SdcloudError

try:
    import boto3
    import botocore.config
    import botocore.exceptions

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only without boto3
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = exc

# google-cloud-compute takes ~2-3 s to import (google.api_core alone ~1.5 s: it imports grpc): check
# that it is there now, import it on first use, so AWS-only runs never pay for it, and listing GCP
# instances (the inventory) never does either: instance reads go through GcpClients.get_json.
try:
    GCP_IMPORT_ERROR = None if importlib.util.find_spec("google.cloud.compute_v1") else ImportError(
        "No module named 'google.cloud.compute_v1'")
except (ImportError, ValueError) as exc:  # pragma: no cover - exercised only without google-cloud-compute
    GCP_IMPORT_ERROR = exc
HAS_GCP = GCP_IMPORT_ERROR is None




class lazy_module:  # noqa: N801 - stands in for a module name
    """A module imported on first attribute access (`compute_v1 = lazy_module("google.cloud.compute_v1")`):
    code that never touches it never pays its import time. An `except lazy.Error:` clause touches it only
    when an exception reaches that clause."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


# Environment overrides, documented in the modules.
ENV_AWS_ENDPOINT = "AWS_ENDPOINT_URL"  # also honoured by boto3 itself
ENV_GCP_ENDPOINT = "SDCLOUD_GCP_ENDPOINT"

# botocore's "standard" retry mode retries throttling (RequestLimitExceeded, Throttling ...) and
# transient errors with jittered exponential backoff; capacity errors are NOT retried there (the
# backends walk zones instead).
AWS_MAX_ATTEMPTS = 5
AWS_CONNECT_TIMEOUT = 10
AWS_READ_TIMEOUT = 60


def aws_config(max_attempts: int = AWS_MAX_ATTEMPTS):
    return botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},  # total, first call included
        connect_timeout=AWS_CONNECT_TIMEOUT,
        read_timeout=AWS_READ_TIMEOUT,
        user_agent_extra="sdcloud",
    )


_AWS_SESSIONS: dict = {}


def aws_session(profile: str | None = None):
    """One boto3 Session per profile (sessions are not free to build)."""
    if not HAS_BOTO3:
        raise SdcloudError("boto3 is required for provider aws: pip install -r requirements.txt")
    key = profile or ""
    if key not in _AWS_SESSIONS:
        try:
            _AWS_SESSIONS[key] = boto3.session.Session(profile_name=profile) if profile else boto3.session.Session()
        except botocore.exceptions.ProfileNotFound as exc:
            raise SdcloudError(
                f"AWS profile {profile!r} not found: add it with `aws configure --profile {profile}` "
                "or leave `profile` unset to use the default credential chain"
            ) from exc
    return _AWS_SESSIONS[key]


def aws_client(service: str, region: str, endpoint_url: str | None = None, profile: str | None = None,
               max_attempts: int = AWS_MAX_ATTEMPTS):
    """A boto3 client for `service` in `region`.

    endpoint_url: explicit override; otherwise AWS_ENDPOINT_URL from the environment (boto3 reads it
    too, but reading it here makes the override visible in errors and tests)."""
    if not region:
        raise SdcloudError(f"no AWS region given for {service}: set `zones` to a region or zone, e.g. us-east-1")
    endpoint_url = endpoint_url or os.environ.get(ENV_AWS_ENDPOINT) or None
    session = aws_session(profile)
    return session.client(service, region_name=region, endpoint_url=endpoint_url, config=aws_config(max_attempts))


class GcpClients:
    """google-cloud-compute REST clients sharing one endpoint, credentials and project.

    Attributes are built on first use: gc.instances, gc.zone_operations, gc.firewalls, ...
    Every client's extended-operation poller is replaced by operations clients built with the same
    options: without that, `operation.result()` polls compute.googleapis.com even when an endpoint
    override is set (the ExtendedOperation poller ignores client_options: a private endpoint or a
    stand-in would be left for the real host).
    get_json(path, params) reads without any of them (see there)."""

    CLASSES = {
        "instances": "InstancesClient",
        "zones": "ZonesClient",
        "regions": "RegionsClient",
        "machine_types": "MachineTypesClient",
        "accelerator_types": "AcceleratorTypesClient",
        "images": "ImagesClient",
        "disks": "DisksClient",
        "addresses": "AddressesClient",
        "global_addresses": "GlobalAddressesClient",
        "firewalls": "FirewallsClient",
        "networks": "NetworksClient",
        "projects": "ProjectsClient",
        "zone_operations": "ZoneOperationsClient",
        "region_operations": "RegionOperationsClient",
        "global_operations": "GlobalOperationsClient",
    }
    OPERATIONS = ("zone_operations", "region_operations", "global_operations")

    API_ROOT = "https://compute.googleapis.com"  # the REST host google-cloud-compute uses by default
    SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
    READ_TIMEOUT = 60

    def __init__(self, project: str, endpoint: str | None = None, credentials_file: str | None = None):
        if not HAS_GCP:
            raise SdcloudError("google-cloud-compute is required for provider gcp: pip install -r requirements.txt")
        if not project:
            raise SdcloudError(
                "no GCP project: set `project`, or GOOGLE_CLOUD_PROJECT / CLOUDSDK_CORE_PROJECT in the environment"
            )
        self.project = project
        self.endpoint = endpoint or os.environ.get(ENV_GCP_ENDPOINT) or None
        self.credentials = _gcp_credentials(credentials_file, self.endpoint)
        self._clients: dict = {}
        self._session = None

    def get_json(self, path: str, params: dict | None = None) -> dict:
        """GET <endpoint>/compute/v1/projects/<project>/<path> (the REST call google-cloud-compute makes for
        the same read) and its JSON body, through google-auth's requests session - the same credentials,
        endpoint and proxy settings as the clients, without importing google-cloud-compute, which is most
        of the time of listing instances (the inventory). An HTTP error is raised as google.api_core's
        exception for it (from_http_response, as the compute_v1 REST transport does), so error mapping and
        retries see the same exceptions on both paths."""
        root = self.endpoint or self.API_ROOT
        if "://" not in root:
            root = "https://" + root  # as the compute_v1 transport reads a bare host
        response = self._http().get(f"{root.rstrip('/')}/compute/v1/projects/{self.project}/{path}",
                                    params=params, timeout=self.READ_TIMEOUT)
        if response.status_code >= 400:
            from google.api_core import exceptions

            raise exceptions.from_http_response(response)
        return response.json()

    def _http(self):
        if self._session is None:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials = self.credentials
            if credentials is None:  # application default credentials, as the clients find them
                credentials, _project = google.auth.default(scopes=list(self.SCOPES))
            self._session = AuthorizedSession(credentials)
        return self._session

    def _options(self):
        from google.api_core.client_options import ClientOptions

        return ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None

    def _build(self, attr: str):
        from google.cloud import compute_v1

        cls = getattr(compute_v1, self.CLASSES[attr])
        return cls(credentials=self.credentials, transport="rest", client_options=self._options())

    def __getattr__(self, attr: str):
        if attr.startswith("_") or attr not in self.CLASSES:
            raise AttributeError(attr)
        if attr not in self._clients:
            client = self._build(attr)
            # Read-only clients (zones, machine types...) have no extended-operation pollers.
            services = getattr(client._transport, "_extended_operations_services", None)
            if attr not in self.OPERATIONS and services is not None:
                for op in self.OPERATIONS:
                    services[op] = getattr(self, op)
            self._clients[attr] = client
        return self._clients[attr]


def _gcp_credentials(credentials_file: str | None, endpoint: str | None):
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2 import service_account

    if credentials_file:
        try:
            return service_account.Credentials.from_service_account_file(
                os.path.expanduser(credentials_file),
                scopes=list(GcpClients.SCOPES),
            )
        except (OSError, ValueError) as exc:
            raise SdcloudError(
                f"cannot read GCP credentials file {credentials_file!r} ({exc}): give the path of a service "
                "account JSON key, or unset it to use `gcloud auth application-default login`"
            ) from exc
    if endpoint:
        return AnonymousCredentials()
    return None  # application default credentials


def gcp_clients(project: str, endpoint: str | None = None, credentials_file: str | None = None) -> GcpClients:
    """Compute Engine clients for `project`; `endpoint` (or SDCLOUD_GCP_ENDPOINT) overrides the API
    host (e.g. http://127.0.0.1:8089); with an endpoint and no credentials file, anonymous credentials."""
    return GcpClients(project, endpoint=endpoint, credentials_file=credentials_file)
