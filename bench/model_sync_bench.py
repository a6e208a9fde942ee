#!/usr/bin/env python3
"""Benchmark model_sync against what users do today.

1. Throughput: ~200 MB of model files (deterministic, generated in a temp dir) served by the test
   stand-in tests/standins/model_server.py with EACH connection limited to a fixed rate (default
   4 MiB/s, like a throttled CDN). Clients: model_sync (the module run as a process, the way Ansible
   runs it), wget (one connection per file, one file after the other) and aria2c -x 8 -s 8.
2. No-op re-run: 50 declared models x 20 MB already present and verified, through ansible-playbook on
   localhost (connection local): one model_sync task vs a loop of ansible.builtin.get_url with checksum.
3. The files of 1 through the models role, as provision.yml runs it (ansible-playbook on localhost, the
   project's ansible.cfg): in the background with its progress lines on the terminal, and the run's
   timeline (plugins/callback/sdcloud_timeline.py); the models phase next to the module alone of 1. Once
   at the rate of 1, once at --role-rate-mib (default 1 MiB/s), slow enough for several polls of progress.

Run:  .venv/bin/python bench/model_sync_bench.py          (about 2 minutes)
Needs wget and aria2c on PATH (Debian: apt-get install -y wget aria2); missing tools are skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
PY = sys.executable
BIN = pathlib.Path(PY).parent

# Runs the module the way AnsiballZ does: args JSON in, result JSON on stdout.
DRIVER = f"""
import sys, ansible.module_utils as mu
mu.__path__.append({str(ROOT / "plugins" / "module_utils")!r})
sys.path.insert(0, {str(ROOT / "plugins" / "modules")!r})
import model_sync
model_sync.main()
"""


def make_files(folder, sizes, seed):
    """Deterministic incompressible files; returns {name: sha256}."""
    out = {}
    for i, size in enumerate(sizes):
        name = f"model{i:02d}.safetensors"
        data = random.Random(f"{seed}-{i}").randbytes(size)
        (folder / name).write_bytes(data)
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def start_server(folder, rate, tmp):
    port_file = tmp / f"port-{folder.name}"
    proc = subprocess.Popen(
        [PY, str(ROOT / "tests" / "standins" / "model_server.py"), str(folder), str(rate), str(port_file)],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if port_file.exists() and port_file.read_text():
            return proc, f"http://127.0.0.1:{port_file.read_text()}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("model server did not start")


def verify(folder, files):
    bad = [n for n, digest in files.items() if hashlib.sha256((folder / n).read_bytes()).hexdigest() != digest]
    if bad:
        raise SystemExit(f"corrupt downloads in {folder}: {bad}")


def timed(cmd, **kwargs):
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    took = time.monotonic() - t0
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took, proc


def bench_throughput(tmp, rate, total_mb):
    unit = total_mb * MIB // 20  # 1 x 10 units + 2 x 3 units + 4 x 1 unit = 20 units
    sizes = [10 * unit, 3 * unit, 3 * unit, unit, unit, unit, unit]
    src = tmp / "src"
    src.mkdir()
    files = make_files(src, sizes, "throughput")
    total = sum(sizes)
    server, base = start_server(src, rate, tmp)
    rows = []
    try:
        # model_sync, as a module process with its defaults (parallel 4, connections 8, split from 8 MiB)
        dest = tmp / "ours"
        args = {
            "ANSIBLE_MODULE_ARGS": {
                "models_dir": str(dest),
                "models": [{"name": n, "kind": "checkpoints", "source": f"{base}/{n}", "sha256": d} for n, d in files.items()],
            }
        }
        (tmp / "args.json").write_text(json.dumps(args))
        took, proc = timed([PY, "-c", DRIVER, str(tmp / "args.json")])
        result = json.loads(proc.stdout)
        conns = sum(f["connections"] for f in result["files"])
        verify(dest / "checkpoints", files)
        rows.append(("model_sync (parallel 4, 8 conns/file, sha256 verified)", took, conns))

        if shutil.which("aria2c"):
            dest = tmp / "aria2"
            dest.mkdir()
            (tmp / "aria2.txt").write_text("".join(f"{base}/{n}\n" for n in files))
            cmd = ["aria2c", "-x", "8", "-s", "8", "-d", str(dest), "-i", str(tmp / "aria2.txt")]
            took, _ = timed([*cmd, "-q", "--file-allocation=none", "--allow-overwrite=true"])
            verify(dest, files)
            rows.append(("aria2c -x 8 -s 8 (no verification)", took, None))
            dest = tmp / "aria2k"
            dest.mkdir()
            cmd = ["aria2c", "-x", "8", "-s", "8", "-k", "1M", "-j", "7", "-d", str(dest), "-i", str(tmp / "aria2.txt")]
            took, _ = timed([*cmd, "-q", "--file-allocation=none", "--allow-overwrite=true"])
            verify(dest, files)
            rows.append(("aria2c -x 8 -s 8 -k 1M -j 7 (tuned, no verification)", took, None))
        else:
            print("aria2c not found: apt-get install -y aria2 (skipped)")

        if shutil.which("wget"):
            dest = tmp / "wget"
            dest.mkdir()
            t0 = time.monotonic()
            for n in files:
                timed(["wget", "-q", "-O", str(dest / n), f"{base}/{n}"])
            rows.append(("wget, one file after the other (no verification)", time.monotonic() - t0, len(files)))
            verify(dest, files)
        else:
            print("wget not found: apt-get install -y wget (skipped)")
    finally:
        server.terminate()
        server.wait()
    return rows, total, len(files)


PLAY_OURS = """
- name: model_sync no-op
  hosts: all
  gather_facts: false
  tasks:
    - name: Sync declared models
      model_sync:
        models_dir: "{{ dir }}"
        models: "{{ wanted }}"
"""

PLAY_GET_URL = """
- name: get_url loop no-op
  hosts: all
  gather_facts: false
  tasks:
    - name: Download each model with a checksum
      ansible.builtin.get_url:
        url: "{{ item.source }}"
        dest: "{{ dir }}/{{ item.kind }}/{{ item.name }}"
        checksum: "sha256:{{ item.sha256 }}"
        mode: "0644"
      loop: "{{ wanted }}"
"""

PLAY_EMPTY = """
- name: empty
  hosts: all
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.debug:
        msg: start-up only
"""


def bench_noop(tmp, count, size_mb):
    src = tmp / "noop-src"
    src.mkdir()
    files = make_files(src, [size_mb * MIB] * count, "noop")
    models_dir = tmp / "noop-models"
    (models_dir / "checkpoints").mkdir(parents=True)
    for n in files:
        os.link(src / n, models_dir / "checkpoints" / n)
    server, base = start_server(src, 0, tmp)
    inv = tmp / "inventory.ini"
    inv.write_text(f"localhost ansible_connection=local ansible_python_interpreter={PY}\n")
    wanted = [{"name": n, "kind": "checkpoints", "source": f"{base}/{n}", "sha256": d} for n, d in files.items()]
    (tmp / "noop.json").write_text(json.dumps({"dir": str(models_dir), "wanted": wanted}))
    # only the ini inventory plugin: the bench must not depend on the project's cloud inventory plugin
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_INVENTORY_ENABLED="ini")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    times = {}
    try:
        for name, text in (("empty", PLAY_EMPTY), ("ours", PLAY_OURS), ("get_url", PLAY_GET_URL)):
            (tmp / f"{name}.yml").write_text(text)
        cmd = [str(BIN / "ansible-playbook"), "-i", str(inv), "-e", f"@{tmp / 'noop.json'}"]
        # first model_sync run verifies the present files once (hashes them) and records them: not timed
        timed([*cmd, str(tmp / "ours.yml")], env=env, cwd=ROOT)
        for name in ("empty", "ours", "get_url"):
            took, proc = timed([*cmd, str(tmp / f"{name}.yml")], env=env, cwd=ROOT)
            if "changed=0" not in proc.stdout:
                raise SystemExit(f"{name} no-op run changed something:\n{proc.stdout[-1500:]}")
            times[name] = took
    finally:
        server.terminate()
        server.wait()
    return times


PLAY_ROLE = """
- name: The models role, as provision.yml runs it
  hosts: all
  gather_facts: false
  roles:
    - role: models
      models_dir: "{{ dir }}"
      models_list: "{{ wanted }}"
  tasks:
    - name: Keep the timeline
      ansible.builtin.copy:
        content: "{{ lookup('ansible.builtin.env', 'SDCLOUD_TIMELINE') }}"
        dest: "{{ timeline }}"
        mode: "0600"
"""


def bench_role(tmp, rate, total_mb):
    unit = total_mb * MIB // 20
    tmp = tmp / f"role-{rate}"
    tmp.mkdir()
    src = tmp / "role-src"
    src.mkdir()
    files = make_files(src, [10 * unit, 3 * unit, 3 * unit, unit, unit, unit, unit], "role")
    server, base = start_server(src, rate, tmp)
    inv = tmp / "role-inventory.ini"
    inv.write_text(f"localhost ansible_connection=local ansible_python_interpreter={PY}\n")
    wanted = [{"name": n, "kind": "checkpoints", "source": f"{base}/{n}", "sha256": d} for n, d in files.items()]
    (tmp / "role.json").write_text(json.dumps({"dir": str(tmp / "role-models"), "wanted": wanted, "timeline": str(tmp / "timeline.json")}))
    (tmp / "role.yml").write_text(PLAY_ROLE)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_INVENTORY_ENABLED="ini")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(BIN / "ansible-playbook"), "-i", str(inv), "-e", f"@{tmp / 'role.json'}", str(tmp / "role.yml")]
    try:
        took, proc = timed(cmd, env=env, cwd=ROOT)
    finally:
        server.terminate()
        server.wait()
    verify(tmp / "role-models" / "checkpoints", files)
    progress = [line for line in proc.stdout.splitlines() if line.startswith("[localhost] ")]
    return took, progress, json.loads((tmp / "timeline.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mib", type=float, default=4.0, help="per-connection limit, MiB/s (default 4)")
    parser.add_argument("--total-mb", type=int, default=200, help="throughput data set, MiB (default 200)")
    parser.add_argument("--noop-count", type=int, default=50)
    parser.add_argument("--noop-size-mb", type=int, default=20)
    parser.add_argument("--role-rate-mib", type=float, default=1.0, help="per-connection limit for the second run of 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="model_sync_bench-") as tmpdir:
        tmp = pathlib.Path(tmpdir)
        rows, total, nfiles = bench_throughput(tmp, int(args.rate_mib * MIB), args.total_mb)
        print(f"\n1) Download throughput: {nfiles} files, {total / MIB:.0f} MiB, server limit {args.rate_mib:g} MiB/s per connection")
        wget = next((t for label, t, _ in rows if label.startswith("wget")), None)
        aria = next((t for label, t, _ in rows if label.startswith("aria2c -x 8 -s 8 (")), None)
        print(f"{'client':58} {'seconds':>8} {'MiB/s':>7} {'vs wget':>8} {'vs aria2c':>9} {'conns':>6}")
        for label, took, conns in rows:
            vs_wget = f"{wget / took:.1f}x" if wget else "-"
            vs_aria = f"{aria / took:.2f}x" if aria else "-"
            print(f"{label:58} {took:8.1f} {total / MIB / took:7.1f} {vs_wget:>8} {vs_aria:>9} {conns if conns else '-':>6}")
        print("   (ratios are speed-ups: the other client's time / this client's time; conns = connections used)")

        times = bench_noop(tmp, args.noop_count, args.noop_size_mb)
        base = times["empty"]
        ours, get_url = times["ours"], times["get_url"]
        print(
            f"\n2) No-op re-run: {args.noop_count} models x {args.noop_size_mb} MiB present and verified, "
            "ansible-playbook on localhost (connection local)"
        )
        print(f"{'play':58} {'seconds':>8} {'minus empty play':>17}")
        print(f"{'empty play (ansible-playbook start-up)':58} {base:8.2f} {'':>17}")
        print(f"{'model_sync, one task':58} {ours:8.2f} {ours - base:17.2f}")
        print(f"{'get_url loop with checksum':58} {get_url:8.2f} {get_url - base:17.2f}")
        print(
            f"ratio get_url / model_sync: {get_url / ours:.1f}x wall clock, "
            f"{(get_url - base) / max(ours - base, 1e-3):.1f}x without ansible-playbook start-up"
        )

        module = next(t for label, t, _ in rows if label.startswith("model_sync"))
        print("\n3) The files of 1) through the models role (ansible-playbook, connection local, the project's ansible.cfg)")
        for rate in (args.rate_mib, args.role_rate_mib):
            took, progress, timeline = bench_role(tmp, int(rate * MIB), args.total_mb)
            models = next(p["seconds"] for p in timeline["phases"] if p["name"] == "models")
            print(f"{rate:g} MiB/s per connection: {took:.1f} s wall clock, {len(progress)} progress lines; the timeline:")
            for line in timeline["lines"]:
                print(f"   {line}")
            if rate == args.rate_mib:
                print(f"   the models phase (its 12 tasks: plan, background start, polls, report) {models:.1f} s, "
                      f"the module alone in 1) {module:.1f} s")
            for line in progress[:4] + (["..."] if len(progress) > 8 else []) + progress[max(4, len(progress) - 4):]:
                print(f"   {line}")


if __name__ == "__main__":
    main()
