"""Verifier: the test host powered itself off (side_effect made it idle); the controller sees it stopped."""

import json
import os
import subprocess

testinfra_hosts = ["local://"]


def test_machine_is_stopped():
    out = subprocess.run([os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "bin", "sdcloud-testhost"), "info", "sdc-as-node"],
                         capture_output=True, text=True, check=True, env=dict(os.environ)).stdout
    assert json.loads(out)["state"] == "stopped"
