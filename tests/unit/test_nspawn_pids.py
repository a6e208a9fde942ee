"""The test-host machinery stops only what it started: a recorded PID counts only while the process
holding it has the recorded start time (a PID alone may have been reused by an unrelated process
since - killing that one could take down the very test run that asked for the cleanup)."""

import json
import os
import subprocess
import time

import pytest

from plugins.module_utils.sdcloud import nspawn


@pytest.fixture
def network(tmp_path):
    net = nspawn.Network(net=9, state_root=str(tmp_path))
    os.makedirs(net.machines_dir)
    return net


@pytest.fixture
def sleeper():
    procs = []

    def start(argv=("sleep", "60")):
        p = subprocess.Popen(list(argv), start_new_session=True)
        procs.append(p)
        time.sleep(0.1)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_reused_pid_is_not_ours(network, sleeper):
    p = sleeper()
    start = nspawn._proc_start(p.pid)
    with open(network._pidfile("git-daemon"), "w") as f:
        f.write("%d %d\n" % (p.pid, start - 1))  # the PID we recorded, now held by another process
    network.stop_service("git-daemon")
    assert p.poll() is None, "stop_service killed a process it did not start"
    assert not os.path.exists(network._pidfile("git-daemon"))


def test_our_pid_is_stopped(network, sleeper):
    p = sleeper()
    network._write_pid("git-daemon", p.pid)
    assert network._read_pid("git-daemon") == (p.pid, nspawn._proc_start(p.pid))
    network.stop_service("git-daemon")
    assert p.wait(5) is not None


def test_down_spares_a_reused_proxy_pid(network, sleeper):
    p = sleeper()
    with open(network._pidfile("proxy"), "w") as f:
        f.write("%d %d\n" % (p.pid, nspawn._proc_start(p.pid) + 1))
    network.down()
    assert p.poll() is None
    assert not os.path.exists(network.state_dir)


def test_a_zombie_is_not_alive(sleeper):
    p = sleeper(("true",))
    time.sleep(0.2)  # exited, not reaped yet
    assert not nspawn._pid_alive(p.pid)


def test_legacy_pidfile_without_start_time(network):
    with open(network._pidfile("proxy"), "w") as f:
        f.write("12345\n")
    assert network._read_pid("proxy") == (12345, None)
    assert network._read_pid("absent") == (None, None)


def test_machine_running_needs_marker_and_start_time(network, sleeper):
    p = sleeper(("bash", "-c", "exec -a sdcloud-nspawn-supervisor sleep 60"))
    m = network.machine("sdc-pid")
    os.makedirs(m.dir)
    meta = {"name": "sdc-pid", "pid": p.pid, "pid_start": nspawn._proc_start(p.pid)}
    with open(m.meta_path, "w") as f:
        json.dump(meta, f)
    assert network.machine("sdc-pid").state == "running"
    meta["pid_start"] += 1
    with open(m.meta_path, "w") as f:
        json.dump(meta, f)
    assert network.machine("sdc-pid").state == "stopped"
    assert network.machine("sdc-pid").stop() is False
    assert p.poll() is None, "stop() killed a process that only holds the machine's old PID"


def _veth(name):
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)


def _no_veth(name):
    subprocess.run(["ip", "link", "delete", name], check=False, capture_output=True)


def _running_machine(network, sleeper, name, address):
    """A machine of `network` that counts as running at `address` (its supervisor: a sleeper with the marker)."""
    p = sleeper(("bash", "-c", "exec -a sdcloud-nspawn-supervisor sleep 60"))
    m = network.machine(name)
    os.makedirs(m.dir)
    m.meta = {"name": name, "address": address, "unit": network.unit(address), "pid": p.pid,
              "pid_start": nspawn._proc_start(p.pid)}
    m._save()
    assert m.running()
    return m


@pytest.mark.skipif(os.geteuid() != 0, reason="adds a network interface (root)")
def test_a_stale_veth_of_the_unit_name_is_cleared(network):
    """A veth left by the machine that had this address before (freed asynchronously by the kernel) no longer
    makes the next start fail with "Failed to add new veth interfaces (vb-<unit>:host0): File exists"."""
    m = nspawn.Machine(network, "stale")
    m.meta = {"address": "10.87.9.251", "unit": "sdc9-251"}
    _veth("vb-sdc9-251")
    try:
        assert m._claim_unit() is True
        assert not os.path.exists("/sys/class/net/vb-sdc9-251")
        assert m._claim_unit() is False  # none there: nothing to do
    finally:
        _no_veth("vb-sdc9-251")


@pytest.mark.skipif(os.geteuid() != 0, reason="adds a network interface (root)")
def test_a_moved_machine_takes_its_new_address_unit_and_spares_the_running_owner_of_its_old_one(network, sleeper):
    """The e2e stand-ins give a stopped test host a new address; the host now at its old address runs with the old
    unit name. The moved one's start must neither delete that one's veth nor collide with it."""
    owner = _running_machine(network, sleeper, "now-at-10", "10.87.9.10")
    moved = network.machine("moved")
    os.makedirs(moved.dir)
    moved.meta = {"name": "moved", "address": "10.87.9.12", "unit": "sdc9-10"}  # unit of its old address
    moved._save()
    _veth("vb-sdc9-10")
    try:
        assert moved._claim_unit() is False
        assert moved.meta["unit"] == "sdc9-12"
        assert os.path.exists("/sys/class/net/vb-sdc9-10"), "deleted the veth of a running machine"
        assert owner.running()
    finally:
        _no_veth("vb-sdc9-10")


@pytest.mark.skipif(os.geteuid() != 0, reason="adds a network interface (root)")
def test_a_start_at_a_running_machines_address_is_refused(network, sleeper):
    _running_machine(network, sleeper, "runs-at-13", "10.87.9.13")
    twin = network.machine("twin")
    os.makedirs(twin.dir)
    twin.meta = {"name": "twin", "address": "10.87.9.13", "unit": "sdc9-13"}
    twin._save()
    _veth("vb-sdc9-13")
    try:
        with pytest.raises(nspawn.MachineError, match="machine runs-at-13 runs there"):
            twin._claim_unit()
        assert os.path.exists("/sys/class/net/vb-sdc9-13")
    finally:
        _no_veth("vb-sdc9-13")


def test_nets_up_to_99(tmp_path):
    net = nspawn.Network(net=12, state_root=str(tmp_path))
    assert (net.bridge, str(net.subnet), net.unit("10.87.12.250")) == ("sdcloud12", "10.87.12.0/24", "sdc12-250")
    assert len("vb-" + nspawn.Network(net=99, state_root=str(tmp_path)).unit("10.87.99.250")) <= 15
    with pytest.raises(nspawn.MachineError, match="SDCLOUD_NET must be 0-99"):
        nspawn.Network(net=100, state_root=str(tmp_path))
