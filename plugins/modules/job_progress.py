#!/usr/bin/python
"""Ansible module: wait a little for an async job and say how far it got, from the log it writes."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: job_progress
short_description: Report the progress of a background (async) step from its log, and its result when it ends
description:
  - The polling half of sdcloud's long steps (model downloads, C(uv pip install) of the PyTorch stack, pip,
    a driver install). The play starts the step as an async task (C(async), C(poll=0)) that writes a log on
    the machine, then runs this module in an C(until) loop (C(until=result.finished), C(delay=0)).
  - Each call waits up to I(wait) seconds for the job to finish, then reads what the job wrote to I(log)
    since the previous call and returns it as a few plain lines in C(progress), shaped by I(format). The
    sdcloud_progress stdout callback prints them while the loop runs, one line each, with the time.
  - When the job has finished it returns the job's result in C(job) (without the job's own arguments, which
    may carry tokens), takes C(changed) from it, fails with the end of the log when the job failed, and
    removes the job's results file (as the C(async_status) cleanup does).
  - Every line, and the job's result, passes through the redaction model_sync uses (secret query
    parameters such as C(?token=), C(user:password@) in URLs, bearer tokens).
  - Runs on the managed host; Python standard library only.
version_added: "1.2.0"
author: sdcloud
options:
  job:
    description:
      - The registered result of the async task (it holds C(ansible_job_id) and C(results_file)). Run this
        module with the same C(become) as that task.
    type: dict
    required: true
  log:
    description: The log the job writes (appends to) while it runs. Without it only the elapsed time is reported.
    type: path
  log_offset:
    description:
      - Where this run's output starts in I(log) (its size before the job started, from a C(stat) task), so
        that earlier runs' lines are not shown. A log that is smaller than this is read from its start.
    type: int
    default: 0
  format:
    description:
      - How to read I(log). C(model_sync) (model_sync's log; the latest line per file and for all files, plus
        every event), C(uv) (C(uv pip install)'s output; with I(plan) and I(venv) it counts what is fetched
        and installed), C(pip) (pip's C(--log) file), C(apt) (C(/var/log/apt/term.log), the phase of an
        install, DKMS builds included), or C(lines) (new lines as they are).
    type: str
    choices: [lines, model_sync, uv, pip, apt]
    default: lines
  plan:
    description: For C(uv), the output of the same C(uv pip install) with C(--dry-run) (what is to install).
    type: str
    default: ""
  venv:
    description: For C(uv), the venv being installed into; its C(.dist-info) folders show what is in place.
    type: path
  wait:
    description:
      - Seconds to wait on the machine for the job to finish before reporting (checked every 0.25 s, so a
        job that ends returns at once). This is the interval of the progress lines.
    type: float
    default: 5
notes:
  - C(finished) is the loop's condition. Give the loop C(retries) of at least the job's C(async) limit
    divided by I(wait).
  - Supports check mode (it only reads, and cleans up a finished job), but an async task cannot run in check
    mode, so plays skip both in check mode.
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Start the model downloads in the background
  model_sync:
    models: "{{ models }}"
  async: 14400
  poll: 0
  register: models_job
  no_log: true  # the arguments carry tokens

- name: Wait for the model downloads (progress every 5 s)
  job_progress:
    job: "{{ models_job }}"
    log: /opt/sdcloud/models/.sdcloud-sync.log
    log_offset: "{{ models_log_before.stat.size | default(0) }}"
    format: model_sync
  register: models_wait
  until: models_wait.finished
  retries: 2880
  delay: 0
"""

RETURN = r"""
finished:
  description: Whether the job has ended (the loop's condition).
  returned: always
  type: bool
progress:
  description: Plain lines about what the job did since the previous call (redacted), for the terminal.
  returned: always
  type: list
  elements: str
  sample: ["checkpoints/sd_xl_base_1.0.safetensors: 1.2 GB/6.9 GB (17.4%) 104.2 MiB/s ETA 52s connections=8",
           "all: 1.3 GB/7.3 GB (17.8%) 110.0 MiB/s ETA 52s, 1 of 3 files done"]
elapsed:
  description: Seconds since the job started (since the first call, when the job had already ended then).
  returned: always
  type: float
job:
  description: The job's result, without its C(invocation), redacted.
  returned: when finished
  type: dict
rc:
  description: The job's return code, for command jobs.
  returned: when finished and the job has one
  type: int
msg:
  description: Why the job failed, with the end of I(log).
  returned: when the job failed
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.sdcloud import progress
from ansible.module_utils.sdcloud.base import SdcloudError


def main():
    module = AnsibleModule(
        argument_spec={
            "job": {"type": "dict", "required": True},
            "log": {"type": "path"},
            "log_offset": {"type": "int", "default": 0},
            "format": {"type": "str", "default": "lines", "choices": list(progress.FORMATS)},
            "plan": {"type": "str", "default": ""},
            "venv": {"type": "path"},
            "wait": {"type": "float", "default": 5},
        },
        supports_check_mode=True,
    )
    p = module.params
    job = p["job"]
    results_file = job.get("results_file")
    jid = str(job.get("ansible_job_id") or "")
    if not results_file or not jid:
        module.fail_json(msg="job is not the registered result of an async task (no ansible_job_id/results_file): "
                             "register the task that has `async:` and `poll: 0`", finished=True)
    if results_file.rstrip("/").rsplit("/", 1)[-1] != jid:
        module.fail_json(msg=f"job's results_file {results_file} does not belong to job {jid}", finished=True)
    try:
        result = progress.poll(results_file, log=p["log"], log_offset=p["log_offset"], fmt=p["format"], wait=p["wait"],
                               plan=p["plan"], venv=p["venv"])
    except SdcloudError as exc:
        module.fail_json(msg=exc.msg, finished=True)
    except OSError as exc:
        module.fail_json(msg=f"reading the job's progress failed: {exc}", finished=True)
    if result.get("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
