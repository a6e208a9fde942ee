"""Model download engine behind the model_sync module.

Runs on the GPU server. Given the declared model list it works out what is missing or stale,
downloads it (several files at once, several HTTP Range connections per large file, resumable),
verifies sha256 before the file appears at its final name, and remembers what it verified in a
state file so a re-run with nothing to do costs a few stat() calls.

Layout under ``models_dir``::

    <kind>/<name>                    final files, one folder per kind as ComfyUI names them
    .partial/<kind>/<name>.part      bytes being downloaded (outside the folders the UIs scan)
    .partial/<kind>/<name>.part.json sidecar: which byte ranges of the .part are complete
    .sdcloud-state.json              verified files keyed by path, with size, mtime_ns and sha256
    .sdcloud-sync.log                progress log (default log_path)

Everything that can fail raises ``SdcloudError`` (or ``FetchError``, a subclass) with a message
that names the fix; messages pass through ``Redactor`` so tokens never reach output or logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import ssl
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from ansible.module_utils.sdcloud.base import SdcloudError

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

# Folder names ComfyUI (and the common custom nodes) scan under models/.
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

STATE_FILE = ".sdcloud-state.json"
LOG_FILE = ".sdcloud-sync.log"
PARTIAL_DIR = ".partial"
MIB = 1024 * 1024
BLOCK = 256 * 1024  # bytes per read/pwrite
MIN_PIECE = 1 * MIB  # smallest range a connection is given (also the work-stealing floor)
MAX_REDIRECTS = 10
MAX_RETRY_AFTER = 120.0  # seconds: the most a Retry-After header can make us wait
SIDECAR_EVERY = 5.0  # seconds between sidecar saves during a download
LOG_EVERY = 2.0  # seconds between progress lines per file (and for all files)
VERIFY_NOTE = 64 * MIB  # files from this size get a "verifying" line before their sha256 is computed
USER_AGENT = "sdcloud-model-sync/1.0"

_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:token|access_token|api_key|apikey|key|sig|signature|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token|x-goog-signature|x-goog-credential|policy|key-pair-id)=)[^&#\s'\"]*"
)
_USERINFO = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/@\s'\"]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FetchError(SdcloudError):
    """A failed request. ``retryable`` errors are retried with backoff; ``retry_after`` in seconds."""

    def __init__(self, msg, retryable=False, retry_after=None):
        super().__init__(msg)
        self.retryable = retryable
        self.retry_after = retry_after


class Redactor:
    """Removes secrets from any text: known token values, secret query params, userinfo, bearer."""

    def __init__(self, secrets=()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text):
        text = str(text)
        for secret in self.secrets:
            text = text.replace(secret, "********")
        text = _SECRET_QUERY.sub(r"\1REDACTED", text)
        text = _USERINFO.sub(r"\1REDACTED@", text)
        return _BEARER.sub(r"\1REDACTED", text)


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


@dataclasses.dataclass
class Probe:
    size: int | None
    ranges: bool
    url: str | None = None  # final URL after redirects (http sources)
    etag: str | None = None


# --------------------------------------------------------------------------- helpers


def human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s, tenths=False):
    """12s, 5m02s, 1h02m; with tenths (the timeline's durations) 12.3s, 5m02.1s, 1h02m05s."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s" if tenths else f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m{s % 60:04.1f}s" if tenths else f"{int(s) // 60}m{int(s) % 60:02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" + (f"{int(s % 60):02d}s" if tenths else "")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4 * MIB)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def merge_ranges(ranges):
    out = []
    for start, end in sorted((int(s), int(e)) for s, e in ranges if e > s):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return out


def gaps(done, size):
    """Byte ranges [start, end) of 0..size not covered by the merged ``done`` list."""
    out, pos = [], 0
    for start, end in done:
        if start > pos:
            out.append([pos, min(start, size)])
        pos = max(pos, end)
    if pos < size:
        out.append([pos, size])
    return [g for g in out if g[1] > g[0]]


def split_gaps(holes, pieces):
    """Cut the holes into at most ``pieces`` ranges of similar size, none under MIN_PIECE."""
    total = sum(e - s for s, e in holes)
    if total == 0:
        return []
    target = max(MIN_PIECE, -(-total // max(1, pieces)))
    out = []
    for first, end in holes:
        pos = first
        while end - pos > target + MIN_PIECE // 2:
            out.append([pos, pos + target])
            pos += target
        out.append([pos, end])
    return out


def parse_retry_after(value):
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _safe_name(name):
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def normalise_models(entries, opts, redact):
    """Validate the declared list; raise one SdcloudError listing every bad entry."""
    kinds = KINDS | set(opts.extra_kinds or ())
    models, errors, seen = [], [], {}
    for i, entry in enumerate(entries or []):
        source = str(entry.get("source") or "").strip()
        kind = str(entry.get("kind") or "").strip()
        name = str(entry.get("name") or "").strip()
        if not name and source:
            name = urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1].split("@", 1)[0]
        label = f"models[{i}] ({name or redact(source) or '?'})"
        if not source:
            errors.append(f"{label}: 'source' is required")
            continue
        if kind not in kinds:
            errors.append(f"{label}: unknown kind '{kind}'; use one of {', '.join(sorted(kinds))} (or add it to extra_kinds)")
            continue
        if not name:
            errors.append(f"{label}: set 'name': the source has no file name to use")
            continue
        if not _safe_name(name):
            errors.append(f"{label}: name '{name}' must be a relative file name without '..'")
            continue
        sha = entry.get("sha256")
        sha = str(sha).strip().lower().removeprefix("sha256:") if sha else None
        if sha and not _SHA256.match(sha):
            errors.append(f"{label}: sha256 must be 64 hex digits, got '{sha}'")
            continue
        size = entry.get("size")
        size = int(size) if size not in (None, "") else None
        rel = f"{kind}/{name}"
        if rel in seen:
            errors.append(f"{label}: {rel} is declared twice (also models[{seen[rel]}])")
            continue
        seen[rel] = i
        models.append(
            Model(
                name=name,
                kind=kind,
                source=source,
                sha256=sha,
                size=size,
                rel=rel,
                dest=os.path.join(opts.models_dir, kind, name),
                partial=os.path.join(opts.models_dir, PARTIAL_DIR, kind, name + ".part"),
                source_key=redact(source),
            )
        )
    if errors:
        raise SdcloudError("invalid model list: " + "; ".join(errors))
    return models


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


# --------------------------------------------------------------------------- remotes


def _status_error(status, url, hint, has_token, redact, *, retry_after=None):
    shown = redact(url)
    if status in (401, 403):
        if hint == "hf":
            fix = (
                "the Hugging Face token was rejected or lacks access to this repo (gated models also need their terms "
                "accepted on the model page): check HF_TOKEN / hf_token (role: models_hf_token)"
                if has_token
                else "Hugging Face needs a token for this repo: set HF_TOKEN / hf_token (role: models_hf_token)"
            )
        elif hint == "civitai":
            fix = (
                "the Civitai token was rejected: check CIVITAI_TOKEN / civitai_token (role: models_civitai_token)"
                if has_token
                else "Civitai needs a token for this model: set CIVITAI_TOKEN / civitai_token (role: models_civitai_token)"
            )
        elif hint == "gcs":
            fix = (
                "GCS refused the request: set GOOGLE_OAUTH_ACCESS_TOKEN / gcs_token, or give the VM's service account "
                "storage.objects.get on the bucket"
            )
        else:
            fix = "the server wants credentials; use a signed URL or an hf://, civitai://, s3:// or gs:// source"
        return FetchError(f"HTTP {status} from {shown}: {fix}")
    if status in (404, 410):
        return FetchError(f"HTTP {status}: not found: {shown} (check the source URL, repo, revision and file path)")
    if status == 429 or status >= 500:
        return FetchError(f"HTTP {status} from {shown}", retryable=True, retry_after=retry_after)
    return FetchError(f"HTTP {status} from {shown}")


def _html_error(url, hint, has_token, redact):
    if hint == "civitai":
        what = "missing" if not has_token else "invalid"
        fix = f"Civitai serves its login page when the token is {what}: set CIVITAI_TOKEN / civitai_token"
    else:
        fix = "the URL is a web page, not a direct download link, or it needs a login"
    return FetchError(f"got an HTML page (Content-Type text/html) instead of a model file from {redact(url)}: {fix}")


class HttpRemote:
    """http(s) source. One Channel per worker thread; Authorization only on the original host."""

    def __init__(self, url, auth, hint, opts, redact):
        self.url = url
        self.auth = auth
        self.hint = hint
        self.has_token = bool(auth)
        self.auth_netloc = urlsplit(url).netloc
        self.opts = opts
        self.redact = redact
        self.ssl_ctx = ssl.create_default_context()
        if not opts.validate_certs:
            self.ssl_ctx.check_hostname = False
            self.ssl_ctx.verify_mode = ssl.CERT_NONE

    def channel(self):
        return HttpChannel(self)

    def describe(self):
        return self.redact(self.url)


class HttpChannel:
    """Keeps one keep-alive connection per host for one worker."""

    def __init__(self, remote):
        self.remote = remote
        self.conns = {}

    def close(self):
        for conn in self.conns.values():
            conn.close()
        self.conns = {}

    def _conn(self, parts):
        key = (parts.scheme, parts.netloc)
        conn = self.conns.get(key)
        if conn is None:
            timeout = self.remote.opts.timeout
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=self.remote.ssl_ctx)
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            self.conns[key] = conn
        return conn

    def _drop(self, parts):
        conn = self.conns.pop((parts.scheme, parts.netloc), None)
        if conn is not None:
            conn.close()

    def get(self, url, first, last):
        """GET bytes first..last (inclusive; last None = to the end), following redirects.

        Returns (response, final_url, parts). The caller checks the status.
        """
        remote = self.remote
        auth_ok = True
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise FetchError(f"redirect to an unsupported URL: {remote.redact(url)}")
            if parts.netloc != remote.auth_netloc:
                auth_ok = False  # left the original host: never send the token again
            headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
            if first is not None:
                headers["Range"] = f"bytes={first}-{'' if last is None else last}"
            if remote.auth and auth_ok:
                headers["Authorization"] = remote.auth
            path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
            for attempt in (0, 1):
                conn = self._conn(parts)
                reused = conn.sock is not None
                try:
                    conn.request("GET", path, headers=headers)
                    resp = conn.getresponse()
                    break
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                    self._drop(parts)
                    if not reused or attempt:
                        raise FetchError(f"connection to {parts.netloc} failed: {exc}", retryable=True) from None
                except (OSError, http.client.HTTPException) as exc:
                    self._drop(parts)
                    raise FetchError(f"connection to {parts.netloc} failed: {exc}", retryable=True) from None
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                try:
                    resp.read()
                except (OSError, http.client.HTTPException):
                    self._drop(parts)
                if resp.will_close:
                    self._drop(parts)
                if not location:
                    raise FetchError(f"HTTP {resp.status} without Location from {remote.redact(url)}")
                url = urljoin(url, location)
                continue
            return resp, url, parts
        raise FetchError(f"more than {MAX_REDIRECTS} redirects from {remote.describe()}")

    def check(self, resp, url, parts):
        """Raise the right FetchError for a non-success response (consuming/closing it)."""
        remote = self.remote
        if resp.status in (200, 206):
            ctype = (resp.getheader("Content-Type") or "").lower()
            if ctype.startswith("text/html"):
                self._drop(parts)
                raise _html_error(url, remote.hint, remote.has_token, remote.redact)
            return
        retry_after = parse_retry_after(resp.getheader("Retry-After"))
        self._drop(parts)
        raise _status_error(resp.status, url, remote.hint, remote.has_token, remote.redact, retry_after=retry_after)

    def probe(self):
        resp, url, parts = self.get(self.remote.url, 0, 0)
        if resp.status == 416:  # empty file
            self._drop(parts)
            return Probe(size=0, ranges=False, url=url)
        self.check(resp, url, parts)
        etag = resp.getheader("ETag") or resp.getheader("Last-Modified")
        if resp.status == 206:
            crange = resp.getheader("Content-Range") or ""
            match = re.match(r"bytes\s+0-0/(\d+)", crange)
            try:
                resp.read()
            except (OSError, http.client.HTTPException):
                self._drop(parts)
            if match:
                return Probe(size=int(match.group(1)), ranges=True, url=url, etag=etag)
            return Probe(size=None, ranges=False, url=url, etag=etag)
        length = resp.getheader("Content-Length")
        self._drop(parts)  # a 200 means the whole body is on its way: hang up
        return Probe(size=int(length) if length and length.isdigit() else None, ranges=False, url=url, etag=etag)

    def open(self, probe, start, end):
        """Open [start, end) (end None = to EOF). Returns a reader with readinto() and close()."""
        url = probe.url or self.remote.url
        ranged = probe.ranges and (start > 0 or (end is not None and end < (probe.size or 0)))
        last = None if end is None else end - 1
        resp, url2, parts = self.get(url, start if ranged else None, last if ranged else None)
        if resp.status in (401, 403, 404, 410) and url != self.remote.url:
            # an expired CDN signature: resolve the original URL again
            self._drop(parts)
            resp, url2, parts = self.get(self.remote.url, start if ranged else None, last if ranged else None)
        self.check(resp, url2, parts)
        if ranged:
            crange = resp.getheader("Content-Range") or ""
            match = re.match(r"bytes\s+(\d+)-", crange)
            if resp.status != 206 or not match or int(match.group(1)) != start:
                self._drop(parts)
                raise FetchError(f"{self.remote.describe()} ignored the byte range request (HTTP {resp.status})", retryable=True)
        elif start:
            self._drop(parts)
            raise FetchError("cannot resume: the server does not support byte ranges")
        return _HttpReader(self, resp, parts)


class _HttpReader:
    def __init__(self, channel, resp, parts):
        self.channel, self.resp, self.parts = channel, resp, parts

    def readinto(self, view):
        try:
            return self.resp.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            self.channel._drop(self.parts)
            raise FetchError(f"connection dropped: {exc.__class__.__name__}", retryable=True) from None

    def close(self, complete):
        if not complete or not self.resp.isclosed():
            self.channel._drop(self.parts)


class S3Remote:
    """s3://bucket/key through boto3 (ranged get_object on a shared, thread-safe client)."""

    def __init__(self, bucket, key, opts, redact, client):
        self.bucket, self.key, self.opts, self.redact, self.client = bucket, key, opts, redact, client
        self.hint = "s3"

    def describe(self):
        return f"s3://{self.bucket}/{self.key}"

    def channel(self):
        return self

    def close(self):
        pass

    def _error(self, exc):
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                return FetchError(f"not found: {self.describe()} (check bucket and key)")
            if status in (401, 403) or code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return FetchError(
                    f"access denied to {self.describe()}: give the instance role s3:GetObject on it, or set "
                    "aws_access_key_id / aws_secret_access_key (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
                )
            retry = status == 429 or status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout")
            return FetchError(f"S3 error {code or status} for {self.describe()}", retryable=retry)
        return FetchError(f"S3 request for {self.describe()} failed: {exc.__class__.__name__}", retryable=True)

    def probe(self):
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None
        return Probe(size=int(head["ContentLength"]), ranges=True, etag=head.get("ETag"))

    def open(self, probe, start, end):
        last = (probe.size if end is None else end) - 1
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{last}")
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc) from None
        return _S3Reader(self, obj["Body"])


class _S3Reader:
    def __init__(self, remote, body):
        self.remote, self.body = remote, body

    def readinto(self, view):
        try:
            data = self.body.read(len(view))
        except (BotoCoreError, OSError) as exc:
            raise self.remote._error(exc) from None
        view[: len(data)] = data
        return len(data)

    def close(self, complete):
        self.body.close()


class FileRemote:
    """file:///path on the target (the role uploads operator-side files there first)."""

    hint = "file"

    def __init__(self, path):
        self.path = path

    def describe(self):
        return f"file://{self.path}"

    def channel(self):
        return self

    def close(self):
        pass

    def probe(self):
        try:
            return Probe(size=os.path.getsize(self.path), ranges=True)
        except OSError:
            raise FetchError(f"not found: {self.describe()} (upload it first or fix the path)") from None

    def open(self, probe, start, end):
        f = open(self.path, "rb")  # noqa: SIM115 - closed by the reader
        f.seek(start)
        return _FileReader(f, (probe.size if end is None else end) - start)


class _FileReader:
    def __init__(self, f, left):
        self.f, self.left = f, left

    def readinto(self, view):
        n = self.f.readinto(view[: min(len(view), self.left)])
        self.left -= n
        return n

    def close(self, complete):
        self.f.close()


# --------------------------------------------------------------------------- engine


class Syncer:
    def __init__(self, opts, redact=None):
        self.opts = opts
        self.redact = redact or Redactor(
            [opts.hf_token, opts.civitai_token, opts.gcs_token, opts.aws_secret_access_key, opts.aws_session_token]
        )
        self.log = Log(None if opts.check_mode else opts.log_path, self.redact, self._mkdirs)
        self._s3 = None
        self._s3_lock = threading.Lock()
        self._gcs_token = None
        self._gcs_lock = threading.Lock()
        self.overall = _Overall(self.log, 0, False, 0)

    # ---- sources

    def _s3_client(self):
        with self._s3_lock:
            if self._s3 is None:
                if not HAS_BOTO3:
                    raise SdcloudError("s3:// sources need boto3 on the server: pip install boto3")
                kwargs = {}
                if self.opts.aws_access_key_id:
                    kwargs = {
                        "aws_access_key_id": self.opts.aws_access_key_id,
                        "aws_secret_access_key": self.opts.aws_secret_access_key,
                        "aws_session_token": self.opts.aws_session_token,
                    }
                session = boto3.session.Session(region_name=self.opts.s3_region, **kwargs)
                config = BotoConfig(
                    max_pool_connections=max(10, self.opts.parallel * self.opts.connections),
                    connect_timeout=self.opts.timeout,
                    read_timeout=self.opts.timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                )
                self._s3 = session.client("s3", endpoint_url=self.opts.s3_endpoint, config=config, verify=self.opts.validate_certs)
            return self._s3

    def _gcs_bearer(self):
        """gcs_token / GOOGLE_OAUTH_ACCESS_TOKEN, else the metadata server's token, else anonymous."""
        with self._gcs_lock:
            if self._gcs_token is None:
                token = self.opts.gcs_token or ""
                if not token and self.opts.gcs_metadata_token and "googleapis.com" in self.opts.gcs_endpoint:
                    token = _metadata_token()
                    if token:
                        self.redact.secrets.append(token)
                self._gcs_token = token
            return f"Bearer {self._gcs_token}" if self._gcs_token else None

    def remote(self, model):
        src = model.source
        opts = self.opts
        parts = urlsplit(src)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            host = parts.netloc.lower()
            hf_host = urlsplit(opts.hf_endpoint).netloc.lower()
            civitai_host = urlsplit(opts.civitai_endpoint).netloc.lower()
            if host == hf_host:
                return HttpRemote(src, _bearer(opts.hf_token), "hf", opts, self.redact)
            if host == civitai_host or host.endswith(".civitai.com"):
                return HttpRemote(src, _bearer(opts.civitai_token), "civitai", opts, self.redact)
            return HttpRemote(src, None, None, opts, self.redact)
        if scheme == "hf":
            # hf://owner/repo/path/in/repo@revision
            body = src[len("hf://") :]
            body, _, revision = body.partition("@") if "@" in body.rsplit("/", 1)[-1] else (body, "", "")
            pieces = body.split("/")
            if len(pieces) < 3:
                raise SdcloudError(f"{model.rel}: hf:// source must be hf://owner/repo/path[@revision], got {src}")
            repo, path = "/".join(pieces[:2]), "/".join(pieces[2:])
            url = f"{opts.hf_endpoint.rstrip('/')}/{repo}/resolve/{quote(revision or 'main', safe='')}/{quote(path)}"
            return HttpRemote(url, _bearer(opts.hf_token), "hf", opts, self.redact)
        if scheme == "civitai":
            version = src[len("civitai://") :].strip("/")
            url = f"{opts.civitai_endpoint.rstrip('/')}/api/download/models/{quote(version, safe='')}"
            return HttpRemote(url, _bearer(opts.civitai_token), "civitai", opts, self.redact)
        if scheme == "s3":
            if not parts.netloc or not parts.path.strip("/"):
                raise SdcloudError(f"{model.rel}: s3:// source must be s3://bucket/key, got {self.redact(src)}")
            return S3Remote(parts.netloc, parts.path.lstrip("/"), opts, self.redact, self._s3_client())
        if scheme == "gs":
            if not parts.netloc or not parts.path.strip("/"):
                raise SdcloudError(f"{model.rel}: gs:// source must be gs://bucket/object, got {src}")
            obj = quote(parts.path.lstrip("/"), safe="")
            url = f"{opts.gcs_endpoint.rstrip('/')}/download/storage/v1/b/{parts.netloc}/o/{obj}?alt=media"
            return HttpRemote(url, self._gcs_bearer(), "gcs", opts, self.redact)
        if scheme == "file":
            return FileRemote(parts.path)
        raise SdcloudError(f"{model.rel}: unsupported source {self.redact(src)}: use https://, hf://, civitai://, s3://, gs:// or file://")

    # ---- retries

    def retrying(self, what, fn, progress=None):
        """Run fn() with bounded retries. Attempts that moved bytes do not count against `retries`."""
        failures = 0
        while True:
            before = progress() if progress else 0
            try:
                return fn()
            except FetchError as exc:
                if not exc.retryable:
                    raise
                if progress and progress() > before:
                    failures = 0
                failures += 1
                if failures > self.opts.retries:
                    raise FetchError(f"{self.redact(exc.msg)} (gave up after {self.opts.retries} retries)") from None
                delay = self.opts.backoff * (2 ** (failures - 1))
                delay = min(delay, 60.0) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
                self.log(f"{what}: {exc.msg}; retry {failures}/{self.opts.retries} in {delay:.1f}s")
                time.sleep(delay)

    # ---- plan

    def load_state(self):
        path = os.path.join(self.opts.models_dir, STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return data.get("files", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self, state):
        path = os.path.join(self.opts.models_dir, STATE_FILE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "files": state}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    def evaluate(self, model, state):
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
        out = []
        kinds = KINDS | set(self.opts.extra_kinds or ())
        root = self.opts.models_dir
        for kind in sorted(kinds):
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

    # ---- disk space

    def check_space(self, need):
        path = self.opts.models_dir
        while not os.path.exists(path):
            path = os.path.dirname(path) or "/"
        free = shutil.disk_usage(path).free
        if need > free:
            raise SdcloudError(
                f"not enough disk space in {self.opts.models_dir}: the downloads need {human_bytes(need)} "
                f"({need} bytes) but only {human_bytes(free)} ({free} bytes) is free; grow the disk "
                "(disk_size_gb) or drop models from sdcloud_models"
            )

    # ---- download

    def _mkdirs(self, path):
        missing = []
        while path and not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for p in reversed(missing):
            os.makedirs(p, exist_ok=True)
            if self.opts.uid != -1 or self.opts.gid != -1:
                os.chown(p, self.opts.uid, self.opts.gid)

    def download(self, model, remote, probe):
        """Fetch one file into its .part, verify, move into place. Returns the result dict fields."""
        opts = self.opts
        sidecar = model.partial + ".json"
        self._mkdirs(os.path.dirname(model.partial))
        ident = {"source": model.source_key, "sha256": model.sha256, "size": probe.size, "etag": probe.etag}
        done = []
        if probe.ranges and probe.size and os.path.exists(model.partial):
            try:
                with open(sidecar, encoding="utf-8") as f:
                    side = json.load(f)
                if side.get("ident") == ident:
                    done = merge_ranges(side.get("done", []))
            except (OSError, ValueError):
                done = []
        resumed = sum(e - s for s, e in done)
        fd = os.open(model.partial, os.O_RDWR | os.O_CREAT | (0 if done else os.O_TRUNC), 0o600)
        try:
            if probe.size is not None and probe.size > 0:
                os.ftruncate(fd, probe.size)
            state = _FileState(model, probe, done, self, fd=fd, sidecar=sidecar, ident=ident)
            started = time.monotonic()
            state.run(remote)
            seconds = time.monotonic() - started
            os.fsync(fd)
        finally:
            os.close(fd)
        fetched = state.fetched
        total = state.total_written()
        if probe.size is not None and total != probe.size:
            raise FetchError(f"download of {remote.describe()} ended at {total} of {probe.size} bytes")
        if model.size is not None and os.path.getsize(model.partial) != model.size:
            self._discard(model)
            raise FetchError(f"{remote.describe()} is {os.path.getsize(model.partial)} bytes, declared size is {model.size}")
        if total >= VERIFY_NOTE:
            self.log(f"{model.rel}: verifying sha256 of {human_bytes(total)}")
        actual = sha256_file(model.partial)
        if model.sha256 and actual != model.sha256:
            self._discard(model)
            raise FetchError(
                f"sha256 mismatch for {model.rel} from {remote.describe()}: expected {model.sha256}, got {actual}; "
                "the partial download was removed and the previous file (if any) left in place"
            )
        os.chmod(model.partial, opts.mode)
        if opts.uid != -1 or opts.gid != -1:
            os.chown(model.partial, opts.uid, opts.gid)
        self._mkdirs(os.path.dirname(model.dest))
        os.replace(model.partial, model.dest)
        _unlink(sidecar)
        st = os.stat(model.dest)
        entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": actual, "source": model.source_key}
        return {
            "bytes": fetched,
            "size": st.st_size,
            "seconds": round(seconds, 3),
            "mbps": round(fetched / MIB / seconds, 2) if seconds > 0 else None,
            "connections": state.connections_used,
            "resumed_from": resumed,
            "sha256": actual,
        }, entry

    def _discard(self, model):
        _unlink(model.partial)
        _unlink(model.partial + ".json")

    # ---- top level

    def sync(self, entries):
        opts = self.opts
        models = normalise_models(entries, opts, self.redact)
        wanted = {m.rel for m in models}
        state = self.load_state()
        before = self.present_files()
        self.log(f"sync start: {len(models)} models in {opts.models_dir}{' (check mode)' if opts.check_mode else ''}")

        with ThreadPoolExecutor(max_workers=max(1, opts.parallel)) as pool:
            decisions = list(pool.map(lambda m: self.evaluate(m, state), models))

        results, to_fetch, state_dirty = [], [], False
        for model, (action, reason, entry, _current) in zip(models, decisions, strict=True):
            res = {"name": model.name, "kind": model.kind, "path": model.dest, "source": model.source_key}
            if action == "ok":
                res.update(status="present", reason=reason, sha256=entry.get("sha256"))
            elif action == "adopt":
                res.update(status="present", reason=reason, sha256=entry.get("sha256"))
                state[model.rel] = entry
                state_dirty = True
            else:
                existed = os.path.exists(model.dest)
                res.update(
                    status="would_fetch" if opts.check_mode else "pending",
                    reason=reason,
                    action="replace" if existed else "create",
                )
                to_fetch.append((model, res))
            results.append(res)

        removed = self.prune_candidates(wanted) if opts.prune else []
        after = (before | wanted) - set(removed)
        diff = {
            "before_header": f"{opts.models_dir} (files)",
            "after_header": f"{opts.models_dir} (files)",
            "before": "".join(f"{p}\n" for p in sorted(before)),
            "after": "".join(
                f"{p}{'  (replaced)' if any(m.rel == p and r['action'] == 'replace' for m, r in to_fetch) else ''}\n" for p in sorted(after)
            ),
        }
        out = {"files": results, "removed": removed, "diff": diff}

        stale = [rel for rel in state if rel not in wanted and not os.path.exists(os.path.join(opts.models_dir, rel))]
        if opts.check_mode:
            out["changed"] = bool(to_fetch or removed)
            # what a real run would do besides changes: record verified files, forget gone ones, drop partials
            out["pending"] = bool(to_fetch or removed or state_dirty or stale or (opts.prune and self._stale_partials(wanted)))
            return out, []

        failures = []
        if to_fetch:
            self._mkdirs(opts.models_dir)
            declared = sum(m.size for m, _ in to_fetch if m.size)
            self.check_space(declared)
            probes = self._probe_all(to_fetch, failures)
            need = 0
            for model, _res in to_fetch:
                if model.rel in probes:
                    _remote, probe = probes[model.rel]
                    size = probe.size if probe.size is not None else (model.size or 0)
                    need += max(0, size - _partial_done(model, probe))
            self.check_space(need)
            unknown = any(probes[m.rel][1].size is None for m, _ in to_fetch if m.rel in probes)
            self.overall = _Overall(self.log, need, unknown, len(probes))
            with ThreadPoolExecutor(max_workers=max(1, opts.parallel)) as pool:
                futures = [
                    (model, res, pool.submit(self._fetch_one, model, res, *probes[model.rel]))
                    for model, res in to_fetch
                    if model.rel in probes
                ]
                for model, res, fut in futures:
                    entry = fut.result()
                    if entry:
                        state[model.rel] = entry
                        state_dirty = True
                    else:
                        failures.append(f"{model.rel}: {res['error']}")

        for rel in removed:
            _unlink(os.path.join(opts.models_dir, rel))
            state.pop(rel, None)
            state_dirty = True
            self.log(f"removed {rel} (prune)")
        if opts.prune:
            self._prune_partials(wanted)
        for rel in stale:
            state.pop(rel)
            state_dirty = True
        if state_dirty:
            self._mkdirs(opts.models_dir)
            self.save_state(state)

        fetched = [r for r in results if r.get("status") == "fetched"]
        out["changed"] = bool(fetched or removed)
        out["pending"] = bool(failures)
        out["bytes"] = sum(r["bytes"] for r in fetched)
        self.log(f"sync done: {len(fetched)} fetched ({human_bytes(out['bytes'])}), {len(removed)} removed, {len(failures)} failed")
        return out, failures

    def _probe_all(self, to_fetch, failures):
        probes = {}

        def one(item):
            model, res = item
            try:
                remote = self.remote(model)
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
            info, entry = self.download(model, remote, probe)
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

    def _stale_partials(self, wanted):
        """Partial downloads (and their sidecars) of files no longer declared."""
        root = os.path.join(self.opts.models_dir, PARTIAL_DIR)
        out = []
        for dirpath, _dirs, filenames in os.walk(root):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if rel.removesuffix(".json").removesuffix(".part") not in wanted:
                    out.append(full)
        return out

    def _prune_partials(self, wanted):
        for full in self._stale_partials(wanted):
            _unlink(full)


class _Overall:
    """Bytes of this run's downloads, all files together: the "all:" progress line."""

    def __init__(self, log, total, unknown, files):
        self.log, self.total, self.unknown, self.files = log, total, unknown, files
        self.lock = threading.Lock()
        self.fetched = self.done = self.failed = 0
        self.t0 = time.monotonic()
        self.last = 0.0  # the first file's first line brings the first one

    def add(self, n):
        with self.lock:
            self.fetched += n

    def file_done(self, ok):
        with self.lock:
            self.done += 1
            self.failed += 0 if ok else 1

    def report(self):
        if self.files < 2:
            return  # the file's own line says it all
        now = time.monotonic()
        with self.lock:
            if now - self.last < LOG_EVERY:
                return
            self.last = now
            fetched, done, failed = self.fetched, self.done, self.failed
        rate = fetched / max(now - self.t0, 1e-6)
        left = max(0, self.total - fetched)
        eta = human_seconds(left / rate) if rate > 0 else "?"
        pct = f" ({100 * fetched / self.total:.1f}%)" if self.total else ""
        self.log(
            f"all: {human_bytes(fetched)}/{human_bytes(self.total)}{'+' if self.unknown else ''}{pct} "
            f"{rate / MIB:.1f} MiB/s ETA {eta}, {done} of {self.files} files done" + (f" ({failed} failed)" if failed else "")
        )


class _FileState:
    """Shared state of one file's download: segments, done ranges, progress, sidecar."""

    def __init__(self, model, probe, done, syncer, *, fd, sidecar, ident):
        self.model, self.probe, self.syncer, self.fd = model, probe, syncer, fd
        self.sidecar, self.ident = sidecar, ident
        resumed = sum(e - s for s, e in done)
        self.lock = threading.Lock()
        self.prev_done = done
        self.segments = []  # all segments ever created: [start, pos, end]
        self.pending = []
        self.fetched = 0
        self.resumed = resumed
        self.connections_used = 0
        self.abort = threading.Event()
        self.error = None
        self.last_save = time.monotonic()
        self.last_log = time.monotonic()
        self.t0 = time.monotonic()
        self.streaming = probe.size is None

    def total_written(self):
        if self.streaming:
            return self.fetched
        return sum(e - s for s, e in self._done())

    def _done(self):
        return merge_ranges(self.prev_done + [[s[0], s[1]] for s in self.segments])

    def save_sidecar(self, sync=True):
        if not self.probe.ranges or self.streaming:
            return
        if sync:
            os.fdatasync(self.fd)
        tmp = self.sidecar + ".tmp"
        with self.lock:
            data = {"ident": self.ident, "done": self._done()}
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.sidecar)

    def run(self, remote):
        opts = self.syncer.opts
        size = self.probe.size
        if self.streaming:
            pieces = [[0, None]]
            workers = 1
        else:
            holes = gaps(self.prev_done, size)
            multi = self.probe.ranges and size >= opts.split_threshold
            workers = max(1, opts.connections) if multi else 1
            pieces = split_gaps(holes, workers) if multi else holes
            workers = min(workers, max(1, len(pieces)))
        for start, end in pieces:
            seg = [start, start, end]
            self.segments.append(seg)
            self.pending.append(seg)
        self.connections_used = workers if pieces else 0
        threads = [threading.Thread(target=self._worker, args=(remote,), daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with contextlib.suppress(OSError):
            self.save_sidecar()
        if self.error:
            raise self.error
        self._progress(final=True)

    def _take(self):
        """Next segment: a pending one, else steal the back half of the largest one in flight."""
        with self.lock:
            if self.pending:
                return self.pending.pop(0)
            if self.streaming or not self.probe.ranges:
                return None
            best = max(self.segments, key=lambda s: s[2] - s[1], default=None)
            if best is None or best[2] - best[1] < 2 * max(MIN_PIECE, BLOCK):
                return None
            mid = best[1] + (best[2] - best[1]) // 2
            seg = [mid, mid, best[2]]
            best[2] = mid
            self.segments.append(seg)
            return seg

    def _worker(self, remote):
        chan = remote.channel()
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        try:
            while not self.abort.is_set():
                seg = self._take()
                if seg is None:
                    return
                self.syncer.retrying(
                    f"{self.model.rel} [{seg[1]}-]",
                    lambda seg=seg: self._fetch_segment(chan, seg, view),
                    progress=lambda seg=seg: seg[1],
                )
        except SdcloudError as exc:
            with self.lock:
                if self.error is None:
                    self.error = exc
            self.abort.set()
        except OSError as exc:
            with self.lock:
                if self.error is None:
                    self.error = SdcloudError(f"writing {self.model.partial} failed: {exc}")
            self.abort.set()
        finally:
            chan.close()

    def _fetch_segment(self, chan, seg, view):
        with self.lock:
            if seg[1] and not self.probe.ranges:  # no byte ranges: a retry starts over
                self.fetched -= seg[1]
                self.syncer.overall.add(-seg[1])
                seg[1] = 0
            start, end = seg[1], seg[2]
        if end is not None and start >= end:
            return
        reader = chan.open(self.probe, start, end)
        complete = False
        try:
            while not self.abort.is_set():
                with self.lock:
                    want = len(view) if seg[2] is None else min(len(view), seg[2] - seg[1])
                if want <= 0:
                    complete = seg[2] == end  # not shortened by a steal: the response is fully read
                    return
                n = reader.readinto(view[:want])
                if n == 0:
                    if seg[2] is None:  # unknown size: EOF is the end
                        complete = True
                        return
                    raise FetchError(f"connection dropped at byte {seg[1]} of {chan.remote.describe()}", retryable=True)
                with self.lock:
                    pos = seg[1]
                    if seg[2] is not None:
                        n = min(n, seg[2] - pos)  # the range was split meanwhile: the rest is another's
                    seg[1] += n
                    self.fetched += n
                self.syncer.overall.add(n)
                os.pwrite(self.fd, view[:n], pos)
                self._progress()
        finally:
            reader.close(complete)

    def _progress(self, final=False):
        now = time.monotonic()
        if not final and now - self.last_log < LOG_EVERY:
            return
        with self.lock:
            if not final and now - self.last_log < LOG_EVERY:
                return
            self.last_log = now
            save = now - self.last_save >= SIDECAR_EVERY
            if save:
                self.last_save = now
        elapsed = max(now - self.t0, 1e-6)
        rate = self.fetched / elapsed
        have = self.resumed + self.fetched
        size = self.probe.size
        if size:
            eta = human_seconds((size - have) / rate) if rate > 0 else "?"
            line = (
                f"{self.model.rel}: {human_bytes(have)}/{human_bytes(size)} ({100 * have / size:.1f}%) "
                f"{rate / MIB:.1f} MiB/s ETA {eta} connections={self.connections_used}"
            )
        else:
            line = f"{self.model.rel}: {human_bytes(have)} {rate / MIB:.1f} MiB/s"
        self.syncer.log(line)
        self.syncer.overall.report()
        if save:
            with contextlib.suppress(OSError):
                self.save_sidecar()


def _partial_done(model, probe):
    try:
        with open(model.partial + ".json", encoding="utf-8") as f:
            return sum(e - s for s, e in merge_ranges(json.load(f).get("done", [])))
    except (OSError, ValueError, TypeError):
        return 0


def _bearer(token):
    return f"Bearer {token}" if token else None


def _unlink(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _metadata_token():
    """Access token of the VM's service account from the GCE metadata server ('' when not on GCE)."""
    try:
        conn = http.client.HTTPConnection("169.254.169.254", 80, timeout=1.0)
        conn.request(
            "GET",
            "/computeMetadata/v1/instance/service-accounts/default/token",
            headers={"Metadata-Flavor": "Google"},
        )
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status == 200:
            return json.loads(body).get("access_token", "")
    except (OSError, ValueError, http.client.HTTPException):
        pass
    return ""
