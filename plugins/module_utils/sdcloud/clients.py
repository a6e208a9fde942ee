"""The one place where cloud SDK clients are built.

Every backend builds its clients here, so an endpoint override (a stand-in server in tests, a
private endpoint in production) reaches every call, including operation polling.

- aws_client(service, region, endpoint_url=None, profile=None) -> boto3 client
- gcp_clients(project, endpoint=None, credentials_file=None) -> GcpClients (lazy attributes:
  .instances, .zone_operations, .firewalls, ... see GcpClients.CLASSES)

SDK imports are guarded: the modules report a missing SDK with missing_required_lib via
HAS_BOTO3 / HAS_GCP and BOTO3_IMPORT_ERROR / GCP_IMPORT_ERROR.
"""

from __future__ import annotations

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

# google-cloud-compute takes ~3 s to import: check that it is there now, import it on first use,
# so AWS-only runs (and the inventory listing only AWS) never pay for it.
try:
    GCP_IMPORT_ERROR = None if importlib.util.find_spec("google.cloud.compute_v1") else ImportError(
        "No module named 'google.cloud.compute_v1'")
except (ImportError, ValueError) as exc:  # pragma: no cover - exercised only without google-cloud-compute
    GCP_IMPORT_ERROR = exc
HAS_GCP = GCP_IMPORT_ERROR is None


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
    override is set (see docs: notes/clouds.md)."""

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
                scopes=["https://www.googleapis.com/auth/cloud-platform"],
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
