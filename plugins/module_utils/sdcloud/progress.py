"""Progress of a long step that runs in the background on the machine, read by the job_progress module.

The play starts the step as an async task (``async: N, poll: 0``) whose output goes to a log on the
machine, then polls it with job_progress in an ``until`` loop. Each poll waits a few seconds for the job,
reads what the step wrote to its log since the previous poll and turns it into a few plain lines for the
terminal (the sdcloud_progress callback prints them while the loop runs):

- ``model_sync``: the model_sync log (bytes, rate, ETA per file and for all files), the latest line per
  file of each poll and every event (fetching, done, retry, failed);
- ``uv``: ``uv pip install``'s output; with the plan (``uv pip install --dry-run``'s output) it says how
  many packages are to install, which large wheels are being fetched, and while installing how many are in
  place in the venv;
- ``pip``: pip's ``--log`` file (what is being collected and downloaded, then installed);
- ``apt``: dpkg's terminal log (/var/log/apt/term.log): downloading, unpacking, setting up, the DKMS build
  of a kernel module, the initramfs;
- ``lines``: the log's new lines as they are.

Every line passes through download.Redactor (secret query parameters, user:password@ in URLs, bearer
tokens): the one owner of redaction, shared with model_sync.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import time

from ansible.module_utils.sdcloud.base import SdcloudError
from ansible.module_utils.sdcloud.download import Redactor, human_bytes, human_seconds

FORMATS = ("lines", "model_sync", "uv", "pip", "apt")
MAX_LINES = 30  # lines one poll returns at most (the rest is counted)
MAX_READ = 8 * 1024 * 1024  # bytes of a log one poll reads at most (the end of a long log)

redact = Redactor()


# --------------------------------------------------------------------------- the job


def job_status(results_file):
    """(finished, result) of an async job, read from its results file as async_status reads it."""
    try:
        with open(results_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise SdcloudError(f"no async job result at {results_file}: the job never started, or its result was collected") from None
    except ValueError:
        return False, None  # written with a rename, so this is a job that has not written anything yet
    if "started" not in data:
        return True, data
    return bool(data.get("finished")), None


def job_failed(result):
    rc = result.get("rc")
    return bool(result.get("failed")) or (rc is not None and rc != 0)


def scrub(value):
    """The job's result as the play may show it: without its arguments (they may carry tokens), redacted."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k != "invocation"}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


# --------------------------------------------------------------------------- the log


def read_log(path, start, seen, finished):
    """(text since ``start``, text since ``seen``, new ``seen``, ``start``): whole lines only while the job runs.
    A log shorter than ``start`` was rotated or truncated since the play noted its end: it is read from 0."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "", "", seen, start
    if size < max(start, seen):
        start = seen = 0
    seen = max(seen, start)
    begin = max(start, size - MAX_READ)
    with open(path, "rb") as f:
        f.seek(begin)
        data = f.read(size - begin)
    if not finished:
        cut = data.rfind(b"\n") + 1
        data = data[:cut]
    end = begin + len(data)
    text = data.decode("utf-8", errors="replace")
    new = data[max(0, seen - begin):].decode("utf-8", errors="replace") if end > seen else ""
    return text, new, max(seen, end), start


def tail(text, count=15):
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [redact(ln) for ln in lines[-count:]]


# --------------------------------------------------------------------------- formats


_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[,.]\d+)? ")
_SYNC_PROGRESS = re.compile(r" MiB/s(?: ETA |$)")


def model_sync_lines(text, new, ctx):
    """Events as they come; of the progress lines only the latest per file (and for all files)."""
    out, latest = [], {}
    for raw in new.splitlines():
        line = _STAMP.sub("", raw).strip()
        if not line:
            continue
        key = line.split(": ", 1)[0]
        if _SYNC_PROGRESS.search(line):
            latest[key] = len(out)
            out.append(line)
        else:
            latest.pop(key, None)
            out.append(line)
    keep = set(latest.values())
    return [ln for i, ln in enumerate(out) if not _SYNC_PROGRESS.search(ln) or i in keep]


_SIZE = re.compile(r"^([\d.]+)\s*([KMGT]?i?B)$")
_UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def size_bytes(text):
    m = _SIZE.match(text.strip())
    return int(float(m.group(1)) * _UNITS.get(m.group(2).upper(), 1)) if m else 0


def iec(n):
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{int(n)}B"


def pep503(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def venv_distributions(venv):
    """{normalised name: version} of what is installed in the venv now (its .dist-info folders)."""
    out = {}
    if not venv:
        return out
    for path in glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "*.dist-info")):
        stem = os.path.basename(path)[: -len(".dist-info")]
        name, _, version = stem.partition("-")
        out[pep503(name)] = version
    return out


def _names(items, count=3):
    shown = ", ".join(items[:count])
    return shown + (f", +{len(items) - count} more" if len(items) > count else "")


_UV_PLAN = re.compile(r"^ ([+-]) (\S+?)==(\S+)")
_UV_WOULD = re.compile(r"^Would (download|install|uninstall) (\d+) packages?")
_UV_EVENT = re.compile(r"^(Resolved|Prepared|Uninstalled|Installed|Audited|Checked) (\d+) packages? in (\S+)")
_UV_DOWNLOADING = re.compile(r"^Downloading (\S+) \(([^)]+)\)")
_UV_DOWNLOADED = re.compile(r"^ Downloaded (\S+)")
_UV_BUILT = re.compile(r"^ Built (\S+)")


def uv_plan(plan):
    """What ``uv pip install --dry-run`` said it would do."""
    out = {"install": [], "uninstall": [], "download": None}
    for line in (plan or "").splitlines():
        m = _UV_PLAN.match(line)
        if m:
            out["install" if m.group(1) == "+" else "uninstall"].append((m.group(2), m.group(3)))
            continue
        m = _UV_WOULD.match(line)
        if m and m.group(1) == "download":
            out["download"] = int(m.group(2))
    return out


def uv_lines(text, new, ctx):
    plan = uv_plan(ctx.get("plan"))
    todo = len(plan["install"])
    sizes, fetched, done = {}, [], {}
    for line in text.splitlines():
        m = _UV_DOWNLOADING.match(line)
        if m:
            sizes[m.group(1)] = m.group(2)
            continue
        m = _UV_DOWNLOADED.match(line)
        if m:
            fetched.append(m.group(1))
            continue
        m = _UV_EVENT.match(line)
        if m:
            done[m.group(1)] = (int(m.group(2)), m.group(3))
    out = []
    for line in new.splitlines():
        m = _UV_DOWNLOADED.match(line)
        if m:
            name = m.group(1)
            k = fetched.index(name) + 1 if name in fetched else len(fetched)
            out.append(f"uv: downloaded {name} ({sizes.get(name, '?')}), large wheel {k} of {len(sizes)}")
        elif _UV_EVENT.match(line) or _UV_BUILT.match(line):
            out.append("uv: " + line.strip()[0].lower() + line.strip()[1:])
        elif line.startswith(("error:", "warning:", "  ×", "  ╰─▶", "  help:")):
            out.append("uv: " + line.strip())
    if ctx.get("finished") or "Installed" in done:
        return out
    what = f"{todo} packages" if todo else "the packages"
    # uv says nothing between its steps: "Resolved", the downloads ("Prepared", only when something was
    # fetched or built), "Installed". Packages its cache holds are not fetched: with none to download the
    # step after the resolution is the install.
    fetch = plan["download"] if plan["download"] is not None else (None if todo else 1)
    if "Resolved" not in done:
        status = f"uv: resolving {what}"
    elif "Prepared" not in done and (sizes or fetch):
        total = sum(size_bytes(s) for s in sizes.values())
        have = sum(size_bytes(sizes[n]) for n in fetched if n in sizes)
        pending = [n for n in sizes if n not in fetched]
        status = f"uv: fetching {fetch} of the {todo} packages to install" if todo and fetch else "uv: fetching the packages"
        if sizes:
            status += f": large wheels {len(fetched)} of {len(sizes)} done ({iec(have)} of {iec(total)})" + (
                f", now {_names(pending)}" if pending else ""
            )
    else:
        present = venv_distributions(ctx.get("venv"))
        missing = [n for n, v in plan["install"] if present.get(pep503(n)) != v]
        status = f"uv: installing {what} into the venv"
        if todo and ctx.get("venv"):
            status += f": {todo - len(missing)} of {todo} in place" + (f", {len(missing)} to go ({_names(missing)})" if missing else "")
    out.append(f"{status} [{human_seconds(ctx.get('elapsed') or 0)}]")
    return out


_PIP_COLLECTING = re.compile(r"^Collecting (\S+)")
_PIP_DOWNLOADING = re.compile(r"^Downloading (\S+) \(([^)]+)\)")
_PIP_SATISFIED = re.compile(r"^Requirement already satisfied: (\S+)")
_PIP_INSTALLING = re.compile(r"^Installing collected packages: (.+)$")
_PIP_INSTALLED = re.compile(r"^Successfully installed (.+)$")
_PIP_UNINSTALLED = re.compile(r"^Successfully uninstalled (\S+)")


def _pip_messages(text):
    for raw in text.splitlines():
        yield _STAMP.sub("", raw).strip()


def _file_name(url):
    return redact(url.rsplit("/", 1)[-1].split("#", 1)[0].replace("%2B", "+"))


def pip_lines(text, new, ctx):
    collecting, satisfied, downloads, installing = [], 0, [], None
    for line in _pip_messages(text):
        if m := _PIP_COLLECTING.match(line):
            collecting.append(m.group(1))
        elif _PIP_SATISFIED.match(line):
            satisfied += 1
        elif m := _PIP_DOWNLOADING.match(line):
            downloads.append((_file_name(m.group(1)), m.group(2)))
        elif m := _PIP_INSTALLING.match(line):
            installing = [n.strip() for n in m.group(1).split(",") if n.strip()]
    out = []
    for line in _pip_messages(new):
        if m := _PIP_DOWNLOADING.match(line):
            out.append(f"pip: downloading {_file_name(m.group(1))} ({m.group(2)})")
        elif m := _PIP_UNINSTALLED.match(line):
            out.append(f"pip: uninstalled {m.group(1)}")
        elif m := _PIP_INSTALLED.match(line):
            out.append(f"pip: installed {len(m.group(1).split())} packages: {_names(m.group(1).split(), 6)}")
        elif line.startswith("ERROR:"):
            out.append("pip: " + redact(line))
    if ctx.get("finished") or any(_PIP_INSTALLED.match(ln) for ln in _pip_messages(text)):
        return out
    if installing is None:
        total = sum(size_bytes(s.replace(" ", "")) for _f, s in downloads)
        status = (
            f"pip: collecting requirements: {len(collecting)} so far ({satisfied} already satisfied), "
            f"{len(downloads)} downloaded ({human_bytes(total)})" + (f", now {collecting[-1]}" if collecting else "")
        )
    else:
        status = f"pip: installing {len(installing)} packages: {_names(installing)}"
    out.append(f"{status} [{human_seconds(ctx.get('elapsed') or 0)}]")
    return out


_APT_PHASES = (
    (re.compile(r"^update-initramfs: Generating (\S+)"), "rebuilding the initramfs ({0})"),
    (re.compile(r"^(?:Building initial module for|Building for|Building module:?) ?(.*)$"), "building the kernel module with DKMS ({0})"),
    (re.compile(r"^Loading new (\S+) DKMS files"), "registering the DKMS module {0}"),
    (re.compile(r"^Processing triggers for (\S+)"), "processing triggers ({0})"),
    (re.compile(r"^Setting up (\S+)"), "setting up {0}"),
    (re.compile(r"^Unpacking (\S+)"), "unpacking {0}"),
)


def apt_lines(text, new, ctx):
    phase, unpacked, set_up = None, 0, 0
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Unpacking "):
            unpacked += 1
        elif line.startswith("Setting up "):
            set_up += 1
        for pattern, label in _APT_PHASES:
            m = pattern.match(line)
            if m:
                phase = label.format(*(g.strip() or "?" for g in m.groups()))
                break
    if ctx.get("finished"):
        return [f"apt: done: {unpacked} packages unpacked, {set_up} set up"] if unpacked or set_up else []
    if phase is None:
        phase = "downloading packages"
    elif phase.startswith(("unpacking", "setting up")):
        phase += f" ({unpacked} unpacked, {set_up} set up so far)"
    return [f"apt: {phase} [{human_seconds(ctx.get('elapsed') or 0)}]"]


def plain_lines(text, new, ctx):
    return [ln.rstrip() for ln in new.splitlines() if ln.strip()]


PARSERS = {"lines": plain_lines, "model_sync": model_sync_lines, "uv": uv_lines, "pip": pip_lines, "apt": apt_lines}


# --------------------------------------------------------------------------- one poll


def poll(results_file, *, log=None, log_offset=0, fmt="lines", wait=5.0, plan="", venv=None, clock=time.time, sleep=time.sleep):
    """Wait up to ``wait`` s for the job, then report. Returns the module's result (see job_progress RETURN)."""
    state_file = results_file + ".progress"
    state = {}
    with contextlib.suppress(OSError, ValueError), open(state_file, encoding="utf-8") as f:
        state = json.load(f)
    deadline = clock() + max(0.0, wait)
    finished, result = job_status(results_file)
    if "started" not in state:
        # while the job runs, its results file holds only the start record: its mtime is the job's start
        state["started"] = os.path.getmtime(results_file) if not finished else clock()
    while not finished and clock() < deadline:
        sleep(min(0.25, max(0.0, deadline - clock())))
        finished, result = job_status(results_file)
    elapsed = max(0.0, clock() - state["started"])
    lines = []
    if log:
        start, seen = int(state.get("start", log_offset or 0)), int(state.get("seen", 0))
        text, new, state["seen"], state["start"] = read_log(log, start, seen, finished)
        ctx = {"finished": finished, "elapsed": elapsed, "plan": plan, "venv": venv}
        lines = [redact(ln) for ln in PARSERS[fmt](text, new, ctx)]
    if not lines and not finished:
        lines = [f"still working [{human_seconds(elapsed)}]"]
    if len(lines) > MAX_LINES:
        lines = lines[: MAX_LINES - 1] + [f"(and {len(lines) - MAX_LINES + 1} more lines in {log})"]
    out = {"changed": False, "finished": finished, "progress": lines, "elapsed": round(elapsed, 1)}
    if not finished:
        with open(state_file, "w", encoding="utf-8") as f:
            json.dump(state, f)
        return out
    job = scrub(result)
    for path in (results_file, state_file):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    out.update(job=job, changed=bool(job.get("changed")))
    if "rc" in job:
        out["rc"] = job["rc"]
    if job_failed(job):
        why = job.get("msg") or "the job failed"
        if "rc" in job:
            why += f" (rc={job['rc']})"
        if log:
            text = read_log(log, int(state.get("start", log_offset or 0)), 0, True)[0]
            if text.strip():
                why += f"; the end of {log}:\n" + "\n".join(tail(text))
        out.update(failed=True, msg=redact(why))
    return out
