"""The declared model list: the kinds, a file's name, what a source must look like, and every refusal that
needs only the list.

The one owner of these facts. model_sync (through download.normalise_models) refuses a bad list before it
touches anything; the filters in plugins/filter/models.py give the same checks to the preflight and the models
role, and the kinds to the roles that point a UI at the kind folders.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from urllib.parse import urlsplit

from ansible.module_utils.sdcloud.base import SdcloudError

# Folder names ComfyUI (and the common custom nodes) scan under models/: the kinds a model entry may name.
KINDS = frozenset(
    {
        "animatediff_models",
        "animatediff_motion_lora",
        "audio_encoders",
        "checkpoints",
        "clip",
        "clip_vision",
        "configs",
        "controlnet",
        "diffusers",
        "diffusion_models",
        "embeddings",
        "facerestore_models",
        "gligen",
        "hypernetworks",
        "insightface",
        "inpaint",
        "ipadapter",
        "latent_upscale_models",
        "loras",
        "model_patches",
        "photomaker",
        "sams",
        "style_models",
        "t2i_adapter",
        "text_encoders",
        "ultralytics",
        "unet",
        "upscale_models",
        "vae",
        "vae_approx",
    }
)

PARTIAL_DIR = ".partial"
_HEX = frozenset("0123456789abcdef")
_SOURCES = "https://..., hf://owner/repo/path@revision, civitai://<model version id>, s3://bucket/key, gs://bucket/object"


@dataclasses.dataclass
class Model:
    name: str
    kind: str
    source: str
    sha256: str | None
    size: int | None
    rel: str = ""  # <kind>/<name>
    dest: str = ""
    partial: str = ""
    source_key: str = ""  # redacted source: what the state file and results show


def parse_hf(source):
    """hf://owner/repo/path/in/repo@revision -> (repo, path, revision or None); ValueError when not that shape."""
    body = str(source)[len("hf://") :]
    head, _, last = body.rpartition("/")
    revision = None
    if "@" in last:
        last, _, revision = last.partition("@")
    pieces = [*head.split("/"), last] if head else [last]
    if len(pieces) < 3 or not all(pieces):
        raise ValueError(body)
    return "/".join(pieces[:2]), "/".join(pieces[2:]), revision


def file_name(source):
    """The file name an entry without `name` gets: the last element of the source's path (of an hf:// path before its
    @revision; an `@` anywhere else is part of the name)."""
    src = str(source or "").strip()
    scheme = src.partition(":")[0].lower() if ":" in src else ""
    if scheme == "hf":
        try:
            return parse_hf(src)[1].rsplit("/", 1)[-1]
        except ValueError:
            pass
    path = src[len("local:") :] if scheme == "local" else urlsplit(src).path
    return path.rstrip("/").rsplit("/", 1)[-1]


def safe_name(name):
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _sha256(value):
    return str(value).strip().lower().removeprefix("sha256:") if value else None


def _source_problem(src, local_ok, redact):
    """What is wrong with a source's shape, or None."""
    shown = redact(src)
    scheme = src.partition(":")[0].lower() if ":" in src else ""
    parts = urlsplit(src)
    if scheme in ("http", "https"):
        return None if parts.netloc else f"{shown} has no host: give a full URL like https://example.com/file.safetensors"
    if scheme == "hf":
        try:
            _repo, path, revision = parse_hf(src)
        except ValueError:
            return f"{shown} is not hf://owner/repo/path/in/repo@revision"
        if revision is None:
            return (
                f"{shown} has no @revision, which would silently follow the main branch: pin it as "
                f"hf://{src[len('hf://'):]}@<commit or tag>, or end it in @main to follow the branch on purpose"
            )
        if not revision:
            return f"{shown} ends in an empty @: give a commit, a tag or a branch after it (e.g. @main)"
        return None if path else f"{shown} names no file in the repo"
    if scheme == "civitai":
        version = src[len("civitai://") :].strip("/") if src.lower().startswith("civitai://") else ""
        if version.isdigit() and version.isascii():
            return None
        return (
            f"{shown} is not a Civitai model version id: write civitai://<model version id>, digits only "
            "(the number after modelVersionId= on the model's page, or in its download link /api/download/models/<id>)"
        )
    if scheme in ("s3", "gs"):
        obj = "key" if scheme == "s3" else "object"
        if parts.netloc and parts.path.strip("/"):
            return None
        return f"{shown} must be {scheme}://bucket/{obj}"
    if scheme == "file":
        ok = parts.netloc in ("", "localhost") and parts.path.startswith("/")
        return None if ok else f"{shown} must be file:///absolute/path/on/the/machine (three slashes)"
    if scheme == "local":
        if local_ok:
            return None if src[len("local:") :].strip() else f"{shown} names no file: give local:<path on this computer>"
        return "local:<path> sources are the models role's (it uploads them first): give this module file:///<path on the server>"
    more = ", local:<path on this computer>" if local_ok else ""
    return f"{shown} is not a source sdcloud can download: use {_SOURCES}{more} or file:///<path on the machine>"


def _entry_problems(label, entry, kinds, *, extra_setting, local_ok, redact):
    out = []
    src = str(entry.get("source") or "").strip()
    if not src:
        out.append(f"'source' is missing: give where the file comes from ({_SOURCES}, ...)")
    else:
        bad = _source_problem(src, local_ok, redact)
        if bad:
            out.append(bad)
    kind = str(entry.get("kind") or "").strip()
    if not kind:
        out.append(f"'kind' is missing: give the kind folder, one of {', '.join(sorted(kinds))}")
    elif kind not in kinds:
        near = difflib.get_close_matches(kind, sorted(kinds), n=1)
        hint = f"'{near[0]}'? Else " if near else ""
        out.append(f"unknown kind '{kind}': {hint}use one of {', '.join(sorted(kinds))} (or add it to {extra_setting})")
    name = str(entry.get("name") or "").strip() or file_name(src)
    if src and not name:
        out.append("set 'name' (the file's name in its kind folder): the source has no file name to take it from")
    elif name and not safe_name(name):
        out.append(f"name '{name}' must be a relative file name without '..'")
    sha = _sha256(entry.get("sha256"))
    if sha and (len(sha) != 64 or not set(sha) <= _HEX):
        out.append(f"sha256 must be 64 hex digits (optionally after sha256:), got '{sha}'")
    size = entry.get("size")
    if size not in (None, "") and (isinstance(size, bool) or not str(size).strip().isdigit()):
        out.append(f"size must be a whole number of bytes, got {size!r}")
    return [f"{label}: {p}" for p in out]


def check(groups, kinds, *, extra_setting, local_ok, redact=str):
    """Validate the declared lists, `groups` being [(setting, entries), ...] (the setting names the list in the
    messages). Returns (entries, problems): the good entries as (label, entry, name, sha256, size), and one
    message per problem, each naming the entry by setting and index."""
    good, problems, seen = [], [], {}
    for setting, entries in groups:
        if entries in (None, ""):
            continue
        if isinstance(entries, (str, bytes, dict)) or not hasattr(entries, "__iter__"):
            problems.append(f"{setting} is {redact(str(entries))[:80]!r}: give a list of {{name, kind, source, sha256}} mappings")
            continue
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                problems.append(f"{setting}[{i}] is {redact(str(entry))[:80]!r}: give a mapping {{name, kind, source, sha256}}")
                continue
            src = str(entry.get("source") or "").strip()
            name = str(entry.get("name") or "").strip() or file_name(src)
            label = f"{setting}[{i}] ({name or redact(src) or '?'})"
            mine = _entry_problems(label, entry, kinds, extra_setting=extra_setting, local_ok=local_ok, redact=redact)
            rel = f"{str(entry.get('kind') or '').strip()}/{name}"
            if not mine and rel in seen:
                mine.append(f"{label}: {rel} is declared twice (also {seen[rel]}): give each file its own name, or drop one")
            problems += mine
            if not mine:
                seen[rel] = label
                size = entry.get("size")
                good.append((label, entry, name, _sha256(entry.get("sha256")), int(size) if size not in (None, "") else None))
    return good, problems


def normalise_models(entries, opts, redact):
    """The module's list as Model objects; raise one SdcloudError listing every bad entry."""
    kinds = KINDS | set(opts.extra_kinds or ())
    good, problems = check([("models", entries or [])], kinds, extra_setting="extra_kinds", local_ok=False, redact=redact)
    if problems:
        raise SdcloudError("invalid model list: " + "; ".join(problems))
    models = []
    for _label, entry, name, sha, size in good:
        kind, source = str(entry["kind"]).strip(), str(entry["source"]).strip()
        models.append(
            Model(
                name=name,
                kind=kind,
                source=source,
                sha256=sha,
                size=size,
                rel=f"{kind}/{name}",
                dest=os.path.join(opts.models_dir, kind, name),
                partial=os.path.join(opts.models_dir, PARTIAL_DIR, kind, name + ".part"),
                source_key=redact(source),
            )
        )
    return models


def upload_plan(entries, upload_dir, models_dir):
    """local:<path> entries as the models role stages them: {models: the list with each local: source rewritten to
    file://<upload_dir>/<kind>/<name> (and its name set), staged: just those entries, uploads: [{kind, name, src
    (the operator's path, ~ expanded), dest (in upload_dir), dest_final (in models_dir)}]}. Anything that is not a
    local: mapping passes through unchanged (the checks report it)."""
    if isinstance(entries, (str, bytes, dict)) or not hasattr(entries, "__iter__"):
        return {"models": entries, "staged": [], "uploads": []}
    out, staged, uploads = [], [], []
    for entry in entries:
        src = str(entry.get("source") or "").strip() if isinstance(entry, dict) else ""
        if not src.startswith("local:"):
            out.append(entry)
            continue
        kind = str(entry.get("kind") or "").strip()
        name = str(entry.get("name") or "").strip() or file_name(src)
        rewritten = dict(entry, name=name, source=f"file://{upload_dir}/{kind}/{name}")
        out.append(rewritten)
        staged.append(rewritten)
        uploads.append(
            {
                "kind": kind,
                "name": name,
                "src": os.path.expanduser(src[len("local:") :]),
                "dest": f"{upload_dir}/{kind}/{name}",
                "dest_final": f"{models_dir}/{kind}/{name}",
            }
        )
    return {"models": out, "staged": staged, "uploads": uploads}
