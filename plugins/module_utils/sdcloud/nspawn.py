"""Disposable Debian 12 machines on this computer: systemd-nspawn on a private bridge.

One implementation serves three users: the `local` provider (module `local_machine`), the
molecule driver (molecule/*/create.yml and destroy.yml use the same module) and the end-to-end
tests (through bin/sdcloud-testhost). A machine is reached over SSH like a cloud VM:

- base tree: debootstrap'ed once into BASE_DIR (cached), read-only lower layer of an overlayfs;
- the machine's "disk" is its overlay upper dir, kept across stop/start, removed by destroy;
- network: a bridge of our own (10.87.<net>.0/24), the machine gets a static address on it and
  no route out; apt and pip reach their registries only through a tinyproxy we start on the bridge
  address (stopped, by PID, when the last machine is destroyed);
- a small supervisor script restarts nspawn when the machine reboots (nspawn exits 133), so
  ansible.builtin.reboot works; SIGTERM to the supervisor powers the machine off cleanly.

Everything we start is recorded by PID in the state dir and stopped by that PID (never by name).
Needs root, debootstrap, systemd-container, tinyproxy (see `packages()` and `install_packages()`).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

PACKAGES = ("debootstrap", "systemd-container", "tinyproxy", "zstd", "apt-cacher-ng")
BASE_INCLUDE = (
    "systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,python3,python3-venv,python3-apt,"
    "python3-packaging,sudo,iproute2,ca-certificates,procps,git"
)
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = os.environ.get("SDCLOUD_CACHE_DIR", "/var/cache/sdcloud")
BASE_DIR = os.path.join(CACHE_DIR, "base-" + SUITE)
BASE_VERSION = "3"  # bump when the base tree recipe changes: a stale cache is rebuilt
PROXY_PORT = 8888
# Packages the machines download (uv's cache: the ~3 GB PyTorch stack) are kept once on this computer
# and shared by every local machine, bind-mounted at the same path inside. Only root writes it, in each
# machine (the roles run uv as root), so one cache serves machines whose users' uids differ.
PACKAGE_CACHE = os.path.join(CACHE_DIR, "uv")
# pip's cache (AUTOMATIC1111 installs with pip, as its own user), shared the same way, at PIP_CACHE inside. pip
# runs as the app's user, whose uid may differ between machines, so the cache is writable by all (sticky, like
# /tmp; a user that cannot write an entry another one made just does not cache it); on this computer it sits in a
# directory only root enters, so no user here can put a package into it.
PIP_CACHE = os.path.join(CACHE_DIR, "pip")
PIP_CACHE_HOST = os.path.join(PIP_CACHE, "shared")
# The Debian packages the machines download are kept once on this computer too: one apt-cacher-ng (Debian's
# caching proxy for package archives) serves every machine of every net, listening on this computer's loopback
# only; each net's tinyproxy hands it the requests for the Debian archive (tinyproxy's Upstream rule), so the
# machines' apt settings stay what they are. A second install of a package is local, and when the archive does
# not answer at the cache's start the packages already cached are still served (see AptCache).
APT_CACHE_DIR = os.path.join(CACHE_DIR, "apt")
APT_CACHE_PORT = 3149  # not apt-cacher-ng's usual 3142, which a computer may use for its own
# The disk a machine needs (GB free under the state dir when it is created): ComfyUI's Python
# environment takes ~7 GB, the shared package cache ~4 GB per PyTorch version, plus the models.
MIN_FREE_GB = 20
# Nets 0-99: bridge sdcloud<net>, subnet 10.87.<net>.0/24, host-side veths vb-sdc<net>-<host> (at most 12 of
# the 15 characters an interface name may have).
MAX_NET = 99
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")

SUPERVISOR = """#!/bin/bash
# sdcloud machine supervisor (written by sdcloud nspawn.py): runs systemd-nspawn, starts it
# again when the machine reboots (exit 133), and forwards SIGTERM (nspawn then powers it off).
stopping=0
trap 'stopping=1; kill -TERM "$child" 2>/dev/null' TERM INT
while :; do
  systemd-nspawn "$@" &
  child=$!
  while :; do
    wait "$child"; rc=$?
    kill -0 "$child" 2>/dev/null || break
  done
  if [ "$stopping" = 0 ] && [ "$rc" = 133 ]; then continue; fi
  exit "$rc"
done
"""


class MachineError(Exception):
    pass


def _run(cmd, check=True, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if check and res.returncode != 0:
        raise MachineError("command failed (%d): %s\n%s" % (res.returncode, " ".join(cmd), (res.stderr or res.stdout)[-2000:]))
    return res


def _proc_start(pid):
    """When process `pid` started (clock ticks since boot), None when there is none (or a zombie).
    A PID plus its start time names one process: a PID alone may have been reused since we wrote it."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _pid_alive(pid, marker=None, start=None):
    """True when `pid` is still the process we started: its start time is `start` (when recorded)
    and its command line contains `marker` (when given)."""
    if not pid:
        return False
    started = _proc_start(pid)
    if started is None or (start is not None and started != start):
        return False
    if marker is None:
        return True
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return marker in f.read().decode(errors="replace")
    except OSError:
        return False


def _read_pidfile(path):
    """(pid, start time) from a pidfile we wrote; (None, None) when there is none."""
    try:
        parts = [int(x) for x in _read(path).split()]
    except ValueError:
        return None, None
    return tuple(parts + [None, None])[:2] if parts else (None, None)


def _write_pidfile(path, pid):
    with open(path, "w") as f:
        f.write("%d %d\n" % (pid, _proc_start(pid) or 0))


@contextlib.contextmanager
def _lock(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def missing_packages():
    """Debian packages the machines need that are not installed here."""
    missing = []
    for pkg in PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
        if "install ok installed" not in res.stdout:
            missing.append(pkg)
    return missing


def install_packages():
    missing = missing_packages()
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-qq"], env=env)
        _run(["apt-get", "install", "-y", "-qq", *missing], env=env)
        if "apt-cacher-ng" in missing and os.path.isdir("/run/systemd/system"):
            # Debian's package starts a service of its own, listening on every address of this computer: sdcloud
            # starts its own instance, on the loopback only, when machines run (AptCache)
            _run(["systemctl", "disable", "--now", "apt-cacher-ng.service"], check=False)
    return missing


def _mirror():
    """The Debian archive this computer's apt uses (so the machines use the same one)."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm", text, re.M)
        if m:
            return m.group(1)
    return DEFAULT_MIRROR


def ensure_base():
    """Build the cached Debian 12 base tree once (~1-2 min); later calls return at once."""
    stamp = os.path.join(BASE_DIR, ".sdcloud-base")
    with _lock(os.path.join(CACHE_DIR, ".base.lock")):
        if _read(stamp).strip() == BASE_VERSION:
            return BASE_DIR, False
        if os.getuid() != 0:
            raise MachineError("local machines need root (systemd-nspawn, overlayfs, bridges): run as root")
        install_packages()
        tmp = BASE_DIR + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        mirror = _mirror()
        _run(["debootstrap", "--variant=minbase", "--include=" + BASE_INCLUDE, SUITE, tmp, mirror])
        # same archive + updates + security, like a cloud image
        sec = mirror.replace("/debian", "/debian-security")
        with open(os.path.join(tmp, "etc/apt/sources.list"), "w") as f:
            f.write(f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\ndeb {sec} {SUITE}-security main\n")
        # per-machine identity is made at create time: no shared host keys or machine-id
        for name in os.listdir(os.path.join(tmp, "etc/ssh")):
            if name.startswith("ssh_host_"):
                os.unlink(os.path.join(tmp, "etc/ssh", name))
        open(os.path.join(tmp, "etc/machine-id"), "w").close()
        # trust the same CA certificates as this computer (egress may be TLS-inspected)
        src = "/usr/local/share/ca-certificates"
        if os.path.isdir(src):
            dst = os.path.join(tmp, "usr/local/share/ca-certificates")
            os.makedirs(dst, exist_ok=True)
            for name in os.listdir(src):
                if name.endswith(".crt"):
                    shutil.copy(os.path.join(src, name), dst)
            _run(["chroot", tmp, "update-ca-certificates"])
        _run(["chroot", tmp, "systemctl", "enable", "systemd-networkd", "ssh"])
        # no root password, key-only SSH
        with open(os.path.join(tmp, "etc/ssh/sshd_config.d/sdcloud.conf"), "w") as f:
            f.write("PasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n")
        with open(os.path.join(tmp, ".sdcloud-base"), "w") as f:
            f.write(BASE_VERSION + "\n")
        shutil.rmtree(BASE_DIR, ignore_errors=True)
        os.rename(tmp, BASE_DIR)
        return BASE_DIR, True


def _ensure_package_cache():
    """The shared package caches on this computer: sdcloud's own directories (made here, never chmod'ed
    if they were already there)."""
    if not os.path.isdir(PACKAGE_CACHE):
        os.makedirs(PACKAGE_CACHE, mode=0o700)
    if not os.path.isdir(PIP_CACHE_HOST):
        os.makedirs(PIP_CACHE, mode=0o700, exist_ok=True)
        os.makedirs(PIP_CACHE_HOST)
        os.chmod(PIP_CACHE_HOST, 0o1777)
    return PACKAGE_CACHE


def _bridges():
    """The sdcloud bridges on this computer, of every net."""
    try:
        return [n for n in os.listdir("/sys/class/net") if re.fullmatch(r"sdcloud\d+", n)]
    except OSError:
        return []


class AptCache:
    """The apt-cacher-ng every net's machines share (see APT_CACHE_DIR): started by the first net that comes up,
    stopped (by PID) when the last sdcloud bridge is gone. It listens on 127.0.0.1 only; the machines reach it
    through their net's tinyproxy.

    When the archive does not answer as the cache starts, it starts in apt-cacher-ng's offline mode if it holds
    anything: apt-cacher-ng serves a cached .deb without asking the archive, but it answers 503 for a package list
    it cannot check with the archive, so without that mode one `apt-get update` fails the machine's run although
    every package it needs is here. When the archive comes back, the next start of the cache is online again."""

    def __init__(self, state_root):
        self.dir = os.path.join(state_root, "apt-cache")
        self.pidfile = os.path.join(self.dir, "apt-cacher-ng.pid")
        self.mirror = _mirror()
        self.archive_host = urllib.parse.urlsplit(self.mirror).hostname

    @property
    def mode_file(self):
        return os.path.join(self.dir, "mode")

    def running(self):
        pid, start = _read_pidfile(self.pidfile)
        return _pid_alive(pid, "apt-cacher-ng", start)

    def mode(self):
        """What the running cache serves: "online", or "offline: ..." saying why; "" when it does not run."""
        return _read(self.mode_file).strip() if self.running() else ""

    def _archive_answers(self):
        """Whether the archive answers for this suite's index, asked directly (as apt-cacher-ng will ask it)."""
        url = "%s/dists/%s/InRelease" % (self.mirror.rstrip("/"), SUITE)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(urllib.request.Request(url, method="HEAD"), timeout=10) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def ensure(self):
        """Start the cache unless it runs. Returns True if it was started."""
        with _lock(os.path.join(CACHE_DIR, ".apt-cache.lock")):
            if self.running():
                return False
            if not shutil.which("apt-cacher-ng"):
                install_packages()
            os.makedirs(self.dir, exist_ok=True)
            if not os.path.isdir(APT_CACHE_DIR):
                os.makedirs(APT_CACHE_DIR, mode=0o755)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", APT_CACHE_PORT), timeout=1):
                raise MachineError("127.0.0.1:%d (sdcloud's package cache) is taken by a process sdcloud did not record: "
                                   "stop it, then try again" % APT_CACHE_PORT)
            offline = not self._archive_answers() and bool(os.listdir(APT_CACHE_DIR))
            conf_dir = os.path.join(self.dir, "conf")
            os.makedirs(conf_dir, exist_ok=True)
            # a configuration of our own, without Debian's remapping rules (they send deb.debian.org's requests to
            # other mirrors): every archive URL is fetched from where the machine asked, and cached under its path
            with open(os.path.join(conf_dir, "acng.conf"), "w") as f:
                f.write("# written by sdcloud: the package cache its local machines share (loopback only)\n"
                        "CacheDir: %s\nLogDir: %s\nSocketPath: %s\nPort: %d\nBindAddress: 127.0.0.1\n"
                        "ForeGround: 1\nOfflinemode: %d\n"
                        % (APT_CACHE_DIR, self.dir, os.path.join(self.dir, "socket"), APT_CACHE_PORT, int(offline)))
            with open(self.mode_file, "w") as f:
                f.write("offline: %s did not answer at %s, cached packages only\n"
                        % (self.mirror, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())) if offline else "online\n")
            log = open(os.path.join(self.dir, "daemon.log"), "ab")  # noqa: SIM115 - handed to the daemon
            proc = subprocess.Popen(["apt-cacher-ng", "-c", conf_dir], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            _write_pidfile(self.pidfile, proc.pid)
            try:
                _wait_port("127.0.0.1", APT_CACHE_PORT, 10, "the package cache (apt-cacher-ng)")
            except MachineError:
                _kill_group(proc.pid, 5)
                raise MachineError("the package cache (apt-cacher-ng) did not start: %s"
                                   % _read(os.path.join(self.dir, "daemon.log"))[-2000:]) from None
            return True

    def stop_when_unused(self):
        """Stop the cache when no sdcloud bridge is left. Returns True if it was stopped."""
        return self.stop(only_when_unused=True)

    def stop(self, only_when_unused=False):
        """Stop the cache we started (by its recorded PID). Returns True if it ran."""
        if not self.running():
            return False
        # under the lock ensure() takes: a net that comes up meanwhile has its bridge before it asks for the cache
        with _lock(os.path.join(CACHE_DIR, ".apt-cache.lock")):
            pid, start = _read_pidfile(self.pidfile)
            if not _pid_alive(pid, "apt-cacher-ng", start) or (only_when_unused and _bridges()):
                return False
            _kill_group(pid, start=start)
            with contextlib.suppress(OSError):
                os.unlink(self.pidfile)
            return True


class Network:
    """One private bridge, its address plan and its proxy. `net` (0-99) isolates parallel runs."""

    def __init__(self, net=None, state_root=None):
        self.net = int(os.environ.get("SDCLOUD_NET", "0") if net is None else net)
        if not 0 <= self.net <= MAX_NET:
            raise MachineError(f"SDCLOUD_NET must be 0-{MAX_NET}, got {self.net!r}")
        self.bridge = "sdcloud%d" % self.net
        self.subnet = ipaddress.ip_network("10.87.%d.0/24" % self.net)
        self.gateway = str(self.subnet.network_address + 1)
        root = state_root or os.environ.get("SDCLOUD_STATE_DIR", "/var/lib/sdcloud")
        self.state_dir = os.path.join(root, "net%d" % self.net)
        self.apt_cache = AptCache(root)
        self.machines_dir = os.path.join(self.state_dir, "machines")
        self.proxy_url = "http://%s:%d" % (self.gateway, PROXY_PORT)

    # -- bridge and proxy -------------------------------------------------
    def _pidfile(self, what):
        return os.path.join(self.state_dir, what + ".pid")

    def _read_pid(self, what):
        """(pid, start time) from the pidfile; (None, None) when there is none."""
        return _read_pidfile(self._pidfile(what))

    def _write_pid(self, what, pid):
        _write_pidfile(self._pidfile(what), pid)

    def bridge_exists(self):
        return os.path.exists(f"/sys/class/net/{self.bridge}")

    def up(self):
        """Create the bridge and start the proxy when they are not there. Returns True if changed."""
        changed = False
        os.makedirs(self.machines_dir, exist_ok=True)
        if not self.bridge_exists():
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", "%s/%d" % (self.gateway, self.subnet.prefixlen), "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            changed = True
        self.apt_cache.ensure()
        pid, start = self._read_pid("proxy")
        if not _pid_alive(pid, "tinyproxy", start):
            conf = os.path.join(self.state_dir, "tinyproxy.conf")
            with open(conf, "w") as f:
                f.write(
                    "# written by sdcloud: egress for the local machines (apt, pip) and nothing else\n"
                    "User nobody\nGroup nogroup\nPort %d\nListen %s\nTimeout 600\nMaxClients 64\n"
                    "Allow %s\nConnectPort 443\nConnectPort 80\nLogLevel Warning\nDisableViaHeader Yes\n"
                    "# the Debian archive through the package cache shared by every machine (AptCache)\n"
                    "Upstream http 127.0.0.1:%d \"%s\"\n"
                    % (PROXY_PORT, self.gateway, self.subnet, APT_CACHE_PORT, self.apt_cache.archive_host)
                )
            log = open(os.path.join(self.state_dir, "tinyproxy.log"), "ab")  # noqa: SIM115 - handed to the daemon
            proc = subprocess.Popen(["tinyproxy", "-d", "-c", conf], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self._write_pid("proxy", proc.pid)
            _wait_port(self.gateway, PROXY_PORT, 10, f"the egress proxy (tinyproxy) on {self.gateway}")
            changed = True
        return changed

    def down(self):
        """Stop what up() started (by PID) and delete the bridge. Returns True if changed."""
        changed = False
        for what in ("proxy",) + tuple(self._extra_services()):
            pid, start = self._read_pid(what)
            if _pid_alive(pid, start=start):
                _kill_group(pid, start=start)
                changed = True
            with contextlib.suppress(OSError):
                os.unlink(self._pidfile(what))
        if self.bridge_exists():
            _run(["ip", "link", "del", self.bridge])
            changed = True
        self.apt_cache.stop_when_unused()
        if not self.machines():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return changed

    def _extra_services(self):
        if not os.path.isdir(self.state_dir):
            return []
        return [f[:-4] for f in os.listdir(self.state_dir) if f.endswith(".pid") and f != "proxy.pid"]

    def start_service(self, what, argv, marker, port):
        """Start a helper daemon listening on the bridge address at `port` (e.g. a git daemon serving
        test fixtures), recorded by PID and stopped by down(). Idempotent. Fails when something else
        already answers on that address and port, or when the daemon does not come up."""
        pid, start = self._read_pid(what)
        if _pid_alive(pid, marker, start):
            return False
        self.up()
        with contextlib.suppress(OSError), socket.create_connection((self.gateway, port), timeout=1):
            raise MachineError("%s:%d is already taken by a process sdcloud did not record (a %s left over from an "
                               "earlier run?): stop it, then try again" % (self.gateway, port, what))
        logfile = os.path.join(self.state_dir, what + ".log")
        log = open(logfile, "ab")  # noqa: SIM115 - handed to the daemon
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self._write_pid(what, proc.pid)
        try:
            _wait_port(self.gateway, port, 10, what)
        except MachineError:
            _kill_group(proc.pid, 5)
            raise MachineError("%s did not start: %s" % (what, _read(logfile)[-2000:])) from None
        return True

    def stop_service(self, what):
        pid, start = self._read_pid(what)
        if _pid_alive(pid, start=start):
            _kill_group(pid, start=start)
        with contextlib.suppress(OSError):
            os.unlink(self._pidfile(what))

    # -- machines ---------------------------------------------------------
    def machines(self):
        if not os.path.isdir(self.machines_dir):
            return []
        out = []
        for name in sorted(os.listdir(self.machines_dir)):
            m = Machine(self, name)
            if m.exists():
                out.append(m)
        return out

    def machine(self, name):
        return Machine(self, name)

    def unit(self, address):
        """The nspawn machine name of the machine at `address` (short: the host-side veth is vb-<unit>). It follows
        the address, so two machines on this net never share one, and a machine given another address (the e2e
        stand-ins move a stopped host) gets the new one at its next start."""
        return "sdc%d-%s" % (self.net, address.rsplit(".", 1)[1])

    def free_address(self):
        used = {m.meta.get("address") for m in self.machines()}
        for host in list(self.subnet.hosts())[9:250]:
            if str(host) not in used:
                return str(host)
        raise MachineError(f"no free address left on {self.subnet}")


def _wait_port(host, port, timeout, what, banner=False):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                if not banner:
                    return
                s.settimeout(3)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise MachineError(f"timed out after {timeout}s waiting for {what} ({host}:{port}): {last}")


def _kill_group(pid, timeout=30, start=None):
    """SIGTERM the process group we started (its leader `pid`, started at `start`), wait, then SIGKILL
    what is left - never a process that merely inherited the PID."""
    start = start or _proc_start(pid)
    if start is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid, start=start):
        _reap(pid)
        time.sleep(0.1)
    if _pid_alive(pid, start=start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
    _reap(pid)


def _reap(pid):
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class Machine:
    def __init__(self, network, name):
        if not NAME_RE.match(name):
            raise MachineError(f"invalid machine name {name!r}: use lowercase letters, digits and '-', starting with a letter")
        self.network = network
        self.name = name
        self.dir = os.path.join(network.machines_dir, name)
        self.meta_path = os.path.join(self.dir, "machine.json")
        self.root = os.path.join(self.dir, "root")
        self.meta = self._load()

    def _load(self):
        try:
            with open(self.meta_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _save(self):
        tmp = self.meta_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.meta, f, indent=2, sort_keys=True)
        os.replace(tmp, self.meta_path)

    def exists(self):
        return bool(self.meta)

    @property
    def supervisor(self):
        return os.path.join(self.network.state_dir, "sdcloud-nspawn-supervisor")

    def running(self):
        return _pid_alive(self.meta.get("pid"), "sdcloud-nspawn-supervisor", self.meta.get("pid_start"))

    @property
    def state(self):
        if not self.exists():
            return "absent"
        return "running" if self.running() else "stopped"

    def info(self):
        d = dict(self.meta)
        d.pop("pid", None)
        d.pop("pid_start", None)
        d["state"] = self.state
        d["disk"] = self.dir  # on this computer; the machine's own files are in upper/ (overlay)
        return d

    # -- lifecycle --------------------------------------------------------
    def create(self, ssh_public_key, labels=None, address=None, ssh_private_key_file=None, min_free_gb=MIN_FREE_GB):
        """Create the machine's disk and identity (does not start it). Refuses when the disk holding the
        state dir has less than `min_free_gb` free."""
        if self.exists():
            return False
        net = self.network
        os.makedirs(net.machines_dir, exist_ok=True)
        free_gb = shutil.disk_usage(net.machines_dir).free / 2**30
        if free_gb < min_free_gb:
            raise MachineError(
                "a local machine needs at least %d GB free under %s (ComfyUI's Python environment ~7 GB, the shared "
                "package cache %s ~4 GB per PyTorch version, and the models); %.1f GB are free: free some space, or "
                "export SDCLOUD_STATE_DIR (machines) / SDCLOUD_CACHE_DIR (caches) to a bigger disk"
                % (min_free_gb, net.machines_dir, PACKAGE_CACHE, free_gb))
        ensure_base()
        os.makedirs(self.dir, exist_ok=True)
        addr = address or net.free_address()
        if ipaddress.ip_address(addr) not in net.subnet:
            raise MachineError(f"address {addr} is not in {net.subnet}")
        self.meta = {
            "name": self.name,
            "address": addr,
            "bridge": net.bridge,
            "unit": net.unit(addr),
            "uuid": uuid.uuid4().hex,
            "labels": dict(labels or {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ssh_user": "root",
            "ssh_private_key_file": ssh_private_key_file,
            "proxy": net.proxy_url,
        }
        for d in ("upper", "work", "root", "tmp"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        self._mount()
        try:
            self._personalize(ssh_public_key)
        finally:
            self._umount()
        self._save()
        return True

    def _mount(self):
        if os.path.ismount(self.root):
            return
        _run(["mount", "-t", "overlay", "overlay", "-o",
              "lowerdir={},upperdir={},workdir={}".format(BASE_DIR, os.path.join(self.dir, "upper"), os.path.join(self.dir, "work")),
              self.root])

    def _umount(self):
        if os.path.ismount(self.root):
            _run(["umount", self.root])

    def _write(self, rel, content, mode=0o644):
        path = os.path.join(self.root, rel.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content)
        os.chmod(path, mode)

    def _personalize(self, ssh_public_key):
        net, m = self.network, self.meta
        self._write("/etc/hostname", self.name + "\n")
        self._write("/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n::1 localhost ip6-localhost\n")
        self._write("/etc/machine-id", m["uuid"] + "\n", 0o444)
        self._write("/etc/systemd/network/10-sdcloud-host0.network",
                    "[Match]\nName=host0\n\n[Network]\nAddress=%s/%d\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
                    % (m["address"], net.subnet.prefixlen))
        self._write("/etc/resolv.conf", f"# no DNS: egress only through the proxy {net.proxy_url}\n")
        # egress: only through the proxy on the bridge (apt, pip, git over https)
        self._write("/etc/apt/apt.conf.d/90sdcloud-proxy",
                    f'Acquire::http::Proxy "{net.proxy_url}";\nAcquire::https::Proxy "{net.proxy_url}";\n')
        self._write("/etc/pip.conf", f"[global]\nproxy = {net.proxy_url}\ncert = /etc/ssl/certs/ca-certificates.crt\n"
                    f"cache-dir = {PIP_CACHE}\n")
        # uv (the roles install Python environments with it): the shared cache, copies (the cache is another
        # mount, so no hard links), the system's CA store (egress may be TLS-inspected); the proxy comes
        # from /etc/environment
        # sudo keeps the proxy (a login over SSH has it from /etc/environment): uv, git over https and curl
        # read only the environment, and a task that becomes root through sudo must still reach out
        self._write("/etc/sudoers.d/sdcloud-proxy",
                    'Defaults env_keep += "http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY"\n', 0o440)
        self._write("/etc/uv/uv.toml", f'cache-dir = "{PACKAGE_CACHE}"\nlink-mode = "copy"\nsystem-certs = true\n')
        no_proxy = f"localhost,127.0.0.1,{net.subnet}"
        self._write("/etc/environment",
                    f"http_proxy={net.proxy_url}\nhttps_proxy={net.proxy_url}\nHTTP_PROXY={net.proxy_url}\nHTTPS_PROXY={net.proxy_url}\nno_proxy={no_proxy}\nNO_PROXY={no_proxy}\n")
        self._write("/root/.ssh/authorized_keys", ssh_public_key.strip() + "\n", 0o600)
        os.chmod(os.path.join(self.root, "root/.ssh"), 0o700)
        _run(["ssh-keygen", "-A", "-f", self.root])

    def start(self, timeout=60):
        """Boot the machine and wait until its sshd answers. Returns True if it was not running."""
        if not self.exists():
            raise MachineError(f"machine {self.name} does not exist")
        if self.running():
            return False
        net = self.network
        net.up()
        with open(self.supervisor, "w") as f:
            f.write(SUPERVISOR)
        os.chmod(self.supervisor, 0o755)
        self._mount()
        _ensure_package_cache()
        m = self.meta
        # /tmp on the machine's disk, not nspawn's tmpfs (10 % of this computer's memory: pip stages the
        # PyTorch stack there); the package cache shared with the other machines
        tmp = os.path.join(self.dir, "tmp")
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o1777)
        argv = [self.supervisor, "-D", self.root, "-M", m["unit"], "-b", "--register=no", "--keep-unit",
                "--bind=%s:/tmp" % tmp, "--bind=%s:%s" % (PACKAGE_CACHE, PACKAGE_CACHE), "--bind=%s:%s" % (PIP_CACHE_HOST, PIP_CACHE),
                "--network-bridge=" + net.bridge, "--resolv-conf=off", "--timezone=off", "--link-journal=no",
                "--uuid=" + m["uuid"], "--console=read-only", "--hostname=" + self.name]
        self._claim_unit()
        log = open(os.path.join(self.dir, "console.log"), "ab")  # noqa: SIM115 - handed to the machine
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        m["pid"], m["pid_start"] = proc.pid, _proc_start(proc.pid)
        m["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._save()
        try:
            _wait_port(m["address"], 22, timeout, f"sshd in machine {self.name}", banner=True)
        except MachineError:
            if not _pid_alive(proc.pid):
                raise MachineError(f"machine {self.name} exited while booting; its console log:\n{self.console_tail()}") from None
            raise
        return True

    def _claim_unit(self):
        """Take the nspawn machine name of this machine's address, and delete a host-side veth of that name left by
        the machine that had the address before.

        The kernel frees a container's network namespace, and with it the veth pair, asynchronously after
        systemd-nspawn exits; a machine started with the same unit name in that moment failed with "Failed to add
        new veth interfaces (vb-<unit>:host0): File exists". The name is derived from the address at every start
        (a stopped machine may have been given another address since), so only a machine of this net running at
        this same address could own the veth: then nothing is deleted and the start is refused."""
        self.meta["unit"] = self.network.unit(self.meta["address"])
        veth = "vb-" + self.meta["unit"]
        if not os.path.exists("/sys/class/net/" + veth):
            return False
        for other in self.network.machines():
            if other.name != self.name and other.meta.get("unit") == self.meta["unit"] and other.running():
                raise MachineError("machine %s cannot start at %s: machine %s runs there (interface %s): stop it, or "
                                   "give %s another address" % (self.name, self.meta["address"], other.name, veth, self.name))
        _run(["ip", "link", "delete", veth], check=False)
        deadline = time.monotonic() + 5
        while os.path.exists("/sys/class/net/" + veth):
            if time.monotonic() > deadline:
                raise MachineError(f"interface {veth}, left by the machine that had address {self.meta['address']} "
                                   f"before, could not be deleted: `ip link delete {veth}`, then start {self.name} again")
            time.sleep(0.1)
        return True

    def console_tail(self, n=4000):
        try:
            with open(os.path.join(self.dir, "console.log"), "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=60):
        """Power the machine off (orderly), keep its disk. Returns True if it was running."""
        if not self.running():
            self._umount()
            return False
        _kill_group(self.meta["pid"], timeout, self.meta.get("pid_start"))
        self.meta.pop("pid", None)
        self.meta.pop("pid_start", None)
        self._save()
        self._umount()
        return True

    def wait_stopped(self, timeout):
        """Wait until the machine powered itself off (e.g. autostop). True when it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                _reap(self.meta.get("pid") or 0)
                return True
            time.sleep(0.5)
        return False

    def destroy(self):
        """Stop and delete the machine with its disk. Returns True if it existed."""
        if not self.exists() and not os.path.isdir(self.dir):
            return False
        if self.exists():
            self.stop()
        self._umount()
        shutil.rmtree(self.dir)
        self.meta = {}
        return True
