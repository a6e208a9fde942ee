"""The model directory as model_sync sees it: the state file of verified files, what one declared file needs (ok,
adopt, fetch), the files no entry declares (prune), partial downloads no entry wants, and the free space.

Layout under ``models_dir``::

    <kind>/<name>                    final files, one folder per kind as ComfyUI names them
    .partial/<kind>/<name>.part      bytes being downloaded (outside the folders the UIs scan)
    .partial/<kind>/<name>.part.json sidecar: which byte ranges of the .part are complete
    .sdcloud-state.json              verified files keyed by path, with size, mtime_ns and sha256
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.model_list import PARTIAL_DIR
from ansible.module_utils.sdcloud.units import MIB, human_bytes

STATE_FILE = ".sdcloud-state.json"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4 * MIB)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


class ModelDir:
    """One models_dir and the kind folders that belong to the sync (the built-in kinds and extra_kinds)."""

    def __init__(self, models_dir, kinds):
        self.models_dir = models_dir
        self.kinds = kinds

    def load_state(self):
        path = os.path.join(self.models_dir, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return data.get("files", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self, state):
        path = os.path.join(self.models_dir, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "files": state}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    @staticmethod
    def evaluate(model, state):
        """Decide one file: ('ok'|'adopt'|'fetch', reason, state entry or None, current sha or None)."""
        try:
            st = os.stat(model.dest)
        except FileNotFoundError:
            return "fetch", "missing", None, None
        ent = state.get(model.rel)
        fresh = ent and ent.get("size") == st.st_size and ent.get("mtime_ns") == st.st_mtime_ns
        if model.size is not None and model.size != st.st_size:
            return "fetch", f"size {st.st_size} differs from declared {model.size}", None, ent and ent.get("sha256")
        if fresh:
            if model.sha256:
                if ent.get("sha256") == model.sha256:
                    return "ok", "verified", ent, ent["sha256"]
                if ent.get("sha256"):
                    return "fetch", "sha256 changed", None, ent["sha256"]
            elif ent.get("source") == model.source_key:
                return "ok", "present", ent, ent.get("sha256")
            else:
                return "fetch", "source changed", None, ent.get("sha256")
        if not model.sha256:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": None, "source": model.source_key}
            return "adopt", "present (no sha256 declared)", entry, None
        actual = sha256_file(model.dest)
        if actual == model.sha256:
            entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual, "source": model.source_key}
            return "adopt", "verified existing file", entry, actual
        return "fetch", "content differs from sha256", None, actual

    def prune_candidates(self, wanted):
        """Files in the kind folders that `wanted` (a set of <kind>/<name>) does not hold."""
        out = []
        root = self.models_dir
        for kind in sorted(self.kinds):
            top = os.path.join(root, kind)
            if not os.path.isdir(top):
                continue
            for dirpath, dirnames, filenames in os.walk(top):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(filenames):
                    if fn.startswith(".") or re.match(r"^put_.*_here$", fn):
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, fn), root).replace(os.sep, "/")
                    if rel not in wanted:
                        out.append(rel)
        return out

    def present_files(self):
        """Files in the kind folders now (for diff)."""
        return set(self.prune_candidates(set()))

    def check_space(self, need):
        path = self.models_dir
        while not os.path.exists(path):
            path = os.path.dirname(path) or "/"
        free = shutil.disk_usage(path).free
        if need > free:
            raise SdcloudError(
                f"not enough disk space in {self.models_dir}: the downloads need {human_bytes(need)} "
                f"({need} bytes) but only {human_bytes(free)} ({free} bytes) is free; grow the disk "
                "(disk_size_gb) or drop models from sdcloud_models"
            )

    def stale_partials(self, wanted):
        """Partial downloads (and their sidecars) of files no longer declared."""
        root = os.path.join(self.models_dir, PARTIAL_DIR)
        out = []
        for dirpath, _dirs, filenames in os.walk(root):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if rel.removesuffix(".json").removesuffix(".part") not in wanted:
                    out.append(full)
        return out

