"""End to end on the cloud providers and the static provider, against the stand-ins.

provision.yml -> status.yml -> stop.yml -> start.yml -> teardown.yml, run as a user would, against
- the Compute Engine stand-in (tests/standins/gce_server.py, in this process) with SDCLOUD_GCP_ENDPOINT,
  a made-up project and anonymous credentials (what the client factory uses with an endpoint), and
- moto (tests/standins/moto_faults.py, in this process) with AWS_ENDPOINT_URL and dummy credentials.
Every instance a stand-in runs is backed by a real test host (Debian 12 nspawn machine on bridge
SDCLOUD_NET=5): the stand-ins' instance hooks create/start it when the instance turns running (with
the login user and key the instance was given, as the image's guest agent / cloud-init would) and
hand back its address as the public IP; a start after a stop moves it to a new address (clouds give
a new IP on every start); stop and delete stop/destroy it. The inventory lists only the cloud under
test, so the test hosts are never seen as `local` machines.

Then the static provider on bridge 6: a test host listed in static_hosts goes through the same
playbooks minus creation/teardown, then teardown with sdcloud_teardown_uninstall (what sdcloud installed on the
systemd host goes, the models stay). And a provision that fails half-way (every zone out of capacity
after the firewall rule / key pair / security group were made) followed by teardown.

What this cannot show about the real clouds: see docs/clouds.md ("What the tests do not prove").
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import pytest
from ansible.module_utils.sdcloud import aws as aws_backend
from ansible.module_utils.sdcloud import gcp as gcp_backend
from ansible.module_utils.sdcloud import nspawn

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))
import e2e_util  # noqa: E402
import gce_server  # noqa: E402
import moto_faults  # noqa: E402
from e2e_util import TUNNEL_RE, run_play  # noqa: E402

CLOUD_NET = 5  # test hosts backing cloud instances
STATIC_NET = 6  # the static host
PROJECT = "sdcloud-e2e"
GCP_ZONES = ["us-central1-a", "us-central1-b"]
AWS_REGION = "us-east-1"

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="test hosts need root (systemd-nspawn)"),
]


# --- test hosts behind the stand-ins' instances -------------------------------------------------


class BackingHosts:
    """Test hosts standing in for cloud VMs, driven by the stand-ins' instance hooks."""

    def __init__(self, net: int):
        self.net = nspawn.Network(net=net)
        self.addresses: list = []  # every address handed out, in order
        self.events: list = []
        self.lock = threading.Lock()
        self.forged_keys = None  # host keys a GCE guest publishes instead of its own (a test of pinning)

    def running(self, name: str, user: str, public_key: str) -> str:
        with self.lock:
            m = self.net.machine(name)
            if not m.exists():
                m.create(public_key, labels={"sdcloud-test": "backs-a-stand-in-instance"})
                _add_login_user(m, user, public_key)
            elif not m.running():
                _move(m, self.net.free_address())
            m.start()
            address = m.meta["address"]
            self.addresses.append(address)
            self.events.append(("running", name, address))
            return address

    def host_keys(self, name: str) -> dict:
        """{"hostkeys/<type>": base64} from the test host's own /etc/ssh/ssh_host_*_key.pub."""
        out = {}
        for pub in sorted(pathlib.Path(self.net.machine(name).dir, "upper/etc/ssh").glob("ssh_host_*_key.pub")):
            key_type, blob = pub.read_text().split()[:2]
            out["hostkeys/" + key_type] = blob
        return out

    def stopped(self, name: str):
        with self.lock:
            self.net.machine(name).stop()
            self.events.append(("stopped", name))

    def deleted(self, name: str):
        with self.lock:
            self.net.machine(name).destroy()
            self.events.append(("deleted", name))

    def names(self) -> list:
        return [m.name for m in self.net.machines()]


def _add_login_user(m, user: str, public_key: str):
    """What the GCE guest agent / cloud-init do with the instance's key: a sudo user with that key."""
    if user == "root":
        return
    m._mount()
    try:
        root = m.root
        subprocess.run(["chroot", root, "useradd", "-m", "-s", "/bin/bash", "-G", "sudo", user], check=True)
        ssh_dir = pathlib.Path(root, "home", user, ".ssh")
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(public_key.strip() + "\n")
        subprocess.run(["chroot", root, "chown", "-R", f"{user}:{user}", f"/home/{user}/.ssh"], check=True)
        sudoers = pathlib.Path(root, "etc/sudoers.d/90-cloud-user")
        sudoers.write_text(f"{user} ALL=(ALL) NOPASSWD:ALL\n")
        sudoers.chmod(0o440)
    finally:
        m._umount()


def _move(m, address: str):
    """Give a stopped test host a new address (its disk, host keys and users stay)."""
    m.meta["address"] = address
    m._save()
    net = m.network
    pathlib.Path(m.dir, "upper/etc/systemd/network/10-sdcloud-host0.network").write_text(
        "[Match]\nName=host0\n\n[Network]\nAddress=%s/%d\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
        % (address, net.subnet.prefixlen))


# --- shared fixtures ----------------------------------------------------------------------------


class EchoServer(http.server.ThreadingHTTPServer):
    """Stands in for https://checkip.amazonaws.com: answers with the address the test hosts see us as."""


class _EchoHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        # /html and /empty: what a wrong sdcloud_ip_echo_url (a web page, a blank answer) gives
        # /ipv6: what an echo service reached over IPv6 answers (the cloud firewall rules take IPv4)
        body = {"/html": b"<html><body>Your IP: 1.2.3.4</body></html>", "/empty": b"", "/ipv6": b"2001:db8::7\n"}.get(
            self.path, (self.server.answer + "\n").encode())
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hosts():
    """The backing test hosts; one run of this file at a time (a second run waits: both would use nets 5/6)."""
    lock_path = pathlib.Path("/var/lib/sdcloud/.cloud-e2e.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail("another run of test_cloud_e2e.py held the test nets for 15 minutes")
                time.sleep(2)
        for net in (CLOUD_NET, STATIC_NET):
            e2e_util.clear_bridge(dict(os.environ, SDCLOUD_NET=str(net)))
        yield BackingHosts(CLOUD_NET)


@pytest.fixture(scope="module")
def base(tmp_path_factory, hosts):
    tmp = tmp_path_factory.mktemp("cloud-e2e")
    e = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
             PATH=str(ROOT / ".venv/bin") + ":" + os.environ["PATH"],
             ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp / "facts"), SDCLOUD_KNOWN_HOSTS=str(tmp / "known_hosts"))
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "AWS_PROFILE",
                "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_SESSION_TOKEN", "SDCLOUD_GCP_ENDPOINT", "AWS_ENDPOINT_URL"):
        e.pop(var, None)
    repos = tmp / "repos"
    subprocess.run([sys.executable, str(ROOT / "tests/fixtures/make_repos.py"), str(repos)], check=True,
                   capture_output=True)
    for net in (CLOUD_NET, STATIC_NET):
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "serve-git", str(repos)], check=True,
                       env=dict(e, SDCLOUD_NET=str(net)), capture_output=True)
    echo = EchoServer(("127.0.0.1", 0), _EchoHandler)
    echo.answer, echo.hits = hosts.net.gateway, 0
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    yield {"env": e, "tmp": tmp, "key": str(tmp / "id_ed25519"), "echo": echo}
    echo.shutdown()
    # cleanup that runs even when a step failed: every test host, the bridges, the git daemons
    for net in (CLOUD_NET, STATIC_NET):
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=dict(e, SDCLOUD_NET=str(net)),
                       capture_output=True, check=False)


@pytest.fixture(scope="module")
def gce(hosts):
    def running(inst):
        items = {i["key"]: i["value"] for i in inst.get("metadata", {}).get("items", [])}
        user, key = items["ssh-keys"].splitlines()[0].split(":", 1)
        address = hosts.running("gce-" + inst["name"], user, key)
        if items.get("enable-guest-attributes", "").upper() != "TRUE":
            return address
        # the guest agent at boot: publish the SSH host keys (the blob of each /etc/ssh/ssh_host_*_key.pub)
        return {"natIP": address, "guestAttributes": hosts.forged_keys or hosts.host_keys("gce-" + inst["name"])}

    server = gce_server.GceStandin(
        accelerators=dict.fromkeys(GCP_ZONES, ["nvidia-l4", "nvidia-tesla-t4"]),
        on_instance_running=running,
        on_instance_stopped=lambda inst: hosts.stopped("gce-" + inst["name"]),
        on_instance_deleted=lambda inst: hosts.deleted("gce-" + inst["name"]))
    with server:
        yield server


@pytest.fixture(scope="module")
def moto(hosts):
    def running(info):
        address = hosts.running("aws-" + info["id"], info["tags"].get("sdcloud-ssh-user", "ubuntu"), info["public_key"])
        # cloud-init at boot: the SSH host keys on the serial console, as EC2 shows them in GetConsoleOutput
        keys = "".join(f"{k.split('/', 1)[1]} {v} root@{info['id']}\n" for k, v in hosts.host_keys("aws-" + info["id"]).items())
        return {"public_ip": address, "console_output": "ec2: ####\n-----BEGIN SSH HOST KEY KEYS-----\n" + keys
                + "-----END SSH HOST KEY KEYS-----\nec2: ####\n"}

    server, ctl = moto_faults.serve_in_thread(
        on_instance_running=running,
        on_instance_stopped=lambda info: hosts.stopped("aws-" + info["id"]),
        on_instance_deleted=lambda info: hosts.deleted("aws-" + info["id"]))
    ctl.reset()
    yield ctl
    server.shutdown()


def gcp_env(base, gce, name):
    return dict(base["env"], SDCLOUD_NET=str(CLOUD_NET), SDCLOUD_NAME=name, SDCLOUD_INVENTORY_PROVIDERS="gcp",
                SDCLOUD_GCP_ENDPOINT=gce.url, GOOGLE_CLOUD_PROJECT=PROJECT)


def aws_env(base, moto, name):
    return dict(base["env"], SDCLOUD_NET=str(CLOUD_NET), SDCLOUD_NAME=name, SDCLOUD_INVENTORY_PROVIDERS="aws",
                SDCLOUD_AWS_REGIONS=AWS_REGION, AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing")


def cloud_vars(base, provider, **over):
    v = {"sdcloud_provider": provider, "sdcloud_ssh_key_path": base["key"], "sdcloud_gpu": "nvidia-l4",
         "sdcloud_zones": GCP_ZONES if provider == "gcp" else [AWS_REGION], "sdcloud_disk_size_gb": 50,
         "sdcloud_gpu_present": False, "sdcloud_wait_timeout": 180,
         "sdcloud_ip_echo_url": "http://127.0.0.1:%d/" % base["echo"].server_address[1]}
    v.update(over)
    return v


def play(env, name, xvars, *extra, check=True):
    return run_play(env, name, "-e", json.dumps(xvars), *extra, label=f"{env.get('SDCLOUD_NAME')} ", check=check, tail=8000)


def through_tunnel(out, known_hosts):
    """The summary's `ssh -L` command, run as printed: (user, address, /system_stats)."""
    opts = []
    m = TUNNEL_RE.search(out)
    if m and "HostKeyAlias=" not in m.group(2):  # static hosts: the user's own known_hosts; here a file of the test's
        opts = ["-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={known_hosts}.tunnel"]
    m, stats = e2e_util.through_tunnel(out, opts)
    return m.group(3), m.group(4), stats


# a well-formed ssh-ed25519 public key that no test host has
FORGED_ED25519 = "AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd"


def pinned(known_hosts, alias) -> set:
    """The "type base64" keys known_hosts holds for alias."""
    res = subprocess.run(["ssh-keygen", "-F", alias, "-f", str(known_hosts)], capture_output=True, text=True, check=False)
    return {" ".join(line.split()[1:3]) for line in res.stdout.splitlines() if line and not line.startswith("#")}


def gce_leftovers(gce) -> dict:
    """Everything the GCE stand-in holds for the project, labelled or not."""
    with gce.lock:
        return {kind: sorted(k[-1] for k in getattr(gce, kind) if k[0] == PROJECT)
                for kind in ("instances", "disks", "firewalls", "addresses")}


def aws_leftovers(moto) -> dict:
    """Everything moto holds in the region besides its defaults (instances not terminated, volumes,
    non-default security groups, key pairs, elastic IPs, open spot requests)."""
    import boto3

    ec2 = boto3.client("ec2", region_name=AWS_REGION, endpoint_url=moto.url, aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    insts = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
             if i["State"]["Name"] != "terminated"]
    return {
        "instances": insts,
        "volumes": [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]],
        "security_groups": [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]
                            if g["GroupName"] != "default"],
        "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]],
        "addresses": [a["PublicIp"] for a in ec2.describe_addresses()["Addresses"]],
        "spot_requests": [s["SpotInstanceRequestId"] for s in ec2.describe_spot_instance_requests()["SpotInstanceRequests"]
                          if s["State"] in ("open", "active", "disabled")],
    }


def aws_instances(moto, name) -> list:
    """The deployment's instances as the product lists them (AwsBackend.list_instances, as the inventory does)."""
    with _env(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"):
        return aws_backend.AwsBackend([AWS_REGION], endpoint_url=moto.url).list_instances(name)


def labelled(provider, url) -> list:
    """What the product's own sweep lists as sdcloud-managed (any deployment)."""
    if provider == "gcp":
        found = gcp_backend.GcpBackend(PROJECT, endpoint=url).list_resources(None)
    else:
        with _env(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing"):
            found = aws_backend.AwsBackend([AWS_REGION], endpoint_url=url).list_resources(None)
    return [(r.kind, r.id) for r in found]


@contextlib.contextmanager
def _env(**kv):
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ssh_allowed_from(ssh_cmd) -> list:
    """The sources the machine's own firewall (roles/firewall) lets reach SSH."""
    conf = subprocess.run([*ssh_cmd, "sudo", "cat", "/etc/nftables.conf"], capture_output=True, text=True,
                          check=True).stdout
    return [src for m in re.finditer(r"ip6? saddr \{ ([^}]*) \} tcp dport 22 accept", conf)
            for src in m.group(1).split(", ")]


def ssh_to(key, user, address) -> list:
    return ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", f"{user}@{address}"]


# --- preflight ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "needle"), [
    ({"vars": {"sdcloud_gpu": "nvidia-a10g"}},
     "sdcloud_gpu is 'nvidia-a10g': on gcp use one of nvidia-a100, nvidia-a100-80gb, nvidia-h100, nvidia-l4, nvidia-t4"),
    ({"vars": {"sdcloud_zones": ["us-central1"]}}, "(not valid: us-central1)"),
    ({"env": {"SDCLOUD_INVENTORY_PROVIDERS": "static"}}, "add gcp to `providers` in inventory/sdcloud.yml"),
    ({"vars": {"sdcloud_access_cidrs": ["2001:db8::/64"]}}, "2001:db8::/64: sdcloud's firewall rules on gcp take IPv4 ranges only"),
    ({"env": {"PYTHONPATH": "@shadow"}}, "needs google-cloud-compute (google.cloud.compute_v1), which does not import"),
], ids=["gpu-not-in-catalog", "zone-is-a-region", "inventory-misses-gcp", "ipv6-cidr", "sdk-missing"])
def test_cloud_preflight_fails_before_anything_is_created(base, gce, tmp_path, case, needle):
    over, env_extra = case.get("vars", {}), dict(case.get("env", {}))
    env = gcp_env(base, gce, "e2e-pre")
    if env_extra.get("PYTHONPATH") == "@shadow":
        # a Python where google-cloud-compute is missing: a package that fails to import shadows it
        shadow = tmp_path / "google" / "cloud" / "compute_v1"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('No module named google.cloud.compute_v1 (test)')\n")
        env_extra = {"PYTHONPATH": str(tmp_path)}
    env.update(env_extra)
    gce.requests.clear()
    hits = base["echo"].hits
    rc, out = play(env, "provision.yml", cloud_vars(base, "gcp", **over), check=False)
    assert rc != 0
    assert needle in re.sub(r"\s+", " ", out), out[-3000:]
    if "PYTHONPATH" in env_extra:
        assert "Run `make setup`" in out, out[-3000:]
    assert [r for r in gce.requests if r["method"] != "GET"] == [], "nothing may be created"
    assert base["echo"].hits == hits, "the preflight fails before anything else runs"


@pytest.mark.parametrize(("path", "needle"), [
    ("/html", 'answered "<html><body>Your IP: 1.2.3.4</body></html>", not an IPv4 address'),
    ("/empty", 'answered "", not an IPv4 address'),
    ("/ipv6", 'answered "2001:db8::7", not an IPv4 address (the cloud firewall rules take IPv4)'),
])
def test_ip_echo_that_is_not_an_address(base, gce, path, needle):
    gce.requests.clear()
    url = "http://127.0.0.1:%d%s" % (base["echo"].server_address[1], path)
    rc, out = play(gcp_env(base, gce, "e2e-pre"), "provision.yml", cloud_vars(base, "gcp", sdcloud_ip_echo_url=url), check=False)
    assert rc != 0
    assert needle in re.sub(r"\s+", " ", out), out[-3000:]
    assert "set sdcloud_ssh_cidrs: [<your public IP>/32]" in re.sub(r"\s+", " ", out), out[-3000:]
    assert [r for r in gce.requests if r["method"] != "GET"] == [], "nothing may be created"


def test_ssh_cidrs_without_this_computer(base, gce):
    """sdcloud_ssh_cidrs that leave the controller out locked it out of the machine; the next provision waited
    600 s. Refused first; sdcloud_ssh_cidrs_check: false lets a VPN/bastion user through this check."""
    gce.requests.clear()
    v = cloud_vars(base, "gcp", sdcloud_ssh_cidrs=["192.0.2.0/24"])
    rc, out = play(gcp_env(base, gce, "e2e-pre"), "provision.yml", v, check=False)
    assert rc != 0
    flat = re.sub(r"\s+", " ", out)
    assert f'sdcloud_ssh_cidrs ["192.0.2.0/24"] do not contain this computer\'s address {base["echo"].answer}' in flat, out[-3000:]
    assert f"Add {base['echo'].answer}/32 to sdcloud_ssh_cidrs" in flat, out[-3000:]
    assert [r for r in gce.requests if r["method"] != "GET"] == [], "nothing may be created"


# --- the clouds, end to end ---------------------------------------------------------------------


@contextlib.contextmanager
def teardown_on_failure(env, xv):
    """A lifecycle that fails half-way runs teardown.yml before the failure is reported: its machine (on a
    module-scoped stand-in) must not be left for the next test to trip over (one failure once cascaded into two)."""
    try:
        yield
    except BaseException:
        play(env, "teardown.yml", xv, check=False)
        raise


def test_gcp_lifecycle(base, gce, hosts, static_flow):  # static_flow: starts it in the background
    name, key_file = "e2e-gcp", base["tmp"] / "known_hosts"
    env, xv = gcp_env(base, gce, name), cloud_vars(base, "gcp")
    with teardown_on_failure(env, xv):

        # 1. provision: firewall rule from the detected address, spot L4, SSH, ComfyUI through the tunnel
        _, out = play(env, "provision.yml", xv)
        inst = gce.instances[(PROJECT, "us-central1-a", name)]
        assert inst["status"] == "RUNNING" and inst["scheduling"]["provisioningModel"] == "SPOT"
        assert hosts.names() == ["gce-" + name]
        fw = gce.firewalls[(PROJECT, gcp_backend.firewall_name(name))]
        assert fw["sourceRanges"] == [f"{hosts.net.gateway}/32"] and fw["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
        assert re.search(rf"{name} runs on gcp \(us-central1-a\), g2-standard-4,\s+spot, ~\$0\.28/h \(sdcloud catalog "
                         r"estimate; spot prices vary by zone and day\)", out), out[-3000:]
        assert f"-o HostKeyAlias=sdcloud-gcp-{inst['id']} -o StrictHostKeyChecking=accept-new" in out, out[-3000:]
        user, addr1, stats = through_tunnel(out, key_file)
        assert (user, addr1) == ("ubuntu", hosts.addresses[-1])
        assert stats["system"]["comfyui_version"] == "0.0.1-fixture"
        assert ssh_allowed_from(ssh_to(base["key"], user, addr1)) == [f"{hosts.net.gateway}/32"]
        # the host keys were pinned from the guest attributes the guest published, every type, before SSH was used
        assert gce.requests_for("instances.getGuestAttributes")
        assert pinned(key_file, f"sdcloud-gcp-{inst['id']}") == {
            f"{k.split('/', 1)[1]} {v}" for k, v in hosts.host_keys("gce-" + name).items()}
        assert len(pinned(key_file, f"sdcloud-gcp-{inst['id']}")) == 3  # rsa, ecdsa, ed25519

        # 2. status: listed by the inventory plugin from the stand-in, services up
        _, out = play(env, "status.yml", xv)
        assert re.search(rf"^\s*{name}: running on gcp \(us-central1-a\), g2-standard-4, nvidia-l4,", out, re.M), out[-3000:]
        assert re.search(r"^\s*comfyui: running", out, re.M), out[-3000:]

        # 3. stop: instance TERMINATED (disk kept), test host off, the disk's monthly cost said
        _, out = play(env, "stop.yml", xv)
        assert gce.instances[(PROJECT, "us-central1-a", name)]["status"] == "TERMINATED"
        assert (PROJECT, "us-central1-a", name) in gce.disks
        assert hosts.net.machine("gce-" + name).state == "stopped"
        assert "its disk is kept (about $5.00/month" in out, out[-3000:]
        _, out = play(env, "status.yml", xv)
        assert re.search(rf"^\s*{name}: stopped on gcp", out, re.M), out[-3000:]

        # a guest that publishes another host key than the one its sshd shows (what a machine in the middle
        # would present) is refused: the pinned key is checked on every connection
        hosts.forged_keys = {"hostkeys/ssh-ed25519": FORGED_ED25519}
        try:
            rc, out = play(env, "start.yml", dict(xv, sdcloud_wait_timeout=20), check=False)
        finally:
            hosts.forged_keys = None
        assert rc != 0 and re.search(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed", out), out[-3000:]
        assert f"ssh-ed25519 {FORGED_ED25519}" in pinned(key_file, f"sdcloud-gcp-{inst['id']}")
        # the instance runs on; its guest publishes its own keys again (as at its next boot)
        gce.set_guest_attributes(PROJECT, "us-central1-a", name, hosts.host_keys("gce-" + name))

        # 4. start: same instance and disk, a new address picked up through the inventory; the real key pinned again
        _, out = play(env, "start.yml", xv)
        assert f"ssh-ed25519 {FORGED_ED25519}" not in pinned(key_file, f"sdcloud-gcp-{inst['id']}")
        addr2 = hosts.addresses[-1]
        assert addr2 != addr1
        user, addr, stats = through_tunnel(out, key_file)
        assert addr == addr2 and stats["system"]["comfyui_version"] == "0.0.1-fixture"

        # 5. teardown: nothing left on the stand-in, labelled or not, and no test host
        _, out = play(env, "teardown.yml", xv)
        assert f"nothing of {name} is left on gcp" in out
        assert "listed again: 0 resources labelled sdcloud-deployment=e2e-gcp remain" in out
        assert gce_leftovers(gce) == {"instances": [], "disks": [], "firewalls": [], "addresses": []}
        assert labelled("gcp", gce.url) == []
        assert hosts.names() == []
        assert subprocess.run(["ssh-keygen", "-F", f"sdcloud-gcp-{inst['id']}", "-f", str(key_file)],
                              capture_output=True, check=False).returncode != 0, "teardown forgets the host key"


def test_aws_lifecycle(base, moto, hosts):
    name, key_file = "e2e-aws", base["tmp"] / "known_hosts"
    env, xv = aws_env(base, moto, name), cloud_vars(base, "aws", sdcloud_spot=False)
    with teardown_on_failure(env, xv):
        used_before = set(hosts.addresses)

        # 1. provision: key pair, security group from the detected address, on-demand g6.xlarge
        _, out = play(env, "provision.yml", xv)
        found = aws_instances(moto, name)
        assert [(i.state, i.machine_type, i.spot) for i in found] == [("running", "g6.xlarge", False)]
        iid, addr1 = found[0].id, found[0].public_ip
        assert hosts.names() == ["aws-" + iid] and addr1 == hosts.addresses[-1]
        # an address a deleted GCE machine had (with other host keys): per-instance host key names keep it working
        assert addr1 in used_before, (addr1, used_before)
        sg = _ec2(moto).describe_security_groups(GroupNames=["sdcloud-" + name])["SecurityGroups"][0]
        assert [(p["FromPort"], [r["CidrIp"] for r in p["IpRanges"]]) for p in sg["IpPermissions"]] == \
            [(22, [f"{hosts.net.gateway}/32"])]
        assert re.search(rf"{name} runs on aws \(us-east-1a\), g6\.xlarge,\s+on-demand, ~\$0\.81/h \(sdcloud catalog "
                         r"estimate\)", out), out[-3000:]
        user, addr, stats = through_tunnel(out, key_file)
        assert (user, addr) == ("ubuntu", addr1) and stats["system"]["comfyui_version"] == "0.0.1-fixture"
        # the host keys cloud-init printed on the console were pinned, every type
        assert pinned(key_file, f"sdcloud-aws-{iid.replace('-', '_')}") == {
            f"{k.split('/', 1)[1]} {v}" for k, v in hosts.host_keys("aws-" + iid).items()}

        # 2. status
        _, out = play(env, "status.yml", xv)
        assert re.search(rf"^\s*{name}: running on aws \(us-east-1a\), g6\.xlarge, nvidia-l4,", out, re.M), out[-3000:]

        # 3. stop
        _, out = play(env, "stop.yml", xv)
        assert [i.state for i in aws_instances(moto, name)] == ["stopped"]
        assert hosts.net.machine("aws-" + iid).state == "stopped"
        assert "its disk is kept (about $4.00/month" in out, out[-3000:]
        _, out = play(env, "status.yml", xv)
        assert re.search(rf"^\s*{name}: stopped on aws", out, re.M), out[-3000:]

        # 4. start: a new address
        _, out = play(env, "start.yml", xv)
        addr2 = aws_instances(moto, name)[0].public_ip
        assert addr2 != addr1 and addr2 == hosts.addresses[-1]
        _, addr, stats = through_tunnel(out, key_file)
        assert addr == addr2 and stats["system"]["comfyui_version"] == "0.0.1-fixture"

        # 5. teardown
        _, out = play(env, "teardown.yml", xv)
        assert f"nothing of {name} is left on aws" in out
        assert aws_leftovers(moto) == {"instances": [], "volumes": [], "security_groups": [], "key_pairs": [],
                                       "addresses": [], "spot_requests": []}
        assert labelled("aws", moto.url) == []
        assert hosts.names() == []


def _ec2(moto):
    import boto3

    return boto3.client("ec2", region_name=AWS_REGION, endpoint_url=moto.url, aws_access_key_id="testing",
                        aws_secret_access_key="testing")


# --- half-failed provisions ---------------------------------------------------------------------


def test_gcp_half_failed_provision_then_teardown(base, gce, hosts):
    name = "e2e-gcp-half"
    env, xv = gcp_env(base, gce, name), cloud_vars(base, "gcp")
    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", keep_disk=True)  # every zone, leaves a disk behind
    try:
        rc, out = play(env, "provision.yml", xv, check=False)
    finally:
        gce.clear_faults()
    assert rc != 0 and "ZONE_RESOURCE_POOL_EXHAUSTED" in out, out[-3000:]
    left = gce_leftovers(gce)
    assert left["firewalls"] == [gcp_backend.firewall_name(name)] and left["instances"] == [], left
    assert labelled("gcp", gce.url), "the half-failed run must have left labelled resources to clean up"

    _, out = play(env, "teardown.yml", xv)
    assert f"nothing of {name} is left on gcp" in out
    assert gce_leftovers(gce) == {"instances": [], "disks": [], "firewalls": [], "addresses": []}
    assert labelled("gcp", gce.url) == []
    assert hosts.names() == []


def test_aws_half_failed_provision_then_teardown(base, moto, hosts):
    name = "e2e-aws-half"
    env, xv = aws_env(base, moto, name), cloud_vars(base, "aws")
    moto.fault("RunInstances", "InsufficientInstanceCapacity")  # every zone, spot and on-demand
    try:
        rc, out = play(env, "provision.yml", xv, "-e", '{"sdcloud_spot_fallback": "on-demand"}', check=False)
    finally:
        moto._call("DELETE", "/_faults")
    assert rc != 0 and "InsufficientInstanceCapacity" in out, out[-3000:]
    left = aws_leftovers(moto)
    assert left["key_pairs"] == ["sdcloud-" + name] and left["security_groups"] == ["sdcloud-" + name], left
    assert left["instances"] == [], left

    _, out = play(env, "teardown.yml", xv)
    assert f"nothing of {name} is left on aws" in out
    assert aws_leftovers(moto) == {"instances": [], "volumes": [], "security_groups": [], "key_pairs": [],
                                   "addresses": [], "spot_requests": []}
    assert labelled("aws", moto.url) == []
    assert hosts.names() == []


# --- the static provider ------------------------------------------------------------------------
# It runs on its own bridge (6), so it runs in the background while the cloud tests run on bridge 5;
# test_static_host waits for it and checks what it saw.


# on the static host after `teardown.yml -e sdcloud_teardown_uninstall=true`: what sdcloud installed, each present
# or absent (the comfyui role's user, app and unit; autostop's timer; sdcloud's nft table), and the models dir
UNINSTALL_CHECK = "; ".join(f"{test} && echo '{what}: present' || echo '{what}: absent'" for what, test in (
    ("user comfyui", "id comfyui >/dev/null 2>&1"),
    ("/opt/comfyui", "test -e /opt/comfyui"),
    ("comfyui.service", "test -e /etc/systemd/system/comfyui.service"),
    ("sdcloud-autostop.timer", "test -e /etc/systemd/system/sdcloud-autostop.timer"),
    ("nft table inet sdcloud", "nft list table inet sdcloud >/dev/null 2>&1"),
    ("models dir", "test -d /opt/sdcloud/models"),
))


def _static_flow(base, tmp_path) -> dict:
    """A test host listed in static_hosts through provision, status, stop and teardown."""
    seen = {}
    net = nspawn.Network(net=STATIC_NET)
    box = net.machine("e2e-static-box")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "box_key")], check=True)
    box.create((tmp_path / "box_key.pub").read_text())
    box.start()
    address = box.meta["address"]
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    (inv / "sdcloud.yml").write_text(json.dumps({
        "plugin": "sdcloud", "deployment": "e2e-static", "providers": ["static"],
        "static_hosts": [{"name": "homebox", "address": address, "user": "root", "gpu": "nvidia-rtx-4090",
                          "ssh_private_key_file": str(tmp_path / "box_key")}]}))
    env = dict(base["env"], SDCLOUD_NET=str(STATIC_NET), SDCLOUD_NAME="e2e-static")
    xv = {"sdcloud_provider": "static", "sdcloud_ssh_key_path": base["key"], "sdcloud_gpu_present": False,
          "sdcloud_wait_timeout": 120}
    inv_args = ("-i", str(inv / "sdcloud.yml"))
    box_ssh = ssh_to(tmp_path / "box_key", "root", address)
    for step, extra in (("provision.yml", {}), ("status.yml", {}), ("stop.yml", {}), ("teardown.yml", {}),
                        ("uninstall", {"sdcloud_teardown_uninstall": True})):
        rc, out = play(env, "teardown.yml" if step == "uninstall" else step, dict(xv, **extra), *inv_args, check=False)
        seen[step] = (rc, out)
        if rc != 0:
            return seen
        if step == "provision.yml":
            seen["tunnel"] = through_tunnel(out, base["tmp"] / "known_hosts_static")
            seen["ssh_allowed_from"] = ssh_allowed_from(box_ssh)
            seen["after_provision"] = subprocess.run([*box_ssh, UNINSTALL_CHECK], capture_output=True, text=True,
                                                     check=False).stdout
    # what is left on the (systemd) host after the uninstall: one line per check
    seen["after_uninstall"] = subprocess.run([*box_ssh, UNINSTALL_CHECK], capture_output=True, text=True, check=False).stdout
    seen["box_state"] = box.state
    seen["gateway"] = net.gateway
    box.destroy()
    return seen


@pytest.fixture(scope="module")
def static_flow(base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("static")
    result = {}

    def run():
        try:
            result.update(_static_flow(base, tmp))
        except Exception as exc:  # noqa: BLE001 - re-raised by test_static_host
            result["error"] = exc

    t = threading.Thread(target=run, name="static-flow")
    t.start()
    yield lambda: (t.join(900), result)[1]
    t.join(900)


def test_static_host(static_flow):
    """A test host listed in static_hosts: configured, listed, left alone by stop and teardown."""
    seen = static_flow()
    if "error" in seen:
        raise seen["error"]
    for step in ("provision.yml", "status.yml", "stop.yml", "teardown.yml", "uninstall"):
        rc, out = seen[step]
        assert rc == 0, f"{step} failed:\n{e2e_util.failed_tasks(out)}\n{out[-4000:]}"
    out = seen["provision.yml"][1]
    assert re.search(r"e2e-static runs on static \(static\),\s+on-demand, ~\$0\.00/h, at 10\.87\.6\.\d+\.", out), out[-3000:]
    assert "-o HostKeyAlias=sdcloud-static-homebox -o StrictHostKeyChecking=accept-new" in out, out[-3000:]
    user, _, stats = seen["tunnel"]
    assert user == "root" and stats["system"]["comfyui_version"] == "0.0.1-fixture"
    # the host firewall lets SSH in from where the connection came (the bridge address), nothing else
    assert seen["ssh_allowed_from"] == [f"{seen['gateway']}/32"]
    out = seen["status.yml"][1]
    assert re.search(r"^\s*homebox: running on static", out, re.M), out[-3000:]
    assert re.search(r"^\s*comfyui: running", out, re.M), out[-3000:]
    assert "sdcloud does not stop hosts you already have" in seen["stop.yml"][1]
    assert "sdcloud does not delete hosts you already have" in seen["teardown.yml"][1]
    assert seen["box_state"] == "running", "static hosts are not stopped or deleted"
    # asked to, teardown removes what sdcloud installed on a systemd host, and keeps the models
    assert "absent" not in seen["after_provision"], seen["after_provision"]
    assert "What sdcloud installed on it was removed, its models kept." in " ".join(seen["uninstall"][1].split())
    assert seen["after_uninstall"].splitlines() == [
        "user comfyui: absent", "/opt/comfyui: absent", "comfyui.service: absent", "sdcloud-autostop.timer: absent",
        "nft table inet sdcloud: absent", "models dir: present"], seen["after_uninstall"]
