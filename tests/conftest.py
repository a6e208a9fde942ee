"""Make `ansible.module_utils.sdcloud` importable in tests, as ansible.cfg's module_utils does for plays."""

import pathlib

import ansible.module_utils

ROOT = pathlib.Path(__file__).resolve().parent.parent
_MU = str(ROOT / "plugins" / "module_utils")
if _MU not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(_MU)
