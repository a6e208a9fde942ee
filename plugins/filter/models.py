"""Filters over the declared model list: the kinds, the refusals that need only the list, and where the
models role stages operator-side (local:) files. Each wraps plugins/module_utils/sdcloud/model_list.py, the one
owner of these facts that model_sync also uses on the machine."""

from __future__ import annotations

import os

import ansible.module_utils

_MU = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)

from ansible.module_utils.sdcloud import model_list  # noqa: E402
from ansible.module_utils.sdcloud.redact import Redactor  # noqa: E402


def sdcloud_model_kinds(extra=None):
    """The kind folders a model entry may name (ComfyUI's and the common custom nodes'), sorted, plus `extra`
    (the models role's models_extra_kinds). `[] | sdcloud_model_kinds` is the built-in list."""
    return sorted(model_list.KINDS | {str(k) for k in extra or ()})


def sdcloud_model_problems(models, manifest=None, extra_kinds=None, setting="sdcloud_models",  # noqa: PLR0917 - Jinja passes them by position
                           manifest_setting="sdcloud_models_manifest", extra_setting="models_extra_kinds"):
    """One message per problem of the declared list `models` and the manifest's entries `manifest`, each naming the
    entry (setting[index] (name)) and the fix: not a mapping, source or kind missing, a source sdcloud cannot
    download (hf:// without @revision, civitai:// with a non-numeric id, ...), an unknown kind, a name with `..`,
    a sha256 that is not 64 hex digits, a size that is not a number, the same kind/name twice. [] when all is
    well. Sources appear with credentials redacted."""
    kinds = model_list.KINDS | {str(k) for k in extra_kinds or ()}
    groups = [(setting, models), (manifest_setting, manifest)]
    _good, problems = model_list.check(groups, kinds, extra_setting=extra_setting, local_ok=True, redact=Redactor())
    return problems


def sdcloud_model_uploads(models, upload_dir, models_dir):
    """How the models role stages local:<path> entries: {models (the list with those sources rewritten to
    file://<upload_dir>/<kind>/<name>), staged (just those entries), uploads ([{kind, name, src, dest,
    dest_final}])}. The names come from model_list.file_name, as model_sync derives them."""
    return model_list.upload_plan(models, str(upload_dir).rstrip("/"), str(models_dir).rstrip("/"))


class FilterModule:
    def filters(self):
        return {
            "sdcloud_model_kinds": sdcloud_model_kinds,
            "sdcloud_model_problems": sdcloud_model_problems,
            "sdcloud_model_uploads": sdcloud_model_uploads,
        }
