"""Our systemd units pass only flags the pinned UIs' argument parsers define.

Renders roles/<ui>/templates/<ui>.service.j2 with the role's defaults (and variants), takes the
ExecStart command line apart and checks every --flag against the list extracted from the pinned
upstream parser (tests/fixtures/upstream/*-flags.txt, which name their source file and commit).
"""

import pathlib
import shlex

import jinja2
import jinja2.nativetypes
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "fixtures" / "upstream"


def upstream_flags(name):
    lines = (UPSTREAM / name).read_text().splitlines()
    return {line.strip() for line in lines if line.strip().startswith("--")}


def jinja_env(native=False):
    """Jinja with Ansible's builtin filters (zip, flatten) and the project's own (roles' vars use them, e.g.
    sdcloud_model_kinds); `native` keeps a list a list, as Ansible's templating does for a variable (e.g.
    __comfyui_command)."""
    import importlib.util

    from ansible.plugins.filter import core, mathstuff

    cls = jinja2.nativetypes.NativeEnvironment if native else jinja2.Environment
    env = cls(undefined=jinja2.StrictUndefined)
    for module in (core, mathstuff):  # Ansible's own versions of Jinja's filters (default, map) need its templar
        env.filters.update({k: f for k, f in module.FilterModule().filters().items() if k not in env.filters})
    for path in sorted((ROOT / "plugins" / "filter").glob("*.py")):
        spec = importlib.util.spec_from_file_location("sdcloud_filter_" + path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        env.filters.update(module.FilterModule().filters())
    return env


def role_vars(role, **overrides):
    """The role's defaults + vars/main.yml, templated values resolved, overrides applied."""
    context = {}
    for rel in ("defaults/main.yml", "vars/main.yml"):
        path = ROOT / "roles" / role / rel
        if path.exists():
            context.update(yaml.safe_load(path.read_text()) or {})
    context.update(overrides)
    env = jinja_env(native=True)
    for _ in range(3):  # defaults may refer to other defaults
        for key, value in list(context.items()):
            if isinstance(value, str) and "{{" in value:
                context[key] = env.from_string(value).render(context)
    context["ansible_managed"] = "Ansible managed"
    return context


def exec_start(role, unit, key="ExecStart", **overrides):
    """The command line of a rendered systemd unit (ExecStart=) or supervisord program section (command=)."""
    text = (ROOT / "roles" / role / "templates" / unit).read_text()
    rendered = jinja_env().from_string(text).render(role_vars(role, **overrides))
    lines = [line for line in rendered.splitlines() if line.startswith(key + "=")]
    assert len(lines) == 1, rendered
    return shlex.split(lines[0][len(key) + 1:])


def unknown_flags(argv, known):
    return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--") and arg.split("=", 1)[0] not in known]


A1111_VARIANTS = [{}, {"a1111_gpu": False}, {"a1111_listen": True}, {"a1111_extra_args": ["--xformers"]}]
COMFYUI_VARIANTS = [{}, {"comfyui_gpu": False}, {"comfyui_listen_address": "0.0.0.0"}]


@pytest.mark.parametrize("overrides", A1111_VARIANTS)
def test_a1111_unit_passes_only_upstream_flags(overrides):
    argv = exec_start("a1111", "a1111.service.j2", **overrides)
    assert argv[1] == "launch.py"
    assert unknown_flags(argv, upstream_flags("a1111-v1.10.1-flags.txt")) == []


@pytest.mark.parametrize("overrides", COMFYUI_VARIANTS)
def test_comfyui_unit_passes_only_upstream_flags(overrides):
    argv = exec_start("comfyui", "comfyui.service.j2", **overrides)
    assert argv[1] == "main.py"
    assert unknown_flags(argv, upstream_flags("comfyui-flags.txt")) == []


def test_a1111_unit_wires_the_shared_model_dir_and_skips_preparation():
    argv = exec_start("a1111", "a1111.service.j2")
    for flag, folder in (("--ckpt-dir", "checkpoints"), ("--lora-dir", "loras"), ("--vae-dir", "vae"),
                         ("--embeddings-dir", "embeddings"), ("--esrgan-models-path", "upscale_models")):
        assert argv[argv.index(flag) + 1] == "/opt/sdcloud/models/" + folder
    assert "--skip-prepare-environment" in argv
    assert "--api" in argv
    assert "--listen" not in argv


def test_the_check_catches_a_flag_upstream_lacks():
    # --controlnet-dir belongs to the sd-webui-controlnet extension, not to A1111 itself.
    argv = exec_start("a1111", "a1111.service.j2", a1111_extra_args=["--controlnet-dir", "/x"])
    assert unknown_flags(argv, upstream_flags("a1111-v1.10.1-flags.txt")) == ["--controlnet-dir"]


@pytest.mark.parametrize(("role", "overrides"), [("comfyui", {}), ("comfyui", {"comfyui_gpu": False}), ("a1111", {}),
                                                 ("a1111", {"a1111_gpu": False, "a1111_persistent_dir": "/workspace"})])
def test_supervisord_runs_the_units_command_line(role, overrides):
    """Where systemd is not init, supervisord runs the UI with the command line of its unit, flag for flag."""
    unit = exec_start(role, f"{role}.service.j2", **overrides)
    assert exec_start(role, f"{role}.supervisor.conf.j2", key="command", **overrides) == unit
    if overrides.get("a1111_persistent_dir"):
        assert unit[0] == "/workspace/a1111/venv/bin/python"
