"""One file's download: its byte ranges split over several connections (work stealing when one finishes early),
the sidecar of completed ranges that lets a later run resume, the progress lines (per file and for all files),
and the sha256 check before the file moves to its final name.

The caller (download.Syncer) is the context: ``opts``, ``log``, ``overall``, ``retrying`` and ``mkdirs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time

from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.model_state import sha256_file
from ansible.module_utils.sdcloud.remotes import FetchError
from ansible.module_utils.sdcloud.units import MIB, human_bytes, human_seconds

BLOCK = 256 * 1024  # bytes per read/pwrite
MIN_PIECE = 1 * MIB  # smallest range a connection is given (also the work-stealing floor)
MAX_RETRY_AFTER = 120.0  # seconds: the most a Retry-After header can make us wait
SIDECAR_EVERY = 5.0  # seconds between sidecar saves during a download
LOG_EVERY = 2.0  # seconds between progress lines per file (and for all files)
VERIFY_NOTE = 64 * MIB  # files from this size get a "verifying" line before their sha256 is computed


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


def retrying(ctx, what, fn, progress=None):
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
            if failures > ctx.opts.retries:
                raise FetchError(f"{ctx.redact(exc.msg)} (gave up after {ctx.opts.retries} retries)") from None
            delay = ctx.opts.backoff * (2 ** (failures - 1))
            delay = min(delay, 60.0) * (0.5 + random.random() / 2)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER))
            ctx.log(f"{what}: {exc.msg}; retry {failures}/{ctx.opts.retries} in {delay:.1f}s")
            time.sleep(delay)


def fetch_file(ctx, model, remote, probe):
    """Fetch one file into its .part, verify, move into place. Returns the result dict fields."""
    opts = ctx.opts
    sidecar = model.partial + ".json"
    ctx.mkdirs(os.path.dirname(model.partial))
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
        state = FileState(model, probe, done, ctx, fd=fd, sidecar=sidecar, ident=ident)
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
        discard(model)
        raise FetchError(f"{remote.describe()} is {os.path.getsize(model.partial)} bytes, declared size is {model.size}")
    if total >= VERIFY_NOTE:
        ctx.log(f"{model.rel}: verifying sha256 of {human_bytes(total)}")
    actual = sha256_file(model.partial)
    if model.sha256 and actual != model.sha256:
        discard(model)
        raise FetchError(
            f"sha256 mismatch for {model.rel} from {remote.describe()}: expected {model.sha256}, got {actual}; "
            "the partial download was removed and the previous file (if any) left in place"
        )
    os.chmod(model.partial, opts.mode)
    if opts.uid != -1 or opts.gid != -1:
        os.chown(model.partial, opts.uid, opts.gid)
    ctx.mkdirs(os.path.dirname(model.dest))
    os.replace(model.partial, model.dest)
    unlink(sidecar)
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


def discard(model):
    unlink(model.partial)
    unlink(model.partial + ".json")


class Overall:
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


class FileState:
    """Shared state of one file's download: segments, done ranges, progress, sidecar."""

    def __init__(self, model, probe, done, ctx, *, fd, sidecar, ident):
        self.model, self.probe, self.ctx, self.fd = model, probe, ctx, fd
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
        opts = self.ctx.opts
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
                self.ctx.retrying(
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
                self.ctx.overall.add(-seg[1])
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
                self.ctx.overall.add(n)
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
        self.ctx.log(line)
        self.ctx.overall.report()
        if save:
            with contextlib.suppress(OSError):
                self.save_sidecar()


def partial_done(model, probe):
    try:
        with open(model.partial + ".json", encoding="utf-8") as f:
            return sum(e - s for s, e in merge_ranges(json.load(f).get("done", [])))
    except (OSError, ValueError, TypeError):
        return 0



def unlink(path):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

