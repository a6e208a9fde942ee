"""The declared model list: its refusals (filter and module), the kinds' one owner, a file's one name."""

from __future__ import annotations

import hashlib
import pathlib
import sys

import pytest
import yaml
from ansible.module_utils.sdcloud import model_list

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))
sys.path.insert(0, str(ROOT / "plugins" / "modules"))
sys.path.insert(0, str(ROOT / "plugins" / "filter"))

import model_server  # noqa: E402
import model_sync  # noqa: E402
import models as filters  # noqa: E402
from module_runner import run_main  # noqa: E402

GOOD = [
    {"kind": "checkpoints", "source": "hf://stabilityai/sdxl/sd_xl_base_1.0.safetensors@main"},
    {"kind": "checkpoints", "source": "hf://org/repo/sub/dir/m.safetensors@0123abcd"},
    {"kind": "loras", "source": "civitai://62833", "name": "detail.safetensors"},
    {"kind": "vae", "source": "https://example.com/vae.safetensors?download=1", "sha256": "sha256:" + "A" * 64, "size": 10},
    {"kind": "upscale_models", "source": "s3://bucket/4x.pth"},
    {"kind": "controlnet", "source": "gs://bucket/cn/canny.safetensors"},
    {"kind": "embeddings", "source": "local:~/models/emb.pt"},
    {"kind": "clip", "source": "file:///srv/models/clip_l.safetensors"},
]


def test_a_good_list_has_no_problems():
    assert filters.sdcloud_model_problems(GOOD, []) == []
    assert filters.sdcloud_model_problems([], GOOD) == []


@pytest.mark.parametrize(("entry", "needles"), [
    ({"kind": "checkpoints", "source": "hf://org/repo/m.safetensors"},
     ["sdcloud_models[0] (m.safetensors): hf://org/repo/m.safetensors has no @revision",
      "pin it as hf://org/repo/m.safetensors@<commit or tag>, or end it in @main"]),
    ({"kind": "checkpoints", "source": "hf://org/repo/m.safetensors@"}, ["ends in an empty @"]),
    ({"kind": "checkpoints", "source": "hf://org/m.safetensors@main"}, ["is not hf://owner/repo/path/in/repo@revision"]),
    ({"kind": "loras", "name": "x.safetensors", "source": "civitai://detail-tweaker"},
     ["sdcloud_models[0] (x.safetensors): civitai://detail-tweaker is not a Civitai model version id",
      "civitai://<model version id>, digits only"]),
    ({"kind": "loras", "name": "x.safetensors", "source": "civitai://"}, ["digits only"]),
    ({"kind": "vae", "source": "ftp://example.com/vae.pt"}, ["ftp://example.com/vae.pt is not a source sdcloud can download: use https://"]),
    ({"kind": "vae", "source": "s3://bucket"}, ["s3://bucket must be s3://bucket/key"]),
    ({"kind": "vae", "source": "file://relative/vae.pt"}, ["must be file:///absolute/path/on/the/machine"]),
    ({"source": "https://example.com/vae.pt"}, ["sdcloud_models[0] (vae.pt): 'kind' is missing: give the kind folder, one of"]),
    ({"kind": "vae"}, ["sdcloud_models[0] (?): 'source' is missing"]),
    ({"kind": "checkpoint", "source": "https://example.com/a.safetensors"},
     ["unknown kind 'checkpoint': 'checkpoints'? Else use one of", "(or add it to models_extra_kinds)"]),
    ({"kind": "vae", "source": "https://example.com/a.pt", "sha256": "abc"}, ["sha256 must be 64 hex digits", "got 'abc'"]),
    ({"kind": "vae", "source": "https://example.com/a.pt", "size": "big"}, ["size must be a whole number of bytes, got 'big'"]),
    ({"kind": "vae", "source": "https://example.com/a.pt", "name": "../a.pt"}, ["name '../a.pt' must be a relative file name"]),
    ({"kind": "loras", "source": "civitai://123"}, ["set 'name'"]),
    ("https://example.com/a.pt", ["sdcloud_models[0] is 'https://example.com/a.pt': give a mapping"]),
])
def test_each_problem_names_the_entry_the_setting_and_the_fix(entry, needles):
    problems = filters.sdcloud_model_problems([GOOD[0], entry])
    text = " | ".join(problems).replace("sdcloud_models[1]", "sdcloud_models[0]")
    for needle in needles:
        assert needle in text, problems


def test_the_same_kind_and_name_twice_across_the_list_and_the_manifest():
    dup = {"kind": "vae", "name": "v.safetensors", "source": "https://example.com/other.safetensors"}
    (problem,) = filters.sdcloud_model_problems([GOOD[3], dup], [dict(dup, source="s3://b/v.safetensors")])
    assert problem.startswith("sdcloud_models_manifest[0] (v.safetensors): vae/v.safetensors is declared twice "
                              "(also sdcloud_models[1] (v.safetensors))"), problem
    assert filters.sdcloud_model_problems([dup, dict(dup, kind="loras")]) == []  # per kind


def test_credentials_never_appear_in_a_problem():
    src = "ftp://user:pw_hunter22@example.com/a.pt?token=tok_hunter22"
    problems = filters.sdcloud_model_problems([{"kind": "vae", "source": src}, src])
    assert len(problems) == 2 and "hunter22" not in " ".join(problems), problems


def test_extra_kinds_are_kinds():
    entry = {"kind": "reactor", "source": "https://example.com/inswapper.onnx"}
    assert filters.sdcloud_model_problems([entry])
    assert filters.sdcloud_model_problems([entry], [], ["reactor"]) == []
    assert filters.sdcloud_model_kinds(["reactor"]) == sorted(model_list.KINDS | {"reactor"})


def test_the_ui_roles_point_only_at_kinds():
    """model_list.KINDS owns the kinds: ComfyUI's folders are the filter's list, and each AUTOMATIC1111 flag
    names one of them."""
    comfyui = yaml.safe_load((ROOT / "roles/comfyui/vars/main.yml").read_text())["__comfyui_model_folders"]
    assert comfyui.replace(" ", "") == "{{[]|sdcloud_model_kinds}}"
    a1111 = yaml.safe_load((ROOT / "roles/a1111/vars/main.yml").read_text())["__a1111_model_flags"]
    assert a1111 and {f["folder"] for f in a1111} <= model_list.KINDS


@pytest.mark.parametrize(("source", "name"), [
    ("https://example.com/loras/lora@v2.safetensors", "lora@v2.safetensors"),
    ("local:~/models/lora@v2.safetensors", "lora@v2.safetensors"),
    ("file:///srv/m/a@b.pt", "a@b.pt"),
    ("hf://org/repo/sub/m@x.safetensors@main", "m"),  # hf://: the first @ of the last element starts the revision
    ("hf://org/repo/sub/m.safetensors@v1", "m.safetensors"),
    ("s3://bucket/dir/k.pth", "k.pth"),
    ("civitai://123", ""),
])
def test_one_file_name_derivation(source, name):
    assert model_list.file_name(source) == name


def test_upload_plan_stages_local_files_under_the_derived_name():
    wanted = [{"kind": "loras", "source": "local:~/m/lora@v2.safetensors"}, GOOD[3],
              {"kind": "vae", "name": "mine.pt", "source": "local:/srv/x.pt"}]
    plan = filters.sdcloud_model_uploads(wanted, "/opt/m/.upload/", "/opt/m")
    assert plan["models"][1] is GOOD[3]
    assert plan["models"][0] == {"kind": "loras", "name": "lora@v2.safetensors", "source": "file:///opt/m/.upload/loras/lora@v2.safetensors"}
    assert plan["staged"] == [plan["models"][0], plan["models"][2]]
    assert plan["uploads"][0] == {"kind": "loras", "name": "lora@v2.safetensors", "src": str(pathlib.Path.home() / "m/lora@v2.safetensors"),
                                  "dest": "/opt/m/.upload/loras/lora@v2.safetensors", "dest_final": "/opt/m/loras/lora@v2.safetensors"}
    assert plan["uploads"][1]["dest_final"] == "/opt/m/vae/mine.pt"
    assert filters.sdcloud_model_uploads("not a list", "/u", "/m")["models"] == "not a list"


# ---------------------------------------------------------------- the module refuses the same, before anything


@pytest.fixture(scope="module")
def server():
    with model_server.ModelServer() as srv:
        yield srv


@pytest.fixture
def base(tmp_path, server):
    return {"models_dir": str(tmp_path / "models"), "log_path": str(tmp_path / "sync.log"), "gcs_metadata_token": False,
            "hf_endpoint": server.url(""), "civitai_endpoint": server.url(""), "backoff": 0.05, "retries": 1}


@pytest.mark.parametrize("check", [True, False], ids=["check", "real"])
@pytest.mark.parametrize(("entry", "needle"), [
    ({"kind": "vae", "source": "hf://org/repo/v.safetensors"}, "models[0] (v.safetensors): hf://org/repo/v.safetensors has no @revision"),
    ({"kind": "loras", "name": "l.safetensors", "source": "civitai://abc"}, "models[0] (l.safetensors): civitai://abc is not a Civitai"),
    ({"kind": "vae", "source": "local:/tmp/v.pt"}, "give this module file:///<path on the server>"),
    ({"kind": "vae", "source": "gopher://h/v.pt"}, "is not a source sdcloud can download"),
    ({"kind": "vae", "source": "https://h/v.pt", "name": "v.pt", "sha256": "0" * 63}, "sha256 must be 64 hex digits"),
])
def test_module_refuses_before_any_request_or_folder(server, base, tmp_path, entry, needle, check):  # noqa: PLR0917 - pytest fixtures
    server.clear()
    failed, res = run_main(model_sync.main, {**base, "models": [entry]}, check=check)
    assert failed and res["msg"].startswith("invalid model list: ") and needle in res["msg"], res
    assert server.requests() == [] and not (tmp_path / "models").exists() and not (tmp_path / "sync.log").exists()


def test_a_name_with_an_at_sign_is_kept(server, base, tmp_path):
    """Without `name`, https://.../lora@v2.safetensors lands as lora@v2.safetensors (it used to be cut to `lora`)."""
    data = b"lora at v2" * 1000
    url = server.add("/loras/lora@v2.safetensors", data)
    entry = {"kind": "loras", "source": url, "sha256": hashlib.sha256(data).hexdigest()}
    failed, res = run_main(model_sync.main, {**base, "models": [entry]})
    assert not failed, res
    assert res["files"][0]["name"] == "lora@v2.safetensors"
    assert (tmp_path / "models" / "loras" / "lora@v2.safetensors").read_bytes() == data
