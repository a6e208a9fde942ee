"""Model download engine behind the model_sync module.

Runs on the GPU server. Given the declared model list it works out what is missing or stale,
downloads it (several files at once, several HTTP Range connections per large file, resumable),
verifies sha256 before the file appears at its final name, and remembers what it verified in a
state file so a re-run with nothing to do costs a few stat() calls.

The parts, one module each:

- model_list: the kinds, a file's name, the checks of the declared list (Model)
- model_state: the model directory (state file, what a file needs, prune, partials, free space)
- remotes: where bytes come from (http(s)/hf/civitai/gs, s3, file) and the credentials
- transfer: one file's segmented, resumable, verified download and the progress lines
- this module: Options, the progress log, and Syncer.sync, which runs the steps in order

Everything that can fail raises ``SdcloudError`` (or ``FetchError``, a subclass) with a message
that names the fix; messages pass through ``Redactor`` so tokens never reach output or logs.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.sdcloud import transfer
from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.model_list import KINDS, normalise_models
from ansible.module_utils.sdcloud.model_state import ModelDir
from ansible.module_utils.sdcloud.redact import Redactor
from ansible.module_utils.sdcloud.remotes import BOTO3_IMPORT_ERROR, HAS_BOTO3, FetchError, Remotes
from ansible.module_utils.sdcloud.units import MIB, human_bytes, human_seconds

# Imported from here by model_sync, the progress module and the timeline callback.
__all__ = ["BOTO3_IMPORT_ERROR", "HAS_BOTO3", "LOG_FILE", "Options", "Redactor", "Syncer", "human_bytes", "human_seconds"]

LOG_FILE = ".sdcloud-sync.log"


@dataclasses.dataclass
class Options:
    models_dir: str = "/opt/sdcloud/models"
    parallel: int = 4
    connections: int = 8
    split_threshold: int = 8 * MIB
    retries: int = 5
    timeout: float = 30.0
    backoff: float = 1.0
    prune: bool = False
    check_mode: bool = False
    log_path: str | None = None
    hf_token: str | None = None
    civitai_token: str | None = None
    gcs_token: str | None = None
    hf_endpoint: str = "https://huggingface.co"
    civitai_endpoint: str = "https://civitai.com"
    gcs_endpoint: str = "https://storage.googleapis.com"
    gcs_metadata_token: bool = True
    s3_endpoint: str | None = None
    s3_region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    validate_certs: bool = True
    uid: int = -1
    gid: int = -1
    mode: int = 0o644
    extra_kinds: tuple = ()




# --------------------------------------------------------------------------- progress log


class Log:
    """Appends timestamped lines to log_path (thread-safe); no-op when path is None."""

    def __init__(self, path, redact, mkdirs=None):
        self.path = path
        self.redact = redact
        self.mkdirs = mkdirs or (lambda d: os.makedirs(d, exist_ok=True))
        self.ready = False
        self.lock = threading.Lock()

    def __call__(self, line):
        if not self.path:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with self.lock:
            if not self.ready:
                self.mkdirs(os.path.dirname(self.path))
                self.ready = True
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {self.redact(line)}\n")



@dataclasses.dataclass
class _Plan:
    """What the declared list needs: a result per model, the models to fetch, whether the state file changes."""

    results: list
    to_fetch: list  # (Model, its result dict)
    dirty: bool


class Syncer:
    def __init__(self, opts, redact=None):
        self.opts = opts
        self.redact = redact or Redactor(
            [opts.hf_token, opts.civitai_token, opts.gcs_token, opts.aws_secret_access_key, opts.aws_session_token]
        )
        self.log = Log(None if opts.check_mode else opts.log_path, self.redact, self.mkdirs)
        self.store = ModelDir(opts.models_dir, KINDS | set(opts.extra_kinds or ()))
        self.remotes = Remotes(opts, self.redact)
        self.overall = transfer.Overall(self.log, 0, False, 0)

    def retrying(self, what, fn, progress=None):
        return transfer.retrying(self, what, fn, progress)

    def mkdirs(self, path):
        missing = []
        while path and not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for p in reversed(missing):
            os.makedirs(p, exist_ok=True)
            if self.opts.uid != -1 or self.opts.gid != -1:
                os.chown(p, self.opts.uid, self.opts.gid)

    # ---- the steps, in the order sync() runs them

    def sync(self, entries):
        """Make models_dir hold `entries`. Returns (result dict, one message per failed file)."""
        opts = self.opts
        models = normalise_models(entries, opts, self.redact)
        wanted = {m.rel for m in models}
        state = self.store.load_state()
        before = self.store.present_files()
        self.log(f"sync start: {len(models)} models in {opts.models_dir}{' (check mode)' if opts.check_mode else ''}")
        plan = self._plan(models, state)
        removed = self.store.prune_candidates(wanted) if opts.prune else []
        out = {"files": plan.results, "removed": removed, "diff": self._diff(before, wanted, removed, plan.to_fetch)}
        stale = [rel for rel in state if rel not in wanted and not os.path.exists(os.path.join(opts.models_dir, rel))]
        if opts.check_mode:
            out["changed"] = bool(plan.to_fetch or removed)
            # what a real run would do besides changes: record verified files, forget gone ones, drop partials
            partials = opts.prune and self.store.stale_partials(wanted)
            out["pending"] = bool(plan.to_fetch or removed or plan.dirty or stale or partials)
            return out, []
        failures = self._fetch(plan, state) if plan.to_fetch else []
        self._tidy(plan, state, wanted, removed, stale)
        return self._summary(out, failures), failures

    def _plan(self, models, state):
        """Decide every file (stat, and sha256 only of a file not yet recorded); record files found correct."""
        with ThreadPoolExecutor(max_workers=max(1, self.opts.parallel)) as pool:
            decisions = list(pool.map(lambda m: self.store.evaluate(m, state), models))
        plan = _Plan([], [], False)
        for model, (action, reason, entry, _current) in zip(models, decisions, strict=True):
            res = {"name": model.name, "kind": model.kind, "path": model.dest, "source": model.source_key}
            if action in ("ok", "adopt"):
                res.update(status="present", reason=reason, sha256=entry.get("sha256"))
                if action == "adopt":
                    state[model.rel] = entry
                    plan.dirty = True
            else:
                res.update(
                    status="would_fetch" if self.opts.check_mode else "pending",
                    reason=reason,
                    action="replace" if os.path.exists(model.dest) else "create",
                )
                plan.to_fetch.append((model, res))
            plan.results.append(res)
        return plan

    def _diff(self, before, wanted, removed, to_fetch):
        header = f"{self.opts.models_dir} (files)"
        replaced = {m.rel for m, r in to_fetch if r["action"] == "replace"}
        after = (before | wanted) - set(removed)
        return {
            "before_header": header,
            "after_header": header,
            "before": "".join(f"{p}\n" for p in sorted(before)),
            "after": "".join(f"{p}{'  (replaced)' if p in replaced else ''}\n" for p in sorted(after)),
        }

    def _fetch(self, plan, state):
        """Check the space, probe every source, then download them `parallel` at a time. Returns the failures."""
        failures = []
        self.mkdirs(self.opts.models_dir)
        self.store.check_space(sum(m.size for m, _ in plan.to_fetch if m.size))
        probes = self._probe_all(plan.to_fetch, failures)
        need = 0
        for model, _res in plan.to_fetch:
            if model.rel in probes:
                _remote, probe = probes[model.rel]
                size = probe.size if probe.size is not None else (model.size or 0)
                need += max(0, size - transfer.partial_done(model, probe))
        self.store.check_space(need)
        unknown = any(probes[m.rel][1].size is None for m, _ in plan.to_fetch if m.rel in probes)
        self.overall = transfer.Overall(self.log, need, unknown, len(probes))
        with ThreadPoolExecutor(max_workers=max(1, self.opts.parallel)) as pool:
            futures = [
                (model, res, pool.submit(self._fetch_one, model, res, *probes[model.rel]))
                for model, res in plan.to_fetch
                if model.rel in probes
            ]
            for model, res, fut in futures:
                entry = fut.result()
                if entry:
                    state[model.rel] = entry
                    plan.dirty = True
                else:
                    failures.append(f"{model.rel}: {res['error']}")
        return failures

    def _tidy(self, plan, state, wanted, removed, stale):
        """Remove what prune found, drop partials no entry wants, forget files gone, save the state file."""
        for rel in removed:
            transfer.unlink(os.path.join(self.opts.models_dir, rel))
            state.pop(rel, None)
            plan.dirty = True
            self.log(f"removed {rel} (prune)")
        if self.opts.prune:
            for full in self.store.stale_partials(wanted):
                transfer.unlink(full)
        for rel in stale:
            state.pop(rel)
            plan.dirty = True
        if plan.dirty:
            self.mkdirs(self.opts.models_dir)
            self.store.save_state(state)

    def _summary(self, out, failures):
        fetched = [r for r in out["files"] if r.get("status") == "fetched"]
        out["changed"] = bool(fetched or out["removed"])
        out["pending"] = bool(failures)
        out["bytes"] = sum(r["bytes"] for r in fetched)
        self.log(
            f"sync done: {len(fetched)} fetched ({human_bytes(out['bytes'])}), {len(out['removed'])} removed, {len(failures)} failed"
        )
        return out

    def _probe_all(self, to_fetch, failures):
        probes = {}

        def one(item):
            model, res = item
            try:
                remote = self.remotes(model)
                res["source"] = self.redact(remote.describe()) if model.source.startswith(("hf:", "civitai:")) else (model.source_key)
                chan = remote.channel()
                try:
                    probe = self.retrying(f"{model.rel} probe", chan.probe)
                finally:
                    chan.close()
                if model.size is not None and probe.size is not None and probe.size != model.size:
                    raise FetchError(
                        f"{remote.describe()} is {probe.size} bytes but size is declared as {model.size}; fix size in the model list"
                    )
                return model, (remote, probe), None
            except SdcloudError as exc:
                return model, None, self.redact(exc.msg)

        with ThreadPoolExecutor(max_workers=max(1, self.opts.parallel * 2)) as pool:
            for (model, res), (_m, got, err) in zip(to_fetch, pool.map(one, to_fetch), strict=True):
                if err:
                    res.update(status="failed", error=err)
                    failures.append(f"{model.rel}: {err}")
                    self.log(f"{model.rel}: failed: {err}")
                else:
                    probes[model.rel] = got
        return probes

    def _fetch_one(self, model, res, remote, probe):
        self.log(
            f"{model.rel}: fetching {human_bytes(probe.size) if probe.size is not None else 'unknown size'} "
            f"from {remote.describe()} ({res['reason']})"
        )
        try:
            info, entry = transfer.fetch_file(self, model, remote, probe)
        except (SdcloudError, OSError) as exc:
            msg = self.redact(exc.msg if isinstance(exc, SdcloudError) else f"{exc.__class__.__name__}: {exc}")
            res.update(status="failed", error=msg)
            self.log(f"{model.rel}: failed: {msg}")
            self.overall.file_done(False)
            return None
        self.overall.file_done(True)
        res.update(status="fetched", **info)
        self.log(
            f"{model.rel}: done {human_bytes(info['bytes'])} in {info['seconds']:.1f}s "
            f"({info['mbps'] or 0:.1f} MiB/s, {info['connections']} connections, sha256 {info['sha256']})"
        )
        return entry
