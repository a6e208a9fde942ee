"""The options gpu_instance, cloud_firewall and cloud_resources share: `extends_documentation_fragment: [cloud]`.

One owner for their wording, as module_utils/sdcloud/module.py's CLOUD_ARGUMENT_SPEC owns their spec (`zones`
stays in each module: what it means differs). ansible.cfg's doc_fragment_plugins points here.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  provider:
    description: Which cloud or pod marketplace.
    type: str
    required: true
    choices: [gcp, aws, runpod, vastai]
  endpoint:
    description:
      - API endpoint override (a private endpoint, or a local stand-in in tests).
      - Defaults to E(SDCLOUD_GCP_ENDPOINT) for GCP, E(AWS_ENDPOINT_URL) for AWS, E(SDCLOUD_RUNPOD_ENDPOINT) for
        RunPod (default C(https://api.runpod.io)) and E(SDCLOUD_VAST_ENDPOINT) for vast.ai (C(https://console.vast.ai))
        when set.
    type: str
  project:
    description:
      - GCP project id. Required for GCP; unset, E(GOOGLE_CLOUD_PROJECT) or E(CLOUDSDK_CORE_PROJECT).
    type: str
  credentials_file:
    description: GCP service account JSON key file; unset, application default credentials are used.
    type: path
  profile:
    description: AWS profile name; unset, E(AWS_PROFILE) or the default credential chain.
    type: str
  api_key:
    description: RunPod or vast.ai API key; unset, E(RUNPOD_API_KEY) / E(VAST_API_KEY) from the environment. Never logged.
    type: str
requirements:
  - boto3 (provider aws)
  - google-cloud-compute (provider gcp)
  - nothing more for runpod and vastai (their REST APIs are called with the Python standard library)
"""
