#!/usr/bin/python
"""Ansible module: sync declared model files into the shared model directory on a GPU server."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_sync
short_description: Download, verify and prune Stable Diffusion model files on the server
description:
  - Makes I(models_dir) hold the declared model files, one sub folder per kind as ComfyUI names them
    (C(checkpoints), C(loras), C(vae), ...). AUTOMATIC1111 reads the same folders.
  - Downloads several files at once (I(parallel)) and splits files above I(split_threshold) over several
    HTTP Range connections (I(connections)) when the server supports ranges.
  - Partial downloads live in C(<models_dir>/.partial/) with a sidecar of completed byte ranges, so an
    interrupted download resumes where it stopped, also with several connections.
  - A file appears at its final name only after its sha256 matched (atomic rename). A mismatch removes the
    bad partial and leaves the previous good file in place.
  - A state file (C(<models_dir>/.sdcloud-state.json)) remembers each verified file by path, size and
    mtime_ns with its sha256, so a re-run with nothing to do neither downloads nor re-hashes anything.
  - Free disk space is checked before any download starts.
  - Failed files do not stop the others; the module fails at the end with one line per failed file.
  - Tokens are never logged; URLs are shown with secret query parameters (Civitai C(?token=), signatures)
    redacted.
version_added: "1.0.0"
author: sdcloud
options:
  models:
    description:
      - The models to have. Files of the list that are present and verified are left alone.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - File name inside the kind folder (may contain sub folders, never C(..)).
          - Defaults to the last path element of I(source) (of an C(hf://) path, before its C(@revision)).
        type: str
      kind:
        description:
          - Kind folder, as ComfyUI names it (C(checkpoints), C(loras), C(vae), C(controlnet), C(upscale_models),
            C(embeddings), C(clip_vision), C(ipadapter), C(clip), C(unet), C(diffusion_models), C(text_encoders),
            C(inpaint), ...). The list is C(KINDS) in C(plugins/module_utils/sdcloud/model_list.py) (the
            C(sdcloud_model_kinds) filter returns it). Add other names with I(extra_kinds).
        type: str
        required: true
      source:
        description:
          - Where to get the file. C(https://...) (Hugging Face and Civitai URLs included),
            C(hf://owner/repo/path/in/repo@revision), C(civitai://<model version id>), C(s3://bucket/key),
            C(gs://bucket/object) or C(file:///path/on/the/server).
          - An C(hf://) source needs its C(@revision) (a commit or a tag; C(@main) follows the branch on purpose);
            a C(civitai://) id is the model version id, digits only.
        type: str
        required: true
      sha256:
        description:
          - Expected sha256 (64 hex digits, optional C(sha256:) prefix). Strongly recommended; without it a
            present file is trusted as is.
        type: str
      size:
        description:
          - Expected size in bytes. Used for the disk space check before anything is probed.
        type: int
  models_dir:
    description: Shared model directory; one sub folder per kind.
    type: path
    default: /opt/sdcloud/models
  extra_kinds:
    description: Kind folder names to accept besides the built-in ComfyUI ones.
    type: list
    elements: str
    default: []
  prune:
    description:
      - Remove files in the kind folders under I(models_dir) that are not in I(models), and partial downloads
        of files no longer declared. Check mode lists what would go.
    type: bool
    default: false
  parallel:
    description: How many files download at the same time.
    type: int
    default: 4
  connections:
    description: HTTP Range connections per file, for files of at least I(split_threshold) bytes.
    type: int
    default: 8
  split_threshold:
    description: Files smaller than this many bytes use one connection.
    type: int
    default: 8388608
  retries:
    description:
      - Retries per request on HTTP 429 (Retry-After honoured, up to 120 s), 5xx, timeouts and dropped
        connections, with exponential backoff and jitter. Attempts that received bytes do not count.
    type: int
    default: 5
  backoff:
    description: Base delay in seconds of the exponential backoff (doubles per retry, capped at 60 s).
    type: float
    default: 1.0
  timeout:
    description: Seconds a connect or a read may stall before the attempt counts as failed.
    type: float
    default: 30
  log_path:
    description:
      - Progress log on the server (bytes, rate, ETA per file and for all files together, retries, failures),
        a line per file every 2 s. Tokens are never written.
      - Run the module as an async task and poll it with M(job_progress) (C(format=model_sync)) to see these lines
        in the terminal while the files download (the models role does).
      - Defaults to C(<models_dir>/.sdcloud-sync.log).
    type: path
  owner:
    description: Owner of downloaded files and created folders.
    type: str
  group:
    description: Group of downloaded files and created folders.
    type: str
  mode:
    description: Mode of downloaded files.
    type: raw
    default: "0644"
  hf_token:
    description:
      - Hugging Face token, sent only to I(hf_endpoint)'s host (never after a redirect to another host).
      - Defaults to the C(HF_TOKEN) environment variable (C(HUGGING_FACE_HUB_TOKEN) also works).
    type: str
  civitai_token:
    description:
      - Civitai API token, sent as a bearer header only to I(civitai_endpoint)'s host.
      - Defaults to the C(CIVITAI_TOKEN) environment variable.
    type: str
  gcs_token:
    description:
      - OAuth access token for C(gs://) sources. Defaults to C(GOOGLE_OAUTH_ACCESS_TOKEN); without it the
        module asks the GCE metadata server for the VM's service account token (only for the real endpoint),
        and falls back to anonymous access.
    type: str
  gcs_metadata_token:
    description: Whether to ask the GCE metadata server for a token when I(gcs_token) is not set.
    type: bool
    default: true
  hf_endpoint:
    description: Base URL C(hf://) sources resolve against, and the host that receives I(hf_token).
    type: str
    default: https://huggingface.co
  civitai_endpoint:
    description: Base URL for C(civitai://) sources, and the host that receives I(civitai_token).
    type: str
    default: https://civitai.com
  gcs_endpoint:
    description: GCS endpoint for C(gs://) sources (JSON API media download).
    type: str
    default: https://storage.googleapis.com
  s3_endpoint:
    description: S3 endpoint URL for C(s3://) sources (for S3-compatible stores); AWS when unset.
    type: str
  s3_region:
    description: Region for C(s3://) sources.
    type: str
  aws_access_key_id:
    description: Access key for C(s3://); defaults to boto3's chain (environment, instance role).
    type: str
  aws_secret_access_key:
    description: Secret key for C(s3://).
    type: str
  aws_session_token:
    description: Session token for C(s3://).
    type: str
  validate_certs:
    description: Verify TLS certificates.
    type: bool
    default: true
requirements:
  - python >= 3.10 on the server
  - boto3 on the server, only for C(s3://) sources
notes:
  - The whole list is checked before anything is touched (also in check mode), and every bad entry is named
    in one failure - source shape, kind, name, sha256, size, the same kind/name twice.
  - Supports check mode (lists what would be downloaded, replaced or removed, changes nothing and makes no
    network request) and diff mode (file list before and after).
  - C(changed) is true only when a model file was written or removed. Recording an already correct file in the
    state file is not a change.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Sync the declared models
  model_sync:
    models_dir: /opt/sdcloud/models
    models:
      - name: sd_xl_base_1.0.safetensors
        kind: checkpoints
        source: hf://stabilityai/stable-diffusion-xl-base-1.0/sd_xl_base_1.0.safetensors@main
        sha256: 31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b
      - name: detail_tweaker.safetensors
        kind: loras
        source: civitai://62833
      - kind: vae
        source: s3://my-models/vae/sdxl_vae.safetensors
    hf_token: "{{ lookup('ansible.builtin.env', 'HF_TOKEN') }}"
    owner: comfyui
  no_log: true  # the task arguments carry tokens

- name: Remove models no longer declared (preview with --check --diff)
  model_sync:
    models: "{{ sdcloud_models }}"
    prune: true
"""

RETURN = r"""
changed:
  description: Whether a model file was downloaded, replaced or removed (or would be, in check mode).
  returned: always
  type: bool
files:
  description: One entry per declared model.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: File name inside the kind folder.
      type: str
    kind:
      description: Kind folder.
      type: str
    path:
      description: Final path on the server.
      type: str
    source:
      description: Where it comes from, with tokens and signatures redacted.
      type: str
    status:
      description: C(present), C(fetched), C(would_fetch) (check mode) or C(failed).
      type: str
    reason:
      description: Why it was (or would be) fetched, or how it was found present.
      type: str
    action:
      description: C(create) or C(replace), for files that were (or would be) fetched.
      type: str
      returned: when fetched or would be fetched
    bytes:
      description: Bytes downloaded in this run.
      type: int
      returned: when fetched
    size:
      description: Final file size.
      type: int
      returned: when fetched
    seconds:
      description: Download time, verification excluded.
      type: float
      returned: when fetched
    mbps:
      description: Download rate in MiB/s.
      type: float
      returned: when fetched
    connections:
      description: Connections used for the file.
      type: int
      returned: when fetched
    resumed_from:
      description: Bytes already on disk from an interrupted run.
      type: int
      returned: when fetched
    sha256:
      description: sha256 of the file at its final name.
      type: str
    error:
      description: What went wrong and how to fix it.
      type: str
      returned: when failed
  sample:
    - name: sd_xl_base_1.0.safetensors
      kind: checkpoints
      path: /opt/sdcloud/models/checkpoints/sd_xl_base_1.0.safetensors
      source: https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors
      status: fetched
      action: create
      reason: missing
      bytes: 6938078334
      size: 6938078334
      seconds: 61.2
      mbps: 108.1
      connections: 8
      resumed_from: 0
      sha256: 31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b
removed:
  description: Files removed by I(prune) (or that would be, in check mode), relative to I(models_dir).
  returned: always
  type: list
  elements: str
bytes:
  description: Bytes downloaded in this run.
  returned: when not in check mode
  type: int
pending:
  description:
    - In check mode, whether a real run would do anything (download, remove, or record an already correct
      file in the state file); the models role runs the module for real only then. Otherwise whether files
      failed.
  returned: always
  type: bool
"""

import grp
import pwd

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.download import (
    BOTO3_IMPORT_ERROR,
    HAS_BOTO3,
    LOG_FILE,
    Options,
    Syncer,
)


def _ids(module):
    uid = gid = -1
    params = module.params
    try:
        if params["owner"]:
            owner = params["owner"]
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        if params["group"]:
            group = params["group"]
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError as exc:
        raise SdcloudError(f"unknown owner/group {exc}: create the user first or fix owner/group") from None
    return uid, gid


def _mode(value):
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 8)
    except ValueError:
        raise SdcloudError(f"mode must be octal like '0644', got {value!r}") from None


def run(module):
    params = module.params
    if not HAS_BOTO3 and any(str(m.get("source", "")).startswith("s3://") for m in params["models"]):
        module.fail_json(msg=missing_required_lib("boto3", reason="for s3:// sources"), exception=BOTO3_IMPORT_ERROR)
    uid, gid = _ids(module)
    opts = Options(
        models_dir=params["models_dir"],
        parallel=max(1, params["parallel"]),
        connections=max(1, params["connections"]),
        split_threshold=max(0, params["split_threshold"]),
        retries=max(0, params["retries"]),
        timeout=params["timeout"],
        backoff=max(0.0, params["backoff"]),
        prune=params["prune"],
        check_mode=module.check_mode,
        log_path=params["log_path"] or f"{params['models_dir'].rstrip('/')}/{LOG_FILE}",
        hf_token=params["hf_token"],
        civitai_token=params["civitai_token"],
        gcs_token=params["gcs_token"],
        gcs_metadata_token=params["gcs_metadata_token"],
        hf_endpoint=params["hf_endpoint"],
        civitai_endpoint=params["civitai_endpoint"],
        gcs_endpoint=params["gcs_endpoint"],
        s3_endpoint=params["s3_endpoint"],
        s3_region=params["s3_region"],
        aws_access_key_id=params["aws_access_key_id"],
        aws_secret_access_key=params["aws_secret_access_key"],
        aws_session_token=params["aws_session_token"],
        validate_certs=params["validate_certs"],
        uid=uid,
        gid=gid,
        mode=_mode(params["mode"]),
        extra_kinds=tuple(params["extra_kinds"] or ()),
    )
    syncer = Syncer(opts)
    try:
        out, failures = syncer.sync(params["models"])
    except OSError as exc:
        raise SdcloudError(
            syncer.redact(
                f"{exc.strerror or exc} ({exc.filename}): check models_dir and that the play runs as a user "
                "that may write there (become: true)"
            )
        ) from None
    if not module._diff:
        out.pop("diff")
    if failures:
        raise SdcloudError(
            f"{len(failures)} of {len(params['models'])} model files failed (the others are done): " + " | ".join(failures),
            **out,
        )
    fetched = sum(1 for f in out["files"] if f["status"] in ("fetched", "would_fetch"))
    verb = "would fetch" if module.check_mode else "fetched"
    out["msg"] = f"{verb} {fetched}, removed {len(out['removed'])}, {len(out['files']) - fetched} already present"
    return out


def main():
    model_spec = {
        "name": {"type": "str"},
        "kind": {"type": "str", "required": True},
        "source": {"type": "str", "required": True},
        "sha256": {"type": "str"},
        "size": {"type": "int"},
    }
    module = AnsibleModule(
        argument_spec={
            "models": {"type": "list", "elements": "dict", "required": True, "options": model_spec},
            "models_dir": {"type": "path", "default": "/opt/sdcloud/models"},
            "extra_kinds": {"type": "list", "elements": "str", "default": []},
            "prune": {"type": "bool", "default": False},
            "parallel": {"type": "int", "default": 4},
            "connections": {"type": "int", "default": 8},
            "split_threshold": {"type": "int", "default": 8 * 1024 * 1024},
            "retries": {"type": "int", "default": 5},
            "backoff": {"type": "float", "default": 1.0},
            "timeout": {"type": "float", "default": 30},
            "log_path": {"type": "path"},
            "owner": {"type": "str"},
            "group": {"type": "str"},
            "mode": {"type": "raw", "default": "0644"},
            "hf_token": {
                "type": "str",
                "no_log": True,
                "fallback": (env_fallback, ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]),
            },
            "civitai_token": {"type": "str", "no_log": True, "fallback": (env_fallback, ["CIVITAI_TOKEN"])},
            "gcs_token": {"type": "str", "no_log": True, "fallback": (env_fallback, ["GOOGLE_OAUTH_ACCESS_TOKEN"])},
            "gcs_metadata_token": {"type": "bool", "default": True},
            "hf_endpoint": {"type": "str", "default": "https://huggingface.co"},
            "civitai_endpoint": {"type": "str", "default": "https://civitai.com"},
            "gcs_endpoint": {"type": "str", "default": "https://storage.googleapis.com"},
            "s3_endpoint": {"type": "str"},
            "s3_region": {"type": "str"},
            "aws_access_key_id": {"type": "str", "no_log": True},
            "aws_secret_access_key": {"type": "str", "no_log": True},
            "aws_session_token": {"type": "str", "no_log": True},
            "validate_certs": {"type": "bool", "default": True},
        },
        required_together=[["aws_access_key_id", "aws_secret_access_key"]],
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except SdcloudError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
