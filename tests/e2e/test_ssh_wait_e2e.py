"""The SSH wait of provision.yml gives up in seconds, with the reason and the fix, when waiting cannot help.

One Debian 12 test host on bridge 3 (SDCLOUD_NET=3), reached three ways as a user would reach it:
- as the deployment's `local` machine whose key was made anew at sdcloud_ssh_key_path after the machine was
  created (a new laptop): the machine refuses the key ("Permission denied (publickey)");
- as a `static` host whose pinned host key (sdcloud_known_hosts_file) is not the one it shows: ssh refuses it;
- as a `static` host at an address where nothing answers.
Each run must fail well before sdcloud_wait_timeout (600 s here, the default), name the setting, and change
nothing on the machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NET = "3"
NAME = "sshwait"
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import e2e_util  # noqa: E402

pytestmark = [
    pytest.mark.testhost,
    pytest.mark.skipif(os.geteuid() != 0, reason="local machines need root (systemd-nspawn)"),
]
WAIT = 600  # sdcloud_wait_timeout: what the old wait_for_connection would have waited
EARLY = 120  # seconds a provision that must give up early may take in all (preflight ~20 s, inventory, the wait), 1/5 of WAIT


def keygen(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, pathlib.Path(str(path) + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """The test host: the local machine of deployment NAME, authorized for key `made`; cleanup even on failure."""
    tmp = tmp_path_factory.mktemp("sshwait")
    env = dict(os.environ, SDCLOUD_NET=NET)
    try:
        env = e2e_util.local_env(tmp, NET, NAME)
        key = keygen(tmp / "made" / "id_ed25519")
        out = subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "create", NAME, "--key", f"{key}.pub",
                              "--private-key", str(key), "--label", "sdcloud-managed=true",
                              "--label", f"sdcloud-deployment={NAME}"],
                             env=env, capture_output=True, text=True, check=True).stdout
        yield {"env": env, "tmp": tmp, "key": key, "address": json.loads(out)["address"]}
    finally:
        subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "down"], env=env, capture_output=True, check=False)


def gives_up(env, xv, *args):
    t0 = time.monotonic()
    rc, out = e2e_util.run_play(env, "provision.yml", "-e", json.dumps(dict({"sdcloud_wait_timeout": WAIT}, **xv)),
                                *args, check=False)
    took = time.monotonic() - t0
    assert rc != 0, out[-3000:]
    assert took < EARLY, f"the wait must give up early, took {took:.0f}s:\n{out[-3000:]}"
    assert "TASK [Wait for a working SSH login" in out, out[-3000:]
    assert "TASK [Gather" not in out.split("TASK [Wait for a working SSH login", 1)[1], "nothing may run after the wait"
    return out


def static_inventory(box, address, known_hosts):
    inv = box["tmp"] / ("inventory-" + address.replace(".", "-"))
    inv.mkdir(exist_ok=True)
    if not (inv / "group_vars").exists():
        (inv / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    (inv / "sdcloud.yml").write_text(json.dumps({
        "plugin": "sdcloud", "deployment": NAME, "providers": ["static"], "known_hosts_file": str(known_hosts),
        "static_hosts": [{"name": "homebox", "address": address, "user": "root", "ssh_private_key_file": str(box["key"])}]}))
    return ["-i", str(inv / "sdcloud.yml")]


def static_vars(box):
    return {"sdcloud_provider": "static", "sdcloud_ssh_key_path": str(box["key"]), "sdcloud_gpu_present": False}


def test_a_key_made_anew_after_the_machine_is_refused_at_once(box):
    # the machine knows the key it was made with; a new key at the same path (a new laptop) is refused
    key = keygen(box["tmp"] / "anew" / "id_ed25519")
    out = subprocess.run([str(ROOT / "bin/sdcloud-testhost"), "info", NAME], env=box["env"], capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out)["ssh_private_key_file"] == str(box["key"])
    made = box["key"].read_bytes(), pathlib.Path(f"{box['key']}.pub").read_bytes()
    try:
        box["key"].write_bytes(key.read_bytes())
        pathlib.Path(f"{box['key']}.pub").write_bytes(pathlib.Path(f"{key}.pub").read_bytes())
        out = gives_up(box["env"], {"sdcloud_ssh_key_path": str(box["key"])})
    finally:
        box["key"].write_bytes(made[0])
        pathlib.Path(f"{box['key']}.pub").write_bytes(made[1])
    assert f"root@{box['address']} port 22: the machine refuses the key {box['key']}" in out, out[-3000:]
    assert "sdcloud_ssh_key_path when the machine was made" in out and "Permission denied (publickey)" in out, out[-3000:]
    assert list(e2e_util.machines(box["env"])) == [NAME]


def test_a_host_key_that_is_not_the_pinned_one_is_refused_at_once(box):
    other = keygen(box["tmp"] / "hostkey" / "other")
    known_hosts = box["tmp"] / "known_hosts_mismatch"
    known_hosts.write_text("sdcloud-static-homebox " + " ".join(pathlib.Path(f"{other}.pub").read_text().split()[:2]) + "\n")
    out = gives_up(box["env"], static_vars(box), *static_inventory(box, box["address"], known_hosts))
    assert f"differs from the one pinned for sdcloud-static-homebox in {known_hosts} (line 1)" in out, out[-3000:]
    assert f'`ssh-keygen -f "{known_hosts}" -R "sdcloud-static-homebox"`' in out, out[-3000:]
    assert known_hosts.read_text().count("sdcloud-static-homebox") == 1, "the pinned entry stays as it was"


def test_a_static_host_where_nothing_answers_names_its_entry(box):
    address = f"10.87.{NET}.250"  # on the bridge, no machine there
    out = gives_up(box["env"], static_vars(box), *static_inventory(box, address, box["tmp"] / "known_hosts_none"))
    assert "nothing answered for" in out, out[-3000:]
    assert f"static_hosts entry homebox (address {address}, port 22) in inventory/sdcloud.yml" in out, out[-3000:]
