"""The ComfyUI locks (roles/comfyui/files/pip/<commit>.txt) are what scripts/comfyui-lock makes of them.

Every lock is regenerated from the real ComfyUI (the git bundle in ../shared/upstream, whose
commits are tagged pin-<original sha>) and must come out byte for byte the same. Needs PyPI and uv
(`make setup`); with uv's cache warm it takes a few seconds per lock.
"""

import difflib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.sdcloud import nspawn

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "comfyui-lock"
LOCKS = ROOT / "roles" / "comfyui" / "files" / "pip"
UPSTREAM = ROOT.parent / "shared" / "upstream"
BUNDLE = UPSTREAM / "ComfyUI.bundle"
HOST_UV_CACHE = Path(nspawn.PACKAGE_CACHE)  # the cache the local machines share (torch is 3 GB)

# ComfyUI commits only: krita-<version>-linux-<backend>.txt are the Krita plugin's own (tests/unit/test_krita_profiles.py)
LOCK_FILES = sorted(p for p in LOCKS.glob("*.txt") if re.fullmatch(r"[0-9a-f]{40}", p.stem))
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s;]+)(?: ; .+)?$")
# Where the locks must install from wheels alone: Ubuntu 22.04 (Python 3.10, glibc 2.35),
# Debian 12 (3.11, glibc 2.36), Ubuntu 24.04 (3.12, glibc 2.39).
TARGETS = [("3.10", "x86_64-manylinux_2_35"), ("3.11", "x86_64-manylinux_2_36"), ("3.12", "x86_64-manylinux_2_39")]


def sources() -> dict[str, dict]:
    return {s["original"]: s for s in json.loads((UPSTREAM / "sources.json").read_text()) if s["name"] == "ComfyUI"}


def uv_env() -> dict[str, str]:
    env = dict(os.environ)
    if "UV_CACHE_DIR" not in env and HOST_UV_CACHE.is_dir() and os.access(HOST_UV_CACHE, os.W_OK):
        env["UV_CACHE_DIR"] = str(HOST_UV_CACHE)
    return env


def pins(lock: Path) -> list[tuple[str, str, str]]:
    """(name, version, line) for every requirement line of a lock."""
    out = []
    for line in lock.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line.startswith("--"):
            continue
        m = PIN.match(line)
        assert m, f"{lock.name}: not an exact pin: {line!r}"
        out.append((m.group(1), m.group(2), line))
    return out


@pytest.fixture(scope="module")
def comfyui_clone(tmp_path_factory) -> Path:
    if not BUNDLE.exists():
        pytest.fail(f"{BUNDLE} missing: the ComfyUI bundle the locks are regenerated from")
    dest = tmp_path_factory.mktemp("comfyui") / "ComfyUI"
    subprocess.run(["git", "clone", "-q", "--bare", str(BUNDLE), str(dest)], check=True)
    return dest


def test_there_are_locks():
    assert LOCK_FILES, f"no locks in {LOCKS}"
    for lock in LOCK_FILES:
        assert re.fullmatch(r"[0-9a-f]{40}\.txt", lock.name), f"{lock.name}: a lock is named <full 40-hex commit>.txt"


@pytest.mark.slow
@pytest.mark.parametrize("lock", LOCK_FILES, ids=lambda p: p.stem[:8])
def test_lock_regenerates_byte_for_byte(lock, comfyui_clone, tmp_path):
    commit = lock.stem
    src = sources().get(commit)
    assert src, f"{commit} is not in {UPSTREAM / 'sources.json'}: add it to the bundle, or drop {lock.name}"
    cmd = [str(SCRIPT), "--repo", str(comfyui_clone), "--ref", f"pin-{commit}", "--commit", commit,
           "--date", src["date"], "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=uv_env(), check=False)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr}"
    fresh = (tmp_path / lock.name).read_text()
    regen = (f"scripts/comfyui-lock --repo <clone of {BUNDLE}> --ref pin-{commit} --commit {commit} --date {src['date']}"
             f"  (or: scripts/comfyui-lock --repo https://github.com/comfyanonymous/ComfyUI --ref {commit} --date {src['date']})")
    if fresh != lock.read_text():
        diff = "".join(difflib.unified_diff(lock.read_text().splitlines(True), fresh.splitlines(True), str(lock.name), "regenerated"))
        pytest.fail(f"{lock.relative_to(ROOT)} is not what the script makes of commit {commit}; regenerate it with\n"
                    f"  {regen}\n(with the uv that requirements-dev.txt pins: `make setup`)\n{diff[:6000]}")


@pytest.mark.parametrize("lock", LOCK_FILES, ids=lambda p: p.stem[:8])
def test_lock_pins_everything(lock):
    names = {name for name, _, _ in pins(lock)}
    text = lock.read_text()
    assert "torch" in names, f"{lock.name}: no torch pin"
    assert {"torchvision", "torchaudio", "comfyui-frontend-package"} <= names
    assert f"commit {lock.stem}" in text.splitlines()[0], f"{lock.name}: the header names another commit"
    assert "scripts/comfyui-lock" in text, f"{lock.name}: the header says how to regenerate it"


def test_v0_3_64_lock_has_requests():
    """ComfyUI v0.3.64 imports requests (app/frontend_management.py) without listing it."""
    lock = LOCKS / "a125cd84b054a57729b5eecab930ca9408719832.txt"
    assert lock.exists()
    assert "requests" in {name for name, _, _ in pins(lock)}
    assert "-r missing-imports.txt" in lock.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("lock", LOCK_FILES, ids=lambda p: p.stem[:8])
def test_lock_installs_from_wheels_on_every_target(lock, tmp_path):
    """Every pin has a wheel for Ubuntu 22.04, Debian 12 and Ubuntu 24.04 (x86_64): resolving the lock
    for each of them, wheels only, must give back exactly its pins."""
    uv = str(ROOT / ".venv" / "bin" / "uv")  # the pinned one, as scripts/comfyui-lock picks it
    if not os.access(uv, os.X_OK):
        uv = shutil.which("uv") or pytest.fail("uv not found (.venv/bin, PATH): run `make setup`")
    for python, platform in TARGETS:
        res = subprocess.run([uv, "pip", "compile", "--no-config", "--no-header", "--no-annotate", "--no-deps",
                              "--only-binary", ":all:", "--python-version", python, "--python-platform", platform,
                              str(lock)], capture_output=True, text=True, env={**uv_env(), "UV_PYTHON_DOWNLOADS": "never"},
                             cwd=tmp_path, check=False)
        assert res.returncode == 0, f"{lock.name} does not install from wheels on Python {python} {platform}:\n{res.stderr}"
        got = {line.split("==")[0]: line.split("==")[1] for line in res.stdout.splitlines() if "==" in line}
        for name, version in got.items():
            assert version in {v for n, v, _ in pins(lock) if n == name}, f"{name}=={version} is not the pin ({python} {platform})"
