"""Run an Ansible module's main() in-process with set arguments, as amazon.aws's module tests do."""

from __future__ import annotations

import json
from unittest import mock

from ansible.module_utils import basic


class ExitJson(Exception):
    pass


class FailJson(Exception):
    pass


def run_main(main, args, check=False, diff=False):
    """main() with `args` (check/diff mode as given); returns (failed, result)."""
    params = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": params}).encode()

    def exit_json(self, **kwargs):
        raise ExitJson(kwargs)

    def fail_json(self, **kwargs):
        raise FailJson(kwargs)

    with (
        mock.patch.object(basic, "_ANSIBLE_ARGS", payload),
        mock.patch.object(basic, "_ANSIBLE_PROFILE", "legacy"),
        mock.patch.object(basic.AnsibleModule, "exit_json", exit_json),
        mock.patch.object(basic.AnsibleModule, "fail_json", fail_json),
    ):
        try:
            main()
        except ExitJson as exc:
            return False, exc.args[0]
        except FailJson as exc:
            return True, exc.args[0]
    raise AssertionError("main() returned without exit_json/fail_json")
