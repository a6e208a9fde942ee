"""Krita AI Diffusion end to end: the plugin's OWN client code decides whether Krita can use what sdcloud serves.

On the local provider (bridge SDCLOUD_NET=4, deployment `krita`), provision.yml brings up the REAL ComfyUI
and the REAL custom nodes at the Krita plugin 1.35.0 pins (all in ../shared/upstream, served on the bridge laid
out like GitHub, reached through the product's mirror setting), behind public access (the TLS proxy). Then:

- the plugin 1.35.0 client (tests/e2e/krita_client.py: its Connection, as Krita's "Connect" button runs it)
  through the exact `ssh -L` tunnel the summary prints -> "connected", SD XL a supported workload once the
  model files are there; the plugin's LoRA upload lands in ComfyUI's upload folder and is listed;
- the same client through the proxy at https://<address>/<token> (what the summary says to type into Krita),
  trusting the machine's certificate as a user would -> "connected";
- the plugin 1.53.0 client's connect path through the proxy: it gets past /system_stats, the websocket probe
  and /object_info, and refuses only for the nodes 1.53.0 needs that 1.35.0's server lacks (its ComfyUI commit
  is not available here) - proof the URL token reaches every request, websocket included;
- a second test host probes the firewall: the proxy port answers (401 without the token), ComfyUI's own port
  and SSH do not.

Model files cannot be downloaded here (no Hugging Face), so the names the Krita SDXL manifest
(inventory/models/krita-sdxl.yml) declares are filled with LABELLED PLACEHOLDERS: one line of text each, and
for the checkpoint a header-only safetensors with the tensor names and shapes of an SDXL UNet (made on the
machine from ComfyUI's own UNet class), enough for the tooling nodes' model_info to classify it as SDXL.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.request

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
UPSTREAM = ROOT.parent / "shared" / "upstream"
NET = "4"
NAME = "krita"
GATEWAY = f"10.87.{NET}.1"
# Not the defaults, so that every part which must agree on them is seen to (playbooks/vars/shape.yml): the UI
# listens on UI_PORT, the tunnel, the proxy, autostop and the summary use it; the sync and ComfyUI share MODELS;
# the firewall opens HTTPS_PORT and Krita's URL carries it.
UI_PORT, HTTPS_PORT, MODELS = 8288, 8443, "/srv/sdcloud-models"
SHAPE = {"sdcloud_comfyui_port": UI_PORT, "sdcloud_https_port": HTTPS_PORT, "sdcloud_models_dir": MODELS}
CACHE = pathlib.Path(os.environ.get("SDCLOUD_CACHE_DIR") or "/var/cache/sdcloud")
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import e2e_util  # noqa: E402
from e2e_util import machines, run_play  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="local machines need root (systemd-nspawn)"),
]

PINS = yaml.safe_load((ROOT / "roles/comfyui/vars/krita-1.35.0.yml").read_text())["__comfyui_krita"]
MANIFEST = yaml.safe_load((ROOT / "inventory/models/krita-sdxl.yml").read_text())
# Qt 5.15 from PyPI loads OpenSSL 1.1 at run time (Krita's own builds bundle theirs); Debian 12 has only 3.x.
# Debian 11's libssl1.1, from the Debian archive, pinned by its sha256 (bullseye main Packages).
LIBSSL = ("libssl1.1_1.1.1w-0+deb11u1_amd64.deb", "aadf8b4b197335645b230c2839b4517aa444fd2e8f434e5438c48a18857988f7",
          ["http://deb.debian.org/debian/pool/main/o/openssl/", "http://archive.debian.org/debian/pool/main/o/openssl/"])


def profile_vars():
    """The krita-1.35.0 profile's pins, in the mirror's tag names: the bundles hold each pinned commit rebuilt
    (same tree, new id) and tagged pin-<original sha> (../shared/upstream/README.md), so the test names them by
    tag. Same repositories, nodes and classes the krita profile resolves to (molecule/krita checks that)."""
    nodes = [{"name": n["name"], "git_url": n["git_url"], "version": "pin-" + n["version"]}
             for n in PINS["required_nodes"] + PINS["optional_nodes"]]
    classes = [c for n in PINS["required_nodes"] + PINS["optional_nodes"] for c in n["classes"]]
    return {"comfyui_version": "pin-" + PINS["comfy_version"], "comfyui_pip_lock": PINS["comfy_version"],
            "comfyui_custom_nodes": nodes, "comfyui_required_node_classes": classes}


def plugin_tree(tmp, tag):
    """The plugin as its release zip lays it out: ai_diffusion/ at `tag`, its websockets copy inside."""
    dest = tmp / f"krita-ai-diffusion-{tag}"
    subprocess.run(["git", "-c", "advice.detachedHead=false", "clone", "-q", "--branch", tag,
                    str(UPSTREAM / "krita-ai-diffusion.bundle"), str(dest)], check=True)
    ws = tmp / "websockets"
    if not ws.exists():
        subprocess.run(["git", "clone", "-q", str(UPSTREAM / "websockets.bundle"), str(ws)], check=True)
    shutil.rmtree(dest / "ai_diffusion" / "websockets", ignore_errors=True)
    shutil.copytree(ws, dest / "ai_diffusion" / "websockets", ignore=shutil.ignore_patterns(".git"))
    return dest


def libssl11():
    """Directory holding libssl.so.1.1/libcrypto.so.1.1 (cached below SDCLOUD_CACHE_DIR)."""
    name, sha, bases = LIBSSL
    libdir = CACHE / "libssl1.1" / "usr/lib/x86_64-linux-gnu"
    if (libdir / "libssl.so.1.1").exists():
        return libdir
    deb = CACHE / name
    if not deb.exists() or hashlib.sha256(deb.read_bytes()).hexdigest() != sha:
        errors = []
        for base in bases:
            try:
                with urllib.request.urlopen(base + name, timeout=60) as r:
                    data = r.read()
                break
            except OSError as e:
                errors.append(f"{base}: {e}")
        else:
            pytest.fail(f"cannot download {name} (Qt 5's OpenSSL) from the Debian archive: {errors}")
        assert hashlib.sha256(data).hexdigest() == sha, f"{name}: sha256 mismatch"
        deb.parent.mkdir(parents=True, exist_ok=True)
        deb.write_bytes(data)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "libssl1.1")], check=True)
    return libdir


def client(env, plugin, url, *extra, ca=None):
    """Run the plugin's own client (krita_client.py) and return its verdict."""
    cenv = dict(os.environ, QT_QPA_PLATFORM="offscreen", LD_LIBRARY_PATH=str(env["LIBSSL"]))
    args = [sys.executable, str(ROOT / "tests/e2e/krita_client.py"), str(plugin), url, *extra]
    if ca:
        cenv["SSL_CERT_FILE"] = str(ca)  # Python's ssl (the plugin's websockets): the system store a user edits
        args += ["--ca", str(ca)]
    res = subprocess.run(args, env=cenv, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, f"the plugin client crashed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    verdict = json.loads(res.stdout.strip().splitlines()[-1])
    print("plugin", verdict.get("plugin"), url.split("//")[0], "->", {k: v for k, v in verdict.items() if k != "trace"})
    return verdict


def ssh(env, ip, command, *, user="root", key=None, timeout=120, stdin="", port=22):
    res = subprocess.run(["ssh", "-i", key or env["SDCLOUD_TEST_KEY"], "-p", str(port), "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                          f"{user}@{ip}", command], input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{command}: rc={res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.stdout.strip()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("krita")
    e = dict(os.environ, SDCLOUD_NET=NET)  # for the cleanup, should local_env fail half-way
    try:
        e = e2e_util.local_env(tmp, NET, NAME)
        e["TMP"] = str(tmp)
        # the firewall's second opinion: a plain test host on the same bridge, made before the machine so
        # its address can be let in to the proxy port (and only there)
        probe_key = tmp / "probe_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(probe_key)], check=True)
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "create", "krita-probe", "--key", str(probe_key) + ".pub"],
                       env=e, check=True, capture_output=True, text=True)
        e["PROBE_KEY"] = str(probe_key)
        e["PROBE_IP"] = machines(e)["krita-probe"]["address"]
        e["LIBSSL"] = str(libssl11())
        yield e
    finally:
        # runs even when a step failed: delete the machines, the bridge and what we started
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=e, capture_output=True, check=False)


def play(env, name, *extra, check=True, access="public"):
    settings = {"sdcloud_ssh_key_path": env["SDCLOUD_TEST_KEY"], "sdcloud_access": access,
                "sdcloud_access_token_file": env["TMP"] + "/krita.token",
                "sdcloud_access_cidrs": [f"{GATEWAY}/32", env["PROBE_IP"] + "/32"], **SHAPE, **profile_vars()}
    return run_play(env, name, "-e", json.dumps(settings), *extra, check=check, vars_file="upstream-vars.yml")


# Built on the machine with ComfyUI's own UNet class: the SDXL UNet config as ComfyUI's
# comfy/model_detection.py (unet_config_from_diffusers_unet, `SDXL`) writes it; tensors on the meta device.
SDXL_HEADER = r"""
import json, struct, sys, torch
sys.path.insert(0, ".")
import comfy.cli_args
comfy.cli_args.args.cpu = True  # ComfyUI's --cpu: model_management (imported by comfy.ops) looks for a GPU otherwise
import comfy.ops
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
cfg = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
           num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320, num_res_blocks=[2, 2, 2],
           transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4], transformer_depth_middle=10,
           use_linear_in_transformer=True, context_dim=2048, num_head_channels=64,
           transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False, use_temporal_resblock=False)
unet = UNetModel(**cfg, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)
header = {"__metadata__": {"sdcloud": "PLACEHOLDER (sdcloud test fixture): SDXL UNet tensor names and shapes, no weights"}}
for k, v in unet.state_dict().items():
    header["model.diffusion_model." + k] = {"dtype": "F16", "shape": list(v.shape), "data_offsets": [0, 0]}
data = json.dumps(header).encode()
data += b" " * (-len(data) % 8)
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(data)) + data)
print(len(header) - 1)
"""


# The HTTP status of a GET, from a test host with Python but no curl (the certificate is checked elsewhere).
# Straight to the machine, not through the test host's package proxy (its environment names one): the
# firewall must see the probe's own address, and the proxy allows CONNECT to 443 only.
STATUS = """
import ssl, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                     urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))
try:
    print(opener.open(sys.argv[1], timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""


def place_placeholders(env, ip, models=MODELS, home="/opt/comfyui", port=22):
    """The manifest's names, as labelled placeholders, owned and moded as the models role leaves files."""
    ckpt = next(m for m in MANIFEST if m["kind"] == "checkpoints")
    lines = ["set -e"]
    for m in MANIFEST:
        if m is not ckpt:
            path = f"{models}/{m['kind']}/{m['name']}"
            lines.append(f"printf 'PLACEHOLDER (sdcloud test fixture) for %s\\n' '{m['name']}' > '{path}'")
    ssh(env, ip, "\n".join(lines), port=port)
    count = ssh(env, ip, f"cd {home}/app && {home}/venv/bin/python - {models}/checkpoints/{ckpt['name']}",
                timeout=300, stdin=SDXL_HEADER, port=port)
    assert int(count) > 1000, f"an SDXL UNet has ~1700 tensors, the placeholder {count}"
    return ckpt["name"]


def test_krita_plugin_connects_through_tunnel_and_proxy(env, tmp_path):
    # 1. provision (access through the SSH tunnel, the default): the real ComfyUI and the plugin's nodes
    _, out = play(env, "provision.yml", access="tunnel")
    ip = machines(env)[NAME]["address"]
    # the node's system libraries: comfyui_controlnet_aux imported (InpaintPreprocessor is its class)
    nodes = json.loads(ssh(env, ip, f"curl -fsS --max-time 60 http://127.0.0.1:{UI_PORT}/object_info"))
    assert {c for n in PINS["required_nodes"] + PINS["optional_nodes"] for c in n["classes"]} <= set(nodes)
    assert ssh(env, ip, "journalctl -u comfyui -o cat | grep -c 'Cannot import' || true") == "0"

    ckpt = place_placeholders(env, ip)
    plugin = plugin_tree(tmp_path, "v1.35.0")
    lora = tmp_path / "sdcloud-test-lora.safetensors"
    lora.write_bytes(b"PLACEHOLDER (sdcloud test fixture): a LoRA uploaded by the Krita plugin\n" * 64)

    # 2. the tunnel the summary prints (on a free local port instead of UI_PORT), the plugin's Custom Server URL
    m = e2e_util.TUNNEL_RE.search(out)
    assert m, out[-3000:]
    port = e2e_util.free_port()
    assert f"-L {UI_PORT}:127.0.0.1:{UI_PORT} " in m.group(1), m.group(1)
    cmd = e2e_util.local_forward(m.group(1), port)
    cmd[1:1] = ["-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
    tunnel = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        e2e_util.wait_port(port, tunnel)
        verdict = client(env, plugin, f"http://127.0.0.1:{port}", "--upload-lora", str(lora))
    finally:
        e2e_util.stop(tunnel)
    assert verdict["state"] == "connected", verdict
    assert "sdxl" in verdict["supported"], verdict
    # 3. the upload: through the plugin's call, into the service's own folder; the shared models untouched
    assert verdict["upload"] == "ok" and verdict["lora_listed"], verdict
    owner = ssh(env, ip, f"stat -c '%U %a' /opt/comfyui/uploads/loras/{lora.name}")
    assert owner.startswith("comfyui "), owner
    assert ssh(env, ip, f"stat -c '%U %a' {MODELS}/checkpoints/{ckpt} {MODELS}/loras") == "root 644\nroot 755"

    # 4. public access, switched on for the same machine: what the summary says to type into Krita, with the
    # machine's certificate (the copy it names) trusted as a user does
    _, out = play(env, "provision.yml")
    token = pathlib.Path(env["TMP"], "krita.token").read_text().strip()
    url = f"https://{ip}:{HTTPS_PORT}/{token}"
    assert f"Custom Server: {url}" in out, out[-3000:]
    ca = pathlib.Path(env["TMP"], "krita.crt")
    assert ca.read_text().strip() == ssh(env, ip, "cat /etc/sdcloud/proxy/cert.pem")
    verdict = client(env, plugin, url, ca=ca)
    assert verdict["qt_ssl"], "Qt found no OpenSSL 1.1"
    assert verdict["state"] == "connected", verdict
    assert "sdxl" in verdict["supported"], verdict
    # a wrong token: the plugin gets 401 on its first request
    verdict = client(env, plugin, f"https://{ip}:{HTTPS_PORT}/{'x' * 43}", ca=ca)
    assert verdict["state"] == "error" and "requires authentication" in verdict["error"], verdict

    # 1.53.0's connect path through the proxy: every request (websocket probe included) carries the token; it
    # stops only at the custom nodes 1.53.0 needs and this 1.35.0 server lacks
    verdict = client(env, plugin_tree(tmp_path, "v1.53.0"), url, ca=ca)
    assert verdict["state"] == "error" and verdict["error"] == "MissingResources", verdict
    assert {"External Tooling Nodes", "Inpaint Nodes"} >= set(verdict["missing"]) and verdict["missing"], verdict

    # the token is in no log of the machine: nginx's access and error logs, the journal
    assert ssh(env, ip, f"grep -rlF '{token}' /var/log/nginx/ || true; journalctl -o cat | grep -cF '{token}' || true") == "0"

    # 5. the firewall, from a second host on the bridge: the proxy answers (401 without the token), ComfyUI's
    # port and SSH do not (SSH is only for this computer, the proxy for the CIDRs given)
    probe = env["PROBE_IP"]
    assert ssh(env, probe, f"python3 - https://{ip}:{HTTPS_PORT}/system_stats", key=env["PROBE_KEY"], stdin=STATUS) == "401"
    assert ssh(env, probe, f"python3 - {url}/system_stats", key=env["PROBE_KEY"], stdin=STATUS) == "200"
    # ComfyUI alone: the proxy's AUTOMATIC1111 port is not opened (it once was, in nftables)
    ruleset = ssh(env, ip, "nft list ruleset")
    assert f"dport {HTTPS_PORT} " in ruleset and "7443" not in ruleset, ruleset
    for port_ in (UI_PORT, 22):
        rc = ssh(env, probe, f"timeout 8 bash -c '</dev/tcp/{ip}/{port_}' 2>/dev/null; echo $?", key=env["PROBE_KEY"])
        assert rc != "0", f"port {port_} of the machine answers a host outside sdcloud_ssh_cidrs"

    # 6. converged: a re-run changes nothing
    _, out = play(env, "provision.yml")
    changed = e2e_util.recap_changed(out)
    assert changed and all(v == 0 for v in changed.values()), changed

    # 7. a node that cannot import is named with its error, from ComfyUI's log: OpenCV's libGL gone, the role's
    # per-node table emptied (as for a node whose needs it does not know), ComfyUI restarted by hand
    ssh(env, ip, "apt-get -o DPkg::Lock::Timeout=300 remove -y -q libgl1 >/dev/null && systemctl restart comfyui")
    rc, out = play(env, "provision.yml", "-e", json.dumps({"__comfyui_node_system_packages": {}}), check=False)
    assert rc != 0
    assert "comfyui_controlnet_aux: libGL.so.1: cannot open shared object file" in out, out[-3000:]
    assert "add its Debian package to comfyui_system_packages" in out, out[-3000:]
    # ... and the next run puts the package back and restarts ComfyUI by itself, once: the classes are back
    starts = ssh(env, ip, "journalctl -u comfyui -o cat | grep -c '^Starting server'")
    _, out = play(env, "provision.yml")
    assert int(ssh(env, ip, "journalctl -u comfyui -o cat | grep -c '^Starting server'")) == int(starts) + 1
    nodes = json.loads(ssh(env, ip, f"curl -fsS --max-time 60 http://127.0.0.1:{UI_PORT}/object_info"))
    assert {c for n in PINS["required_nodes"] for c in n["classes"]} <= set(nodes)

    # 8. a ComfyUI version the repository does not have: refused naming the setting; the running one stays
    state = "systemctl show -P ActiveEnterTimestampMonotonic comfyui; git -c safe.directory='*' -C /opt/comfyui/app rev-parse HEAD"
    before = ssh(env, ip, state)
    rc, out = play(env, "provision.yml", "-e", json.dumps({"comfyui_version": "pin-" + "0" * 40}), check=False)
    assert rc != 0
    assert "could not be checked out" in out and "Check comfyui_version" in out, out[-3000:]
    assert "were left as they were" in out, out[-3000:]
    assert ssh(env, ip, state) == before

    _, out = play(env, "teardown.yml")
    assert f"nothing of {NAME} is left" in out
    assert NAME not in machines(env)


# --- On a RunPod pod, through RunPod's HTTP proxy ----------------------------------------------------------------
POD_NET = "16"
POD_NAME = "kritapod"
POD_GATEWAY = f"10.87.{POD_NET}.1"
POD_SSH = 40122  # the SSH port the stand-in maps
POD_KEY = "test-krita-pod-api-key-not-a-secret"


@pytest.fixture
def runpod(tmp_path_factory):
    """A RunPod pod for the Krita profile: the RunPod API v2 stand-in (tests/standins/runpod_server.py), each pod
    backed by the pod-like test host (tests/e2e/podhost.py: no systemd, Docker's capabilities, /workspace) on
    bridge 16, and the stand-in of RunPod's HTTP proxy (tests/standins/runpod_proxy.py) in front of it."""
    sys.path.insert(0, str(ROOT / "tests" / "standins"))
    from podhost import PodHost, start_as_runpod  # noqa: PLC0415
    from runpod_proxy import RunpodProxy, make_certificates  # noqa: PLC0415
    from runpod_server import RunpodStandin  # noqa: PLC0415

    tmp = tmp_path_factory.mktemp("kritapod")
    e = dict(os.environ, SDCLOUD_NET=POD_NET)
    host = PodHost(int(POD_NET), POD_NAME + "-pod", ssh_port=POD_SSH)
    standin = front = None
    try:
        e = e2e_util.local_env(tmp, POD_NET, POD_NAME)
        e["TMP"] = str(tmp)
        e["LIBSSL"] = str(libssl11())
        host.destroy()  # one left by an interrupted run
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", e["SDCLOUD_TEST_KEY"]], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "image_key")], check=True)
        host.create((tmp / "image_key.pub").read_text(), str(tmp / "image_key"))
        standin = RunpodStandin(host=POD_GATEWAY, api_key=POD_KEY).start()
        standin.set_slots([f"{host.address}:{POD_SSH}"])
        standin.on_running = lambda record: start_as_runpod(host, record)
        standin.on_stopped = standin.on_deleted = lambda _record: host.stop()
        front = RunpodProxy(standin, make_certificates(tmp)).start()
        e.update({"SDCLOUD_INVENTORY_PROVIDERS": "runpod", "SDCLOUD_KNOWN_HOSTS": str(tmp / "known_hosts"),
                  "SDCLOUD_RUNPOD_ENDPOINT": standin.url, "RUNPOD_API_KEY": POD_KEY})
        yield e, host, standin, front
    finally:
        if standin is not None:
            standin.on_running = standin.on_stopped = standin.on_deleted = None
            standin.stop()
        if front is not None:
            front.stop()
        host.destroy()
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=e, capture_output=True, check=False)


def test_krita_plugin_connects_to_a_runpod_pod_through_runpod_s_proxy(runpod, tmp_path):
    """The Krita profile on a RunPod pod with public access: the plugin 1.35.0's own client, given the URL the
    summary prints (RunPod's https://<pod id>-<port>.proxy.runpod.net/<token>), connects through the stand-in of
    RunPod's proxy (TLS there; plain HTTP to sdcloud's nginx under supervisord in the pod), SD XL supported, and
    its LoRA upload lands on the pod's volume."""
    env, host, standin, front = runpod
    settings = {"sdcloud_provider": "runpod", "sdcloud_gpu": "nvidia-rtx-4090", "sdcloud_spot": False,
                "sdcloud_zones": ["US-KS-2"], "sdcloud_gpu_present": False, "sdcloud_ssh_key_path": env["SDCLOUD_TEST_KEY"],
                "sdcloud_access": "public", "sdcloud_access_token_file": env["TMP"] + "/kritapod.token",
                "sdcloud_comfyui_port": UI_PORT, "sdcloud_https_port": HTTPS_PORT, **profile_vars()}
    _, out = run_play(env, "provision.yml", "-e", json.dumps(settings), vars_file="upstream-vars.yml")
    (pod,) = standin.pods.values()
    assert pod["ports"] == ["22/tcp", f"{HTTPS_PORT}/http"], "SSH and the proxy's port only, never ComfyUI's own"
    token = pathlib.Path(env["TMP"], "kritapod.token").read_text().strip()
    url = f"https://{pod['id']}-{HTTPS_PORT}.proxy.runpod.net/{token}"
    assert f"Custom Server: {url}" in out, out[-3000:]

    ckpt = place_placeholders(env, host.address, models="/workspace/models", home="/workspace/comfyui", port=POD_SSH)
    lora = tmp_path / "sdcloud-pod-lora.safetensors"
    lora.write_bytes(b"PLACEHOLDER (sdcloud test fixture): a LoRA uploaded by the Krita plugin\n" * 64)
    # RunPod's certificate is publicly trusted, as the stand-in's test CA is here: nothing of sdcloud's to import
    verdict = client(env, plugin_tree(tmp_path, "v1.35.0"), url, "--upload-lora", str(lora),
                     "--connect-to", f"proxy.runpod.net=127.0.0.1:{front.port}", ca=front.ca)
    assert verdict["state"] == "connected", verdict
    assert "sdxl" in verdict["supported"], verdict
    assert verdict["upload"] == "ok" and verdict["lora_listed"], verdict
    assert (host.workspace / "comfyui/uploads/loras" / lora.name).read_bytes() == lora.read_bytes()
    assert (host.workspace / "models/checkpoints" / ckpt).is_file()
    # every request, the websocket's included, went through RunPod's proxy to the pod's proxy port
    assert front.requests and {r[:2] for r in front.requests} == {(pod["id"], HTTPS_PORT)}, front.requests
    assert any(" /" + token + "/ws" in r[2] for r in front.requests), front.requests

    _, out = run_play(env, "teardown.yml", "-e", json.dumps(settings), vars_file="upstream-vars.yml")
    assert f"nothing of {POD_NAME} is left on runpod" in out, out[-3000:]
    assert standin.pods == {} and not host.running()
