"""Inventory and failover benchmark: `python bench/inventory_bench.py`.

1. Listing the same 300 instances, side by side in one run, as `ansible-inventory --list` wall time:
   - AWS: our sdcloud inventory plugin vs amazon.aws.aws_ec2, both against moto (AWS_ENDPOINT_URL);
   - GCP: our plugin vs google.cloud.gcp_compute, both against the Compute Engine stand-in. google.cloud
     hard-codes https://www.googleapis.com, so its requests go through a loopback HTTPS proxy that
     terminates TLS with a throwaway certificate (REQUESTS_CA_BUNDLE) and forwards to the stand-in; that
     hop costs it a TLS handshake, which the report names.
   Each command runs REPEAT times (median reported), and a startup baseline (`ansible-inventory` on an
   empty inventory, in each venv) is measured so the plugin's own share is shown too. Ours is also timed
   with its inventory cache on (ansible.builtin.jsonfile, filled by one untimed run first), which
   answers without asking the cloud.
2. gpu_instance's per-zone failover overhead: the module's main() in-process against each stand-in,
   time to create after N zones failed for capacity vs a first-zone success.

amazon.aws and google.cloud come from the `ansible` PyPI package, which is not in the product's
requirements: this script installs it (pinned) into .cache/bench-venv on first use and says so.
Stand-ins only: no cloud is contacted. Figures are for this machine; ratios matter more than seconds.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import pathlib
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv" / "bin" / "python"

# Re-run with the project's venv (moto, boto3, google-cloud-compute, ansible-core) when started with another Python.
if pathlib.Path(sys.prefix).resolve() != (ROOT / ".venv").resolve() and VENV_PY.exists() and not os.environ.get("SDCLOUD_BENCH_REEXEC"):
    os.environ["SDCLOUD_BENCH_REEXEC"] = "1"
    os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])

import ansible.module_utils  # noqa: E402

_MU = str(ROOT / "plugins" / "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)
sys.path.insert(0, str(ROOT / "tests" / "standins"))

import gce_server  # noqa: E402
import moto_faults  # noqa: E402

ANSIBLE_PIN = "12.3.0"  # bundles amazon.aws 10.x and google.cloud 1.x; works with ansible-core 2.19
BENCH_REQUIREMENTS = [f"ansible=={ANSIBLE_PIN}", "ansible-core==2.19.14", "boto3==1.44.5", "requests", "google-auth"]
BENCH_VENV = ROOT / ".cache" / "bench-venv"
N_INSTANCES = 300
REPEAT = int(os.environ.get("SDCLOUD_BENCH_REPEAT", "5"))
PROJECT = "bench-project"
GCP_ZONES = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f", "us-east1-b", "us-east1-c"]
AWS_REGION = "us-east-1"


def say(msg):
    print(msg, flush=True)


# --- the bench venv -----------------------------------------------------------------------------


def bench_venv() -> pathlib.Path:
    """.cache/bench-venv with the pinned `ansible` package (amazon.aws, google.cloud); made on first use."""
    py = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / ".sdcloud-bench"
    if py.exists() and stamp.exists() and stamp.read_text().strip() == " ".join(BENCH_REQUIREMENTS):
        say(f"bench venv: {BENCH_VENV} (ansible {ANSIBLE_PIN}, already installed)")
        return BENCH_VENV
    say(f"bench venv: creating {BENCH_VENV} and installing {' '.join(BENCH_REQUIREMENTS)} "
        "(baselines only, not a product requirement; takes a minute or two) ...")
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *BENCH_REQUIREMENTS], check=True)
    stamp.write_text(" ".join(BENCH_REQUIREMENTS) + "\n")
    return BENCH_VENV


def collection_version(venv: pathlib.Path, name: str) -> str:
    site = next(venv.glob("lib/python*/site-packages"))
    manifest = site / "ansible_collections" / name.replace(".", "/") / "MANIFEST.json"
    try:
        return json.loads(manifest.read_text())["collection_info"]["version"]
    except (OSError, ValueError, KeyError):
        return "?"


# --- timing ansible-inventory -------------------------------------------------------------------


def time_inventory(ansible_inventory: str, inventory: pathlib.Path, env: dict, expect: int | None) -> tuple:
    """Median wall time of `ansible-inventory -i inventory --list` over REPEAT runs; checks the host count."""
    times, hosts = [], None
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        res = subprocess.run([ansible_inventory, "-i", str(inventory), "--list"], env=env, capture_output=True,
                             text=True, check=False, cwd=inventory.parent)
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise RuntimeError(f"ansible-inventory -i {inventory} failed:\n{res.stderr[-3000:]}")
        data = json.loads(res.stdout)
        hosts = len(data.get("_meta", {}).get("hostvars", {}))
        if "WARNING" in res.stderr and "cannot list" in res.stderr:
            raise RuntimeError(f"{inventory.name} warned:\n{res.stderr[-2000:]}")
    if expect is not None and hosts != expect:
        raise RuntimeError(f"{inventory.name} listed {hosts} hosts, expected {expect}")
    return statistics.median(times), hosts


def base_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "AWS_", "GOOGLE_", "SDCLOUD_"))}
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="False")
    env.update(extra)
    return env


# --- AWS ----------------------------------------------------------------------------------------


def seed_moto(url: str, n: int):
    import boto3

    ec2 = boto3.client("ec2", region_name=AWS_REGION, endpoint_url=url, aws_access_key_id="bench",
                       aws_secret_access_key="bench")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    made = 0
    while made < n:
        batch = min(50, n - made)
        res = ec2.run_instances(ImageId=ami, MinCount=batch, MaxCount=batch, InstanceType="g6.xlarge",
                                NetworkInterfaces=[{"DeviceIndex": 0, "AssociatePublicIpAddress": True}],
                                TagSpecifications=[{"ResourceType": "instance", "Tags": [
                                    {"Key": "sdcloud-managed", "Value": "true"},
                                    {"Key": "sdcloud-ssh-user", "Value": "ubuntu"}]}])
        for i, inst in enumerate(res["Instances"]):
            name = f"bench-{made + i:03d}"
            ec2.create_tags(Resources=[inst["InstanceId"]], Tags=[{"Key": "Name", "Value": name},
                                                                 {"Key": "sdcloud-deployment", "Value": name}])
        made += batch


def bench_aws(venv: pathlib.Path, tmp: pathlib.Path) -> dict:
    ctl = moto_faults.shared_server()
    ctl.reset()
    t0 = time.perf_counter()
    seed_moto(ctl.url, N_INSTANCES)
    say(f"aws: seeded {N_INSTANCES} tagged g6.xlarge instances in moto in {time.perf_counter() - t0:.1f}s")
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_ENDPOINT_URL": ctl.url,
             "AWS_DEFAULT_REGION": AWS_REGION}

    ours = tmp / "aws" / "sdcloud.yml"
    ours.parent.mkdir()
    ours.write_text(json.dumps({"plugin": "sdcloud", "providers": ["aws"], "aws_regions": [AWS_REGION]}))
    theirs = tmp / "aws" / "bench.aws_ec2.yml"
    theirs.write_text(json.dumps({
        "plugin": "amazon.aws.aws_ec2", "regions": [AWS_REGION],
        "filters": {"tag:sdcloud-managed": "true",
                    "instance-state-name": ["pending", "running", "stopping", "stopped"]},
        "hostnames": ["tag:Name"], "compose": {"ansible_host": "public_ip_address"},
        "keyed_groups": [{"key": "instance_type", "prefix": "type"}, {"key": "state.name", "prefix": "state"}]}))
    return compare("aws", venv, tmp, ours, theirs, env=creds, their_name="amazon.aws.aws_ec2",
                   their_version=collection_version(venv, "amazon.aws"), note="")


# --- GCP ----------------------------------------------------------------------------------------


def seed_gce(gce, n: int):
    url = gce.url
    for i in range(n):
        zone = GCP_ZONES[i % len(GCP_ZONES)]
        body = {"name": f"bench-{i:03d}", "machineType": f"zones/{zone}/machineTypes/g2-standard-4",
                "labels": {"sdcloud-managed": "true", "sdcloud-deployment": f"bench-{i:03d}"},
                "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                    "sourceImage": "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts", "diskSizeGb": "50"}}],
                "networkInterfaces": [{"network": "global/networks/default",
                                       "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}],
                "metadata": {"items": [{"key": "ssh-keys", "value": "ubuntu:ssh-ed25519 AAAA bench"}]},
                "scheduling": {"provisioningModel": "SPOT", "instanceTerminationAction": "STOP"}}
        op = _post(f"{url}/compute/v1/projects/{PROJECT}/zones/{zone}/instances", body)
        _post(f"{url}/compute/v1/projects/{PROJECT}/zones/{zone}/operations/{op['name']}/wait", None)


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else b"", method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class TlsForwarder:
    """A loopback HTTPS proxy for google.cloud, whose URLs are hard-coded to https://www.googleapis.com:
    answers CONNECT, terminates TLS with a throwaway certificate for that name (trusted through
    REQUESTS_CA_BUNDLE) and forwards each request, keep-alive, to the stand-in over plain HTTP."""

    HOSTS = ("www.googleapis.com", "compute.googleapis.com", "oauth2.googleapis.com")

    def __init__(self, upstream: str, workdir: pathlib.Path):
        self.upstream = upstream.split("://", 1)[1]
        self.cert, key = workdir / "googleapis.pem", workdir / "googleapis.key"
        san = ",".join("DNS:" + h for h in self.HOSTS)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=www.googleapis.com", "-addext", f"subjectAltName={san}", "-keyout", str(key),
                        "-out", str(self.cert)], check=True, capture_output=True)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(self.cert), str(key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(conn,), daemon=True).start()

    def _connect(self, conn):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode()
            if not line.startswith("CONNECT ") or line.split()[1].split(":")[0] not in self.HOSTS:
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = self.ctx.wrap_socket(conn, server_side=True)
            forwarder = self

            class Handler(http.server.BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.1"
                disable_nagle_algorithm = True

                def log_message(self, *args):
                    pass

                def _forward(self):
                    forwarder.requests += 1
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else None
                    up = http.client.HTTPConnection(forwarder.upstream, timeout=60)
                    up.request(self.command, self.path, body=body,
                               headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                    resp = up.getresponse()
                    data = resp.read()
                    up.close()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

                do_GET = do_POST = do_DELETE = do_PATCH = _forward  # noqa: N815

            Handler(tls, ("127.0.0.1", 0), None)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def bench_gcp(venv: pathlib.Path, tmp: pathlib.Path) -> dict:
    gce = gce_server.GceStandin(accelerators=dict.fromkeys(GCP_ZONES, ["nvidia-l4", "nvidia-tesla-t4"])).start()
    try:
        t0 = time.perf_counter()
        seed_gce(gce, N_INSTANCES)
        say(f"gcp: seeded {N_INSTANCES} labelled g2-standard-4 instances in the GCE stand-in in "
            f"{time.perf_counter() - t0:.1f}s")
        (tmp / "gcp").mkdir()
        ours = tmp / "gcp" / "sdcloud.yml"
        ours.write_text(json.dumps({"plugin": "sdcloud", "providers": ["gcp"], "gcp_project": PROJECT}))
        proxy = TlsForwarder(gce.url, tmp / "gcp")
        theirs = tmp / "gcp" / "bench.gcp_compute.yml"
        theirs.write_text(json.dumps({
            "plugin": "google.cloud.gcp_compute", "projects": [PROJECT], "auth_kind": "accesstoken",
            "access_token": "bench-not-a-token", "filters": ["labels.sdcloud-managed = true"],
            "hostnames": ["name"], "compose": {"ansible_host": "networkInterfaces[0].accessConfigs[0].natIP"},
            "keyed_groups": [{"key": "machineType", "prefix": "type"}, {"key": "status", "prefix": "state"}]}))
        env = {"SDCLOUD_GCP_ENDPOINT": gce.url}
        theirs_env = {"HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "NO_PROXY": "", "no_proxy": "",
                      "REQUESTS_CA_BUNDLE": str(proxy.cert)}
        result = compare("gcp", venv, tmp, ours, theirs, env=env, their_name="google.cloud.gcp_compute",
                         their_version=collection_version(venv, "google.cloud"),
                         note="its requests pass a loopback TLS proxy (handshake + one extra hop), ours go to the "
                              "stand-in in plain HTTP", theirs_env=theirs_env)
        result["proxied_requests"] = proxy.requests
        proxy.close()
        return result
    finally:
        gce.stop()


# --- one comparison -----------------------------------------------------------------------------


def compare(cloud, venv, tmp, ours, theirs, *, env, their_name, their_version, note, theirs_env=None) -> dict:
    empty = tmp / cloud / "empty.yml"
    empty.write_text("all: {}\n")
    ours_env = base_env(dict(env, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg")))
    cfg = tmp / cloud / "ansible.cfg"
    cfg.write_text("[inventory]\nenable_plugins = amazon.aws.aws_ec2, google.cloud.gcp_compute, yaml\n")
    their_env = base_env(dict(env, **(theirs_env or {}), ANSIBLE_CONFIG=str(cfg)))
    our_bin = str(ROOT / ".venv" / "bin" / "ansible-inventory")
    their_bin = str(venv / "bin" / "ansible-inventory")
    say(f"{cloud}: timing {REPEAT} runs each ...")
    ours_t, ours_n = time_inventory(our_bin, ours, ours_env, N_INSTANCES)
    theirs_t, theirs_n = time_inventory(their_bin, theirs, their_env, N_INSTANCES)
    ours_base, _ = time_inventory(our_bin, empty, ours_env, None)
    theirs_base, _ = time_inventory(their_bin, empty, their_env, None)
    cached = ours.parent / "cached" / "sdcloud.yml"  # the same listing with the plugin's cache on
    cached.parent.mkdir()
    cached.write_text(json.dumps(dict(json.loads(ours.read_text()), cache=True, cache_plugin="ansible.builtin.jsonfile",
                                      cache_connection=str(cached.parent / "cache"), cache_timeout=3600)))
    subprocess.run([our_bin, "-i", str(cached), "--list"], env=ours_env, capture_output=True, check=True,
                   cwd=cached.parent)  # fills the cache
    ours_cached, _ = time_inventory(our_bin, cached, ours_env, N_INSTANCES)
    return {"cloud": cloud, "baseline": f"{their_name} {their_version}", "hosts": (ours_n, theirs_n),
            "ours": ours_t, "theirs": theirs_t, "ours_startup": ours_base, "theirs_startup": theirs_base,
            "ours_cached": ours_cached, "ratio": theirs_t / ours_t, "note": note}


# --- failover overhead --------------------------------------------------------------------------


def bench_failover() -> list:
    from ansible.module_utils.sdcloud import aws, errors, gcp  # noqa: F401 - imported for their side effects on paths

    gpu_instance = moto_faults.load_module("gpu_instance")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd bench"
    rows = []

    # AWS: us-east-1a..f; the first N answer InsufficientInstanceCapacity
    ctl = moto_faults.shared_server()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_ENDPOINT_URL=ctl.url)
    aws_zones = [f"{AWS_REGION}{c}" for c in "abcdef"]
    for n in (0, 1, 3, 5):
        samples = []
        for _ in range(3):
            ctl.reset()
            for z in aws_zones[:n]:
                ctl.fault("RunInstances", "InsufficientInstanceCapacity", zone=z)
            args = {"provider": "aws", "name": "bench", "gpu": "nvidia-l4", "zones": aws_zones, "spot": True,
                    "ssh_public_key": key, "wait_timeout": 60}
            t0 = time.perf_counter()
            failed, res = moto_faults.run_module(gpu_instance.main, args)
            samples.append(time.perf_counter() - t0)
            if failed or res["instance"]["zone"] != aws_zones[n]:
                raise RuntimeError(f"aws failover run with {n} failing zones: {res.get('msg')}")
        rows.append(("aws", n, statistics.median(samples)))

    # GCP: six zones; the first N answer ZONE_RESOURCE_POOL_EXHAUSTED (as a failed insert operation)
    for n in (0, 1, 3, 5):
        samples = []
        for _ in range(3):
            with gce_server.GceStandin(accelerators=dict.fromkeys(GCP_ZONES, ["nvidia-l4"])) as gce:
                for z in GCP_ZONES[:n]:
                    gce.add_fault("insert", "ZONE_RESOURCE_POOL_EXHAUSTED", zone=z)
                args = {"provider": "gcp", "project": PROJECT, "endpoint": gce.url, "name": "bench", "gpu": "nvidia-l4",
                        "zones": GCP_ZONES, "spot": True, "ssh_public_key": key, "wait_timeout": 60,
                        "image_family": "ubuntu-os-cloud/ubuntu-2204-lts"}
                t0 = time.perf_counter()
                failed, res = moto_faults.run_module(gpu_instance.main, args)
                samples.append(time.perf_counter() - t0)
                if failed or res["instance"]["zone"] != GCP_ZONES[n]:
                    raise RuntimeError(f"gcp failover run with {n} failing zones: {res.get('msg')}")
        rows.append(("gcp", n, statistics.median(samples)))
    return rows


# --- report -------------------------------------------------------------------------------------


def report(listings: list, skipped: list, failover: list):
    say("")
    say(f"=== listing {N_INSTANCES} instances: `ansible-inventory --list`, median of {REPEAT} runs (seconds)")
    say(f"{'cloud':6} {'baseline':32} {'ours':>7} {'theirs':>7} {'ratio':>7}   "
        f"{'ours-startup':>12} {'theirs-startup':>14} {'plugin ratio':>12} {'ours cached':>11}")
    for r in listings:
        op, tp = r["ours"] - r["ours_startup"], r["theirs"] - r["theirs_startup"]
        r["plugin_ratio"] = tp / op if op > 0.005 else None
        plugin_ratio = f"{r['plugin_ratio']:.2f}x" if r["plugin_ratio"] else "n/a"
        say(f"{r['cloud']:6} {r['baseline']:32} {r['ours']:7.2f} {r['theirs']:7.2f} {r['ratio']:6.2f}x   "
            f"{op:12.2f} {tp:14.2f} {plugin_ratio:>12} {r['ours_cached']:11.2f}")
    say("ratio = theirs / ours (above 1: ours is faster); the startup columns subtract `ansible-inventory` on an "
        "empty inventory in the same venv; `ours cached` is ours with its inventory cache filled")
    slower = [f"{r['baseline']} ({r['ratio']:.2f}x)" for r in listings if r["ratio"] < 1]
    say("ours is at least as fast as every baseline" if not slower else f"ours is SLOWER than {', '.join(slower)}")
    for r in listings:
        if r["note"]:
            say(f"  {r['cloud']}: {r['note']} ({r.get('proxied_requests', '?')} proxied requests over all runs)")
    for reason in skipped:
        say(f"  SKIPPED: {reason}")
    say("")
    say("=== gpu_instance per-zone failover (module main() in-process, median of 3, seconds)")
    for cloud in ("aws", "gcp"):
        rows = {n: t for c, n, t in failover if c == cloud}
        if not rows:
            continue
        base = rows[0]
        parts = [f"first zone {base:.3f}"] + [f"after {n} failed {t:.3f} ({t / base:.2f}x)" for n, t in rows.items() if n]
        n_max = max(rows)
        per = (rows[n_max] - base) / n_max if n_max else 0.0
        say(f"{cloud}: " + ", ".join(parts) + f"; about {per * 1000:.0f} ms per failed zone")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=pathlib.Path, help="also write the listing figures and ratios to this file")
    args = parser.parse_args()
    say(__doc__.splitlines()[0])
    venv = bench_venv()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="sdcloud-bench-"))
    listings, skipped = [], []
    try:
        listings.append(bench_aws(venv, tmp))
        if shutil.which("openssl") is None:
            skipped.append("google.cloud.gcp_compute: openssl is missing (needed for the loopback TLS proxy)")
        else:
            try:
                listings.append(bench_gcp(venv, tmp))
            except RuntimeError as exc:
                skipped.append(f"google.cloud.gcp_compute could not be pointed at the stand-in: {exc}")
        failover = bench_failover()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(listings, skipped, failover)
    if args.json:
        args.json.write_text(json.dumps({"instances": N_INSTANCES, "repeat": REPEAT, "listings": listings,
                                         "skipped": skipped, "failover": failover}, indent=2) + "\n")
        say(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
