"""Retries and error mapping shared by the backends.

- retry(): jittered exponential backoff ("full jitter") for throttling-type errors.
- aws_code()/aws_message(): read a botocore ClientError.
- aws_error(): any botocore/boto3 exception -> SdcloudError whose message names the fix.
- aws_call(): one thin wrapper per AWS call = retry on throttling + error mapping.
"""

from __future__ import annotations

import random
import time

from ansible.module_utils.sdcloud.base import SdcloudError

try:
    import botocore.exceptions

    _CLIENT_ERROR = botocore.exceptions.ClientError
    _BOTO_ERROR = botocore.exceptions.BotoCoreError
except ImportError:  # pragma: no cover - only without boto3
    botocore = None
    _CLIENT_ERROR = _BOTO_ERROR = ()

# Backoff defaults (seconds). Tests lower them; keep them module attributes.
RETRY_TRIES = 6
RETRY_BASE = 1.0
RETRY_CAP = 20.0

# AWS error codes by what the caller should do about them.
AWS_THROTTLING = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "EC2ThrottledException", "SlowDown",
})
# Stockout / "not here": try the next zone.
AWS_CAPACITY = frozenset({
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity", "InsufficientCapacityOnHost", "Unsupported", "SpotMaxPriceTooLow",
    "InsufficientFreeAddressesInSubnet",
})
# A regional quota blocks: trying other zones of the same region is pointless.
AWS_QUOTA = frozenset({"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"})
AWS_AUTH = frozenset({
    "AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "OptInRequired",
})
AWS_DENIED = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})


def retry(fn, *args, is_retryable=None, tries=None, base=None, cap=None, sleep=time.sleep, **kwargs):
    """Call fn(*args, **kwargs); on an exception for which is_retryable(exc) is true, sleep a random
    time in [0, min(cap, base * 2**n)] and try again, at most `tries` calls in all. The last
    exception propagates."""
    tries = RETRY_TRIES if tries is None else tries
    base = RETRY_BASE if base is None else base
    cap = RETRY_CAP if cap is None else cap
    is_retryable = is_retryable or is_aws_throttling
    for n in range(tries):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if n == tries - 1 or not is_retryable(exc):
                raise
            sleep(random.uniform(0, min(cap, base * (2**n))))
    raise AssertionError("unreachable")  # pragma: no cover


def aws_code(exc) -> str | None:
    if _CLIENT_ERROR and isinstance(exc, _CLIENT_ERROR):
        return exc.response.get("Error", {}).get("Code")
    return None


def aws_message(exc) -> str:
    if _CLIENT_ERROR and isinstance(exc, _CLIENT_ERROR):
        return exc.response.get("Error", {}).get("Message") or str(exc)
    return str(exc)


def is_aws_throttling(exc) -> bool:
    return aws_code(exc) in AWS_THROTTLING


def aws_error(exc, doing: str, region: str | None = None) -> SdcloudError:
    """Map a boto3/botocore exception raised while `doing` (e.g. "RunInstances g5.xlarge in us-east-1a")
    to an SdcloudError whose message says what to do."""
    where = f" in {region}" if region else ""
    if _CLIENT_ERROR and isinstance(exc, _CLIENT_ERROR):
        code = aws_code(exc) or "Unknown"
        text = aws_message(exc)
        operation = getattr(exc, "operation_name", None) or doing
        if code in AWS_AUTH:
            fix = ("check your AWS credentials (`aws sts get-caller-identity`), the profile in use, "
                   "and that the region is enabled for your account")
        elif code in AWS_DENIED:
            fix = (f"the credentials lack permission for ec2:{operation}: attach a policy allowing it "
                   "(see docs) or use another profile")
        elif code in AWS_THROTTLING:
            fix = "AWS throttled the API even after retries: wait a minute and re-run, or run fewer plays at once"
        elif code.startswith("InvalidAMIID"):
            fix = "the image does not exist in this region: AMI ids are per region; give a name filter or alias instead"
        elif code in AWS_CAPACITY:
            fix = "no capacity: add more zones/regions to `zones`, or set spot_fallback: on-demand"
        elif code in AWS_QUOTA:
            fix = "a service quota blocks this: raise it in the Service Quotas console"
        elif code == "DependencyViolation":
            fix = "something still uses it (an instance that is shutting down?): re-run in a minute"
        elif code.endswith(".NotFound"):
            fix = "it is gone already or in another region: check `zones` and re-run"
        else:
            fix = "see the AWS message; re-run once it is fixed"
        return SdcloudError(f"AWS {code} while {doing}{where}: {text} -- {fix}", code=code)
    if botocore is not None:
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return SdcloudError(
                "no AWS credentials found: run `aws configure` (or `aws sso login`), set AWS_PROFILE, "
                "or export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", code="NoCredentials")
        if isinstance(exc, botocore.exceptions.NoRegionError):
            return SdcloudError("no AWS region: set `zones` to a region or zone such as us-east-1",
                                code="NoRegion")
        if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
            return SdcloudError(
                f"cannot reach the AWS API while {doing}{where} ({exc}): check the network, a proxy, "
                "or the endpoint override (`endpoint` / AWS_ENDPOINT_URL)", code="EndpointConnection")
        if isinstance(exc, _BOTO_ERROR):
            return SdcloudError(f"AWS SDK error while {doing}{where}: {exc}", code=type(exc).__name__)
    return SdcloudError(f"unexpected error while {doing}{where}: {exc}", code=type(exc).__name__)


def aws_call(fn, doing: str, region: str | None = None, retry_on=None, **kwargs):
    """fn(**kwargs) with throttling retries; any SDK exception becomes SdcloudError (see aws_error).

    retry_on: extra error codes to retry (e.g. {"DependencyViolation"} while deleting a security group)."""
    extra = frozenset(retry_on or ())

    def retryable(exc):
        code = aws_code(exc)
        return code in AWS_THROTTLING or code in extra

    try:
        return retry(fn, is_retryable=retryable, **kwargs)
    except SdcloudError:
        raise
    except Exception as exc:
        if (_CLIENT_ERROR and isinstance(exc, _CLIENT_ERROR)) or (_BOTO_ERROR and isinstance(exc, _BOTO_ERROR)):
            raise aws_error(exc, doing, region) from exc
        raise


def quota_help(quota_code: str, quota_name: str, region: str, vcpus: int) -> str:
    """How to raise an EC2 vCPU quota, with the console URL and the CLI command."""
    return (
        f"quota '{quota_name}' ({quota_code}) in {region} is too low for {vcpus} vCPUs: request at least "
        f"{vcpus} at https://{region}.console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{quota_code} "
        f"or run `aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {quota_code} "
        f"--desired-value {vcpus} --region {region}`"
    )
