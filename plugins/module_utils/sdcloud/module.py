"""What every sdcloud cloud module shares: the connection options, the SDK check and the one `except`."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.sdcloud.base import SdcloudError, backend_from_params
from ansible.module_utils.sdcloud.clients import BOTO3_IMPORT_ERROR, GCP_IMPORT_ERROR, HAS_BOTO3, HAS_GCP

# Options every cloud module takes (documented in each module, whose `zones` wording differs).
CLOUD_ARGUMENT_SPEC = {
    "provider": {"type": "str", "required": True, "choices": ["gcp", "aws", "runpod", "vastai"]},
    "zones": {"type": "list", "elements": "str", "default": []},
    "endpoint": {"type": "str"},
    "project": {"type": "str", "fallback": (env_fallback, ["GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"])},
    "credentials_file": {"type": "path"},
    "profile": {"type": "str", "fallback": (env_fallback, ["AWS_PROFILE"])},
    # runpod / vastai: unset, RUNPOD_API_KEY / VAST_API_KEY from the environment (read by the backend,
    # which knows its provider's variable)
    "api_key": {"type": "str", "no_log": True},
}


def cloud_module(argument_spec: dict, **kwargs) -> AnsibleModule:
    """An AnsibleModule with the shared cloud options, check mode, and the provider's SDK checked."""
    module = AnsibleModule(
        argument_spec={**CLOUD_ARGUMENT_SPEC, **argument_spec},
        supports_check_mode=True,
        required_if=[("provider", "gcp", ["project"])],
        **kwargs,
    )
    if module.params["provider"] == "aws" and not HAS_BOTO3:
        module.fail_json(msg=missing_required_lib("boto3"), exception=str(BOTO3_IMPORT_ERROR))
    if module.params["provider"] == "gcp" and not HAS_GCP:
        module.fail_json(msg=missing_required_lib("google-cloud-compute"), exception=str(GCP_IMPORT_ERROR))
    return module


def run(module: AnsibleModule, ensure, validate=None) -> None:
    """validate(params), then ensure(module, backend); every SdcloudError becomes fail_json (no tracebacks)."""
    try:
        if validate:
            validate(module.params)
        result = ensure(module, backend_from_params(module.params))
    except SdcloudError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    module.exit_json(**result)
