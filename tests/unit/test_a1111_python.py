"""roles/a1111/tasks/python.yml in a real ansible-playbook run on localhost: which interpreter the venv is made with.

The interpreters are small scripts on PATH that print a version as `python -c 'import sys; print(...)'` would (the
probe reads nothing else), so each case sets up the host it describes: Debian 12 (python3 is 3.11), Ubuntu 24.04 with
deadsnakes' python3.11 beside it (RunPod's images), and Ubuntu 24.04 alone.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

PLAY = """
- name: Pick A1111's Python
  hosts: localhost
  gather_facts: false
  vars_files: ["{root}/roles/a1111/vars/main.yml"]
  vars:
    a1111_version: v1.10.1
    a1111_home: /opt/a1111
    a1111_models_dir: /opt/sdcloud/models
  tasks:
    - name: Pick the Python
      ansible.builtin.include_tasks: "{root}/roles/a1111/tasks/python.yml"
    - name: Say which
      ansible.builtin.debug:
        msg: "picked {{{{ a1111_effective_python }}}}"
"""


def run(tmp_path, pythons, a1111_python=""):
    """Run python.yml with `pythons` ({name: version, or None for one that fails to run}) first on PATH; every
    candidate a case does not name is made one that fails, so that this computer's own Pythons do not count."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, version in {"python3": None, "python3.11": None, "python3.10": None, **pythons}.items():
        script = bin_dir / name
        script.write_text("#!/bin/sh\n" + (f"echo {version}\n" if version else "exit 127\n"))
        script.chmod(0o755)
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(root=ROOT))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_NOCOLOR="1")
    res = subprocess.run([str(pathlib.Path(sys.executable).parent / "ansible-playbook"), str(play), "-i", "localhost,",
                          "-c", "local", "-e", json.dumps({"a1111_python": a1111_python, "ansible_python_interpreter": sys.executable})],
                         capture_output=True, text=True, env=env, check=False, timeout=120)
    return res.returncode, " ".join((res.stdout + res.stderr).split())


@pytest.mark.parametrize(("pythons", "picked"), [
    ({"python3": "3.11"}, "python3"),  # Debian 12
    ({"python3": "3.12", "python3.11": "3.11"}, "python3.11"),  # Ubuntu 24.04 with deadsnakes' 3.11 (RunPod's images)
    ({"python3": "3.12", "python3.10": "3.10"}, "python3.10"),
], ids=["debian-12", "ubuntu-24.04-deadsnakes", "only-3.10"])
def test_the_first_supported_interpreter_is_picked(tmp_path, pythons, picked):
    rc, said = run(tmp_path, pythons)
    assert rc == 0 and f"picked {picked}" in said, said


def test_none_supported_is_refused_naming_what_the_host_has(tmp_path):
    rc, said = run(tmp_path, {"python3": "3.12"})
    assert rc != 0
    assert ("AUTOMATIC1111 v1.10.1 needs Python 3.10 or 3.11 (its pinned torch has no wheels for newer ones), and localhost "
            "has python3 (3.12). Install e.g. python3.11 (and python3.11-venv) there and set a1111_python: python3.11.") in said, said


def test_a_set_interpreter_is_used_as_it_is(tmp_path):
    rc, said = run(tmp_path, {"python3": "3.11", "python3.12": "3.12"}, a1111_python="python3.12")
    assert rc != 0 and "localhost has python3.12 (3.12)." in said, said
    (tmp_path / "other").mkdir()
    rc, said = run(tmp_path / "other", {"python3": "3.12", "py311": "3.11"}, a1111_python="py311")
    assert rc == 0 and "picked py311" in said, said
