"""What the RunPod and vast.ai tests share: fast waits, the modules' main() in-process, the operator key."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from unittest import mock

import pytest
from ansible.module_utils import basic
from ansible.module_utils.sdcloud import base, pods

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from module_runner import run_main  # noqa: E402

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmQ9sD6lTjOaT1v3w7ZB8C8XkQn2wYvV7ZkqJrL1sDd op@laptop"
API_KEY = "test-key-not-a-secret"


def load(name: str):
    """plugins/modules/<name>.py as a Python module (the project is not a collection)."""
    spec = importlib.util.spec_from_file_location(f"sdcloud_pod_module_{name}", ROOT / "plugins" / "modules" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: load(name) for name in ("gpu_instance", "cloud_resources", "cloud_firewall")}


@pytest.fixture
def fast(monkeypatch):
    """Waits and retries in milliseconds, and no key in the environment (each test passes its own)."""
    monkeypatch.setattr(base, "POLL_INTERVAL", 0.01)
    monkeypatch.setattr(pods, "RETRY_BASE", 0.01)
    monkeypatch.setattr(pods, "RETRY_CAP", 0.05)
    for var in ("RUNPOD_API_KEY", "VAST_API_KEY", "SDCLOUD_RUNPOD_ENDPOINT", "SDCLOUD_VAST_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def runner(provider: str, url: str, **defaults):
    """run(module, check=False, **args) -> (failed, result) for `provider` against the stand-in at `url`;
    `defaults` are gpu_instance's (the other modules take only the connection options)."""
    def run(module="gpu_instance", check=False, **args):
        full = {"provider": provider, "endpoint": url, "api_key": API_KEY, "name": "sd",
                **(defaults if module == "gpu_instance" else {}), **args}
        said = []  # exit_json is patched (it would add them): collect module.warn() here
        with mock.patch.object(basic.AnsibleModule, "warn", lambda _self, msg: said.append(msg)):
            failed, res = run_main(MODULES[module].main, full, check=check)
        if said:
            res["warnings"] = said
        return failed, res
    return run
