"""TEST STAND-IN of a GPU pod (RunPod / vast.ai): a container whose PID 1 is a start script running sshd.

Not a real pod: a systemd-nspawn container of the test hosts' Debian 12 tree, shaped the way a pod is:
- PID 1 is a start script (`/start.sh`, as RunPod's images run `/start.sh` and vast.ai its entrypoint), not
  systemd: nspawn runs WITHOUT -b, so /run/systemd/system is absent though the systemd binaries are installed;
- sshd on a non-22 port (the "mapped" port a provider hands out), root login with a key, no sudo (purged);
- Docker's default capability set: Docker's docs ("Runtime privilege and Linux capabilities",
  https://docs.docker.com/engine/containers/run/#runtime-privilege-and-linux-capabilities) list what a
  container keeps by default - AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD,
  NET_BIND_SERVICE, NET_RAW, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT (CapEff 00000000a80425fb); every
  other capability nspawn grants (CAP_NET_ADMIN and CAP_SYS_ADMIN among them) is dropped;
- /workspace bind-mounted from this computer (the persistent volume); the rest of the tree is the container disk;
- the start command (RunPod's "docker start command" / vast.ai's onstart) is a file on this computer
  (`<dir>/onstart.sh`) that the start script runs after sshd, as a pod runs the one its template names;
- or PID 1 is another command (set_command: a RunPod pod's `args` replace the image's CMD, as `docker run IMAGE
  CMD` does), which hands over to /start.sh itself; the environment a pod is created with (`env`) is PID 1's,
  and /start.sh adds PUBLIC_KEY to root's authorized_keys, as RunPod's images' start script does
  (runpod/containers, container-template/start.sh: `echo "$PUBLIC_KEY" >> authorized_keys`);
- the SSH port can change from one start to the next (a provider maps a new port at every start).

The network is set up from outside, as Docker does: the container cannot (no CAP_NET_ADMIN), so this computer
gives host0 its address with `nsenter -n`. Built on nspawn.py's public pieces (Network: bridge, proxy,
addresses; Machine.create: the disk and identity; BASE_DIR, PACKAGE_CACHE). Stopped by the PID recorded at
start, never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
# by its package path: a bare `sdcloud` is the inventory plugin once another test has put plugins/inventory first
sys.path.insert(0, str(ROOT))

from plugins.module_utils.sdcloud import nspawn  # noqa: E402

# Docker's default capabilities (see the module docstring) and the value of CapEff they make
DOCKER_CAPS = ("CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_MKNOD",
               "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID",
               "CAP_SYS_CHROOT")
DOCKER_CAPEFF = 0xA80425FB
# What systemd-nspawn grants beyond those (systemd-nspawn(1), --capability=; CAP_NET_ADMIN with a private network)
NSPAWN_EXTRA_CAPS = ("CAP_AUDIT_CONTROL", "CAP_DAC_READ_SEARCH", "CAP_IPC_OWNER", "CAP_LEASE", "CAP_LINUX_IMMUTABLE",
                     "CAP_NET_ADMIN", "CAP_NET_BROADCAST", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
                     "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE", "CAP_SYS_TTY_CONFIG")

START_SCRIPT = """#!/bin/bash
# TEST STAND-IN of a pod's start script (tests/e2e/podhost.py): the operator's key from PUBLIC_KEY, sshd on the
# mapped port, then the pod's start command, then wait (and reap) forever as PID 1.
if [ -n "${{PUBLIC_KEY:-}}" ] && ! grep -qxF "$PUBLIC_KEY" /root/.ssh/authorized_keys 2>/dev/null; then
  mkdir -p /root/.ssh && echo "$PUBLIC_KEY" >> /root/.ssh/authorized_keys && chmod 700 /root/.ssh
fi
mkdir -p /run/sshd
/usr/sbin/sshd -p "$(cat /etc/podhost/ssh_port 2>/dev/null || echo {port})" -E /var/log/sshd.log
if [ -s /etc/podhost/onstart.sh ]; then
  bash /etc/podhost/onstart.sh >>/var/log/onstart.log 2>&1 &
fi
trap 'exit 0' TERM INT
while :; do sleep 5 & wait $!; done
"""


class PodHostError(Exception):
    pass


class PodHost:
    """One pod-like container on net `net` (bridge sdcloud<net>), SSH on `ssh_port`, /workspace from `<dir>/workspace`."""

    def __init__(self, net, name, ssh_port=2222):
        self.network = nspawn.Network(net=net)
        self.machine = self.network.machine(name)
        self.name = name
        self.ssh_port = ssh_port
        self.dir = pathlib.Path(self.machine.dir)
        self.root = self.dir / "root"
        self.workspace = self.dir / "workspace"
        self.hook_dir = self.dir / "podhost"  # bind-mounted read-only at /etc/podhost
        self.pidfile = self.dir / "podhost.pid"
        self.publishers = self.dir / "publish.pids"  # "pid start-time" of each port publisher (publish)
        self.command = []  # PID 1's command line; [] = /start.sh
        self.env = {}

    @property
    def address(self):
        return self.machine.meta["address"]

    def create(self, public_key, private_key_file=None):
        """The container's disk (nspawn's overlay on the base tree), shaped like a pod image: sudo purged, sshd's
        PAM session without pam_loginuid (Docker's sshd recipe: a container cannot set the login uid)."""
        self.machine.create(public_key, ssh_private_key_file=private_key_file)
        for d in (self.workspace, self.hook_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._mount()
        try:
            subprocess.run(["chroot", str(self.root), "dpkg", "--purge", "sudo"], check=True, capture_output=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive", SUDO_FORCE_REMOVE="yes"))
            pam = self.root / "etc/pam.d/sshd"
            pam.write_text(pam.read_text().replace("session    required     pam_loginuid.so",
                                                   "session    optional     pam_loginuid.so"))
            start = self.root / "start.sh"
            start.write_text(START_SCRIPT.format(port=self.ssh_port))
            start.chmod(0o755)
        finally:
            self._umount()

    def set_onstart(self, command):
        """The pod's start command (RunPod's docker start command, vast.ai's onstart), run at every start."""
        (self.hook_dir / "onstart.sh").write_text(command.rstrip() + "\n")

    def set_command(self, command, env=None):
        """PID 1's command line at the next start ("" = /start.sh), split as Docker splits a CMD string given
        to `docker run`; env: PID 1's environment (a pod's `env`)."""
        self.command = shlex.split(command or "")
        self.env = dict(env or {})

    # -- mounts and processes --------------------------------------------------
    def _mount(self):
        if not os.path.ismount(self.root):
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            "lowerdir={},upperdir={},workdir={}".format(nspawn.BASE_DIR, self.dir / "upper", self.dir / "work"),
                            str(self.root)], check=True, capture_output=True)

    def _umount(self):
        if os.path.ismount(self.root):
            subprocess.run(["umount", str(self.root)], check=True, capture_output=True)

    def _recorded(self):
        try:
            pid, start = (int(x) for x in self.pidfile.read_text().split())
        except (OSError, ValueError):
            return None
        return pid if nspawn._proc_start(pid) == start else None

    def running(self):
        return self._recorded() is not None

    def pid1(self):
        """This computer's PID of the container's PID 1: the child of our systemd-nspawn whose PID inside is 1."""
        pid = self._recorded()
        if pid is None:
            return None
        with contextlib.suppress(OSError):
            for child in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                status = pathlib.Path(f"/proc/{child}/status").read_text()
                nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
                if len(nspid) > 1 and nspid[-1] == "1":
                    return int(child)
        return None

    def start(self, timeout=30, ssh_port=None):
        """Start the container (PID 1: /start.sh, or set_command's), give host0 its address from outside, wait for
        sshd's banner (on ssh_port, when given: the port a provider mapped for this start)."""
        if self.running():
            return False
        if ssh_port:
            self.ssh_port = int(ssh_port)
        (self.hook_dir / "ssh_port").write_text("%d\n" % self.ssh_port)
        net, meta = self.network, self.machine.meta
        net.up()
        self._mount()
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        tmp.chmod(0o1777)
        cache = nspawn._ensure_package_cache()
        argv = ["systemd-nspawn", "-D", str(self.root), "-M", net.unit(meta["address"]), "--register=no", "--keep-unit",
                "--bind=%s:/tmp" % tmp, "--bind=%s:%s" % (cache, cache), "--bind=%s:/workspace" % self.workspace,
                "--bind-ro=%s:/etc/podhost" % self.hook_dir, "--network-bridge=" + net.bridge, "--resolv-conf=off",
                "--timezone=off", "--link-journal=no", "--uuid=" + meta["uuid"], "--console=pipe",
                "--hostname=" + self.name, "--drop-capability=" + ",".join(NSPAWN_EXTRA_CAPS),
                *("--setenv=%s=%s" % kv for kv in self.env.items()), *(self.command or ["/start.sh"])]
        log = open(self.dir / "console.log", "ab")  # noqa: SIM115 - handed to the container
        proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pidfile.write_text("%d %d\n" % (proc.pid, nspawn._proc_start(proc.pid)))
        deadline = time.monotonic() + timeout
        leader = None
        while leader is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise PodHostError("pod %s did not start: %s" % (self.name, (self.dir / "console.log").read_text()[-2000:]))
            time.sleep(0.1)
            leader = self.pid1()
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", "%s/%d" % (meta["address"], net.subnet.prefixlen), "dev", "host0"],
                    ["ip", "link", "set", "host0", "up"]):
            while subprocess.run(["nsenter", "-t", str(leader), "-n", *cmd], check=False, capture_output=True).returncode != 0:
                if time.monotonic() > deadline:
                    raise PodHostError("could not set up the network of pod %s (%s)" % (self.name, " ".join(cmd)))
                time.sleep(0.1)
        self._wait_ssh(deadline)
        return True

    def publish(self, public_port, port, timeout=10):
        """Publish the container's `port` at <address>:`public_port`, as a provider's `-p PUBLIC:PORT` does: Docker's
        userland proxy (tests/standins/port_forward.py) run in the container's network namespace. Until stop()."""
        leader = self.pid1()
        if leader is None:
            raise PodHostError("pod %s does not run: nothing to publish %s on" % (self.name, port))
        log = open(self.dir / "publish.log", "ab")  # noqa: SIM115 - handed to the publisher
        proc = subprocess.Popen(["nsenter", "-t", str(leader), "-n", sys.executable, str(ROOT / "tests/standins/port_forward.py"),
                                 str(public_port), str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        with open(self.publishers, "a") as f:
            f.write("%d %d\n" % (proc.pid, nspawn._proc_start(proc.pid)))
        try:
            nspawn._wait_port(self.address, int(public_port), timeout, f"port {public_port} of pod {self.name}")
        except nspawn.MachineError as e:
            raise PodHostError(str(e)) from None

    def _unpublish(self):
        """End the port publishers by the PIDs recorded at their start (each holds the container's network)."""
        with contextlib.suppress(OSError):
            for line in self.publishers.read_text().split("\n"):
                if line.strip():
                    pid, start = (int(x) for x in line.split())
                    if nspawn._proc_start(pid) == start:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        with contextlib.suppress(ChildProcessError, OSError):
                            os.waitpid(pid, 0)
            self.publishers.unlink()

    def _wait_ssh(self, deadline):
        try:
            nspawn._wait_port(self.address, self.ssh_port, max(1.0, deadline - time.monotonic()), f"sshd of pod {self.name}",
                              banner=True)
        except nspawn.MachineError as e:
            raise PodHostError(str(e)) from None

    def stop(self, timeout=20):
        """Stop the container by its recorded PID (nspawn kills PID 1 and everything in it), keep its disks."""
        self._unpublish()
        pid = self._recorded()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self._recorded() is not None and time.monotonic() < deadline:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            if self._recorded() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.pidfile.unlink()
        # the kernel frees the veth pair after nspawn exits: wait for it, a restart reuses its name
        veth = "/sys/class/net/vb-" + self.network.unit(self.address) if self.machine.exists() else ""
        deadline = time.monotonic() + 10
        while veth and os.path.exists(veth) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(subprocess.CalledProcessError):
            self._umount()

    def destroy(self):
        self.stop()
        self.machine.destroy()
        shutil.rmtree(self.dir, ignore_errors=True)

    def info(self):
        return {"name": self.name, "address": self.address, "port": self.ssh_port, "running": self.running(),
                "workspace": str(self.workspace)}


def start_as_runpod(host, pod):
    """Back a RunPod stand-in pod (its record, as it turns RUNNING) with `host`: the pod's `args` replace the image's
    CMD (a docker start command) and its `env` plus what RunPod injects is PID 1's; SSH on the port mapped to 22."""
    host.set_command(pod["args"], {**pod["env"], **pod["_injected"]})
    host.start(ssh_port=pod["ssh"]["direct"]["port"])


def start_as_vast(host, inst):
    """Back a vast.ai stand-in instance with `host`: the image's start (sshd, the attached key), then `onstart`;
    SSH on the port mapped to 22, every other `-p` port published at the public port vast mapped."""
    host.set_command("", {**inst["_injected"], **({"PUBLIC_KEY": inst["_ssh_keys"][0]} if inst["_ssh_keys"] else {})})
    host.set_onstart(inst["onstart"] or "")
    host.start(ssh_port=int(inst["ports"]["22/tcp"][0]["HostPort"]))
    for key, binds in inst["ports"].items():
        if key != "22/tcp":
            host.publish(int(binds[0]["HostPort"]), int(key.split("/")[0]))


if __name__ == "__main__":  # by hand: podhost.py NET NAME create PUBKEY | start | stop | destroy | info
    host = PodHost(int(sys.argv[1]), sys.argv[2])
    verb = sys.argv[3]
    if verb == "create":
        host.create(pathlib.Path(sys.argv[4]).read_text())
    elif verb in ("start", "stop", "destroy"):
        getattr(host, verb)()
    if verb != "destroy":
        print(json.dumps(host.info()))
