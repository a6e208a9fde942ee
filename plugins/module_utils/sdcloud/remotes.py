"""Where a model's bytes come from: one Remote per source (http(s) with Hugging Face / Civitai / GCS credentials,
s3:// through boto3, file:// on the machine), each with probe() (size, byte ranges) and open() (a reader of one
byte range), and the errors that name the fix.

Remotes resolves a declared source to its Remote and holds the credentials: a token goes only to its own host,
never after a redirect elsewhere.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import json
import os
import re
import ssl
import threading
import time
import traceback
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.model_list import parse_hf

try:
    import boto3
    from botocore.config import Config as BotoConfig
    from botocore.exceptions import BotoCoreError, ClientError

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError:
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = traceback.format_exc()

MAX_REDIRECTS = 10
USER_AGENT = "sdcloud-model-sync/1.0"


class FetchError(SdcloudError):
    """A failed request. ``retryable`` errors are retried with backoff; ``retry_after`` in seconds."""

    def __init__(self, msg, retryable=False, retry_after=None):
        super().__init__(msg)
        self.retryable = retryable
        self.retry_after = retry_after



@dataclasses.dataclass
class Probe:
    size: int | None
    ranges: bool
    url: str | None = None  # final URL after redirects (http sources)
    etag: str | None = None



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



def _bearer(token):
    return f"Bearer {token}" if token else None




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


class Remotes:
    """Resolves a model's source to its Remote; one boto3 client and one GCS token for all files."""

    def __init__(self, opts, redact):
        self.opts = opts
        self.redact = redact
        self._s3 = None
        self._s3_lock = threading.Lock()
        self._gcs_token = None
        self._gcs_lock = threading.Lock()

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

    def __call__(self, model):
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
            # hf://owner/repo/path/in/repo@revision (model_list refused one without @revision)
            try:
                repo, path, revision = parse_hf(src)
            except ValueError:
                raise SdcloudError(f"{model.rel}: hf:// source must be hf://owner/repo/path@revision, got {src}") from None
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
