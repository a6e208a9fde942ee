"""The machine role's SSH key step (roles/machine/tasks/ssh_key.yml) through a real ansible-playbook run on
localhost: it makes the key, creates a missing folder 0700, and never changes the mode of a folder that
was already there (the user's: a key at /tmp/<name> once made sdcloud chmod /tmp to 0700)."""

import os
import pathlib
import stat
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def make_key(tmp_path, key_path):
    play = tmp_path / "key.yml"
    play.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role:\n        name: machine\n        tasks_from: ssh_key.yml\n"
        f"      vars:\n        machine_ssh_key_path: '{key_path}'\n        machine_name: keytest\n"
    )
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_INVENTORY_ENABLED="host_list", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
               PATH=str(ROOT / ".venv/bin") + ":" + os.environ["PATH"])
    res = subprocess.run(["ansible-playbook", "-i", "localhost,", "-e", "ansible_python_interpreter=" + sys.executable, str(play)],
                         cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("folder_mode", [0o1777, 0o755])
def test_an_existing_folder_keeps_its_mode(tmp_path, folder_mode):
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, folder_mode)
    make_key(tmp_path, folder / "sdcloud_ed25519")
    assert mode(folder) == folder_mode
    assert (folder / "sdcloud_ed25519").exists() and (folder / "sdcloud_ed25519.pub").exists()
    assert mode(folder / "sdcloud_ed25519") == 0o600


def test_a_missing_folder_is_created_private_and_a_space_in_the_path_works(tmp_path):
    folder = tmp_path / "new folder"
    make_key(tmp_path, folder / "my key")
    assert mode(folder) == 0o700
    assert (folder / "my key").exists() and (folder / "my key.pub").read_text().endswith("sdcloud-keytest\n")
