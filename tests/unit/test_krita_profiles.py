"""The Krita plugin pins (roles/comfyui/vars/krita-<version>.yml) are what scripts/krita-profile makes of the plugin.

For every release tag of the real plugin (../shared/upstream/krita-ai-diffusion.bundle, cloned once per module):

1. The checked-in file exists and is byte for byte what the script writes now (one run for all tags); from 1.51 so
   do the plugin's own lock files (files/pip/krita-<version>-linux-<cuda|cpu>.txt), which below their header are
   byte for byte the plugin's ai_diffusion/backend/requirements/linux-<backend>.txt.
2. Its content is what the plugin itself computes. The generator reads resources.py with `ast`, never importing it;
   this test does the opposite, on purpose: every release's resources.py imports only the standard library at module
   level (its one relative import, in ControlMode.text, runs only when that property is read), so no Qt stub is
   needed. The test writes the tag's resources.py and the presets/models.json it loads into a temporary tree, laid
   out as the plugin ships them, exec()s resources.py there, and derives the expected nodes, model resources, resource
   ids and required/recommended flags from the plugin's own objects (CustomNode, ModelResource.from_list,
   ResourceId.string, recommended_models). A misread of resources.py or models.json by the generator's ast walk
   therefore fails here. `source` is checked against sources.json, not against the bundle's pin- tags the script uses.
3. 1.35.0 keeps the values of the hand-made file it replaced, which molecule/krita asserts: ComfyUI 5a87757e, the
   four required nodes (11 classes), GGUF (13 classes with it). The plugin also lists a second optional node,
   Comfy-WaveSpeed (ApplyFBCacheOnModel), which the hand-made file had left out; the file now has it too.
4. What the generator cannot interpret stops it with the tag, file and line.
"""

import difflib
import json
import re
import subprocess
from enum import Enum
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "krita-profile"
VARS = ROOT / "roles" / "comfyui" / "vars"
UPSTREAM = ROOT.parent / "shared" / "upstream"
BUNDLE = UPSTREAM / "krita-ai-diffusion.bundle"
RESOURCES = ("ai_diffusion/backend/resources.py", "ai_diffusion/resources.py")


def regenerate(tag: str) -> str:
    return f"scripts/krita-profile --repo ../shared/upstream/krita-ai-diffusion.bundle --tag {tag}"


def release_tags() -> list[str]:
    if not BUNDLE.exists():
        return []
    res = subprocess.run(["git", "ls-remote", "--tags", str(BUNDLE)], capture_output=True, text=True, check=False)
    tags = {line.split("refs/tags/", 1)[1].removesuffix("^{}") for line in res.stdout.splitlines() if "refs/tags/v" in line}
    return sorted(tags, key=lambda t: tuple(int(p) for p in t[1:].split(".")))


TAGS = release_tags()
HAND_MADE_1_35_0 = {  # roles/comfyui/vars/krita-1.35.0.yml as it was copied by hand from the plugin
    "comfy_url": "https://github.com/comfyanonymous/ComfyUI",
    "comfy_version": "5a87757ef96f807cf1cf5b41c55a0a84c9551f20",
    "required_nodes": [
        {"name": "comfyui_controlnet_aux", "git_url": "https://github.com/Fannovel16/comfyui_controlnet_aux",
         "version": "83463c2e4b04e729268e57f638b4212e0da4badc", "classes": ["InpaintPreprocessor", "DepthAnythingV2Preprocessor"]},
        {"name": "ComfyUI_IPAdapter_plus", "git_url": "https://github.com/cubiq/ComfyUI_IPAdapter_plus",
         "version": "b188a6cb39b512a9c6da7235b880af42c78ccd0d", "classes": ["IPAdapterModelLoader", "IPAdapter"]},
        {"name": "comfyui-tooling-nodes", "git_url": "https://github.com/Acly/comfyui-tooling-nodes",
         "version": "ca2b59248ece910579b55a1512b0a846928259ea",
         "classes": ["ETN_LoadImageBase64", "ETN_LoadMaskBase64", "ETN_SendImageWebSocket", "ETN_Translate"]},
        {"name": "comfyui-inpaint-nodes", "git_url": "https://github.com/Acly/comfyui-inpaint-nodes",
         "version": "b9039c22de926919f26b7242cfa4da00d8b6fbec",
         "classes": ["INPAINT_LoadFooocusInpaint", "INPAINT_ApplyFooocusInpaint", "INPAINT_ExpandMask"]},
    ],
    "optional_nodes": [
        {"name": "ComfyUI-GGUF", "git_url": "https://github.com/city96/ComfyUI-GGUF",
         "version": "a2b75978fd50c0227a58316619b79d525b88e570", "classes": ["UnetLoaderGGUF", "DualCLIPLoaderGGUF"]},
    ],
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["__comfyui_krita"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if not BUNDLE.exists():
        pytest.fail(f"{BUNDLE} missing: the plugin releases the pins are generated from")
    dest = tmp_path_factory.mktemp("krita") / "krita-ai-diffusion.git"
    git("clone", "-q", "--bare", str(BUNDLE), str(dest))
    return dest


@pytest.fixture(scope="module")
def generated(clone, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vars")
    cmd = [str(SCRIPT), "--repo", str(clone), "--out", str(out), "--locks-out", str(out / "pip")] + [a for t in TAGS for a in ("--tag", t)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, f"scripts/krita-profile failed:\n{res.stderr}"
    return out


def test_the_bundle_has_the_releases():
    assert BUNDLE.exists(), f"{BUNDLE} missing"
    assert "v1.35.0" in TAGS and "v1.53.0" in TAGS, f"release tags in {BUNDLE}: {TAGS}"


@pytest.mark.parametrize("tag", TAGS)
def test_vars_file_is_what_the_script_writes(tag, generated):
    name = f"krita-{tag[1:]}.yml"
    checked_in, fresh = VARS / name, generated / name
    assert checked_in.exists(), f"{checked_in.relative_to(ROOT)} missing: write it with `{regenerate(tag)}`"
    if checked_in.read_bytes() != fresh.read_bytes():
        diff = "".join(difflib.unified_diff(checked_in.read_text().splitlines(True), fresh.read_text().splitlines(True),
                                            f"checked in: {name}", "scripts/krita-profile now", n=2))
        pytest.fail(f"{name} is not what scripts/krita-profile writes now; regenerate it with `{regenerate(tag)}`\n{diff[:4000]}")


def plugin_lock_paths(clone: Path, tag: str) -> dict[str, str]:
    """{backend: path} of the plugin's own Linux lock files at `tag` (from 1.51), listed by git, not by the script."""
    names = git("-C", str(clone), "ls-tree", "--name-only", f"{tag}:ai_diffusion/backend/requirements/").split() \
        if subprocess.run(["git", "-C", str(clone), "cat-file", "-e", f"{tag}:ai_diffusion/backend/requirements"],
                          capture_output=True, check=False).returncode == 0 else []
    return {b: f"ai_diffusion/backend/requirements/linux-{b}.txt" for b in ("cuda", "cpu") if f"linux-{b}.txt" in names}


@pytest.mark.parametrize("tag", TAGS)
def test_plugin_locks_are_the_plugins_files(tag, clone, generated):
    """From 1.51 the plugin ships its server's pinned environment; the role installs it (files/pip/krita-*.txt):
    checked in, byte for byte what the script writes, and below its header byte for byte the plugin's file."""
    version = tag[1:]
    paths = plugin_lock_paths(clone, tag)
    shipped = sorted(p.name for p in (ROOT / "roles/comfyui/files/pip").glob(f"krita-{version}-linux-*.txt"))
    assert shipped == sorted(f"krita-{version}-linux-{b}.txt" for b in paths), f"{tag}: lock files"
    for backend, path in paths.items():
        name = f"krita-{version}-linux-{backend}.txt"
        checked_in = (ROOT / "roles/comfyui/files/pip" / name).read_text()
        assert checked_in == (generated / "pip" / name).read_text(), f"{name} is not what the script writes: `{regenerate(tag)}`"
        plugin = git("-C", str(clone), "show", f"{tag}:{path}")
        header, _, body = checked_in.partition("# This file was autogenerated by uv")
        assert "# This file was autogenerated by uv" + body == plugin, f"{name}: not the plugin's {path} below the header"
        assert all(line.startswith("# ") for line in header.splitlines()), f"{name}: the header must be comments"


def test_every_vars_file_names_its_release():
    for path in sorted(VARS.glob("krita-*.yml")):
        version = path.stem.removeprefix("krita-")
        assert path.read_text().startswith(f"---\n# What the Krita AI Diffusion plugin {version} requires"), \
            f"{path.name} was not written by scripts/krita-profile"
        assert load(path)["plugin_version"] == version, f"{path.name}: plugin_version is not {version}"


# --- What the plugin itself says ------------------------------------------------------------------------------------

def plugin_resources(clone: Path, tag: str, tmp: Path) -> tuple[str, dict]:
    """(resources.py path, its module namespace) for one tag: the plugin's own code, run from a temporary tree."""
    path = next(p for p in RESOURCES if subprocess.run(["git", "-C", str(clone), "cat-file", "-e", f"{tag}:{p}"],
                                                        capture_output=True, check=False).returncode == 0)
    source = git("-C", str(clone), "show", f"{tag}:{path}")
    m = re.search(r"^_models_file = Path\(__file__\)((?:\.parent)+) / \"presets\" / \"models.json\"$", source, re.MULTILINE)
    assert m, f"{tag} {path}: no `_models_file = Path(__file__).parent... / \"presets\" / \"models.json\"`"
    models_path = Path(path).parents[m.group(1).count(".parent") - 1] / "presets" / "models.json"
    for p, text in ((path, source), (str(models_path), git("-C", str(clone), "show", f"{tag}:{models_path}"))):
        (tmp / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp / p).write_text(text)
    ns = {"__name__": f"krita_resources_{tag.replace('.', '_')}", "__file__": str(tmp / path)}
    exec(compile(source, str(tmp / path), "exec"), ns)  # the plugin's own code, from the test bundle
    return path, ns


def expected_profile(path: str, ns: dict, source: str, *, version: str = "", locks: dict | None = None, python: str = "") -> dict:
    def nodes(name):
        return [{"name": n.folder, "git_url": n.url, "version": n.version, "classes": list(n.nodes)} for n in ns[name]]

    def ident(i):
        return i.name if isinstance(i, Enum) else i

    recommended = ns.get("recommended_models", [])
    models = []
    # the model lists in the order resources.py assigns them (a regex, independent of the generator's ast walk)
    for group in re.findall(r"^(\w+) = ModelResource\.from_list\(", source, re.MULTILINE):
        for m in ns[group]:
            model = {
                "id": m.id.string, "kind": m.id.kind.name, "arch": m.id.arch.name, "identifier": ident(m.id.identifier),
                "name": m.name, "group": group, "required": group == "required_models",
                "recommended": any(m is r for r in recommended), "folder": m.folder.as_posix(),
                "files": [{"path": f.path.as_posix(), "url": f.url, **({"sha256": f.sha256} if f.sha256 else {}),
                           **({"id": f.id.string} if f.id != m.id else {})} for f in m.files],
            }
            if m.alternatives:
                model["alternatives"] = [a.as_posix() for a in m.alternatives]
            if m.requirements.name != "none":
                model["requirements"] = m.requirements.name
            models.append(model)
    profile = {
        "server_version": ns["version"], "comfy_url": ns["comfy_url"], "comfy_version": ns["comfy_version"],
        "required_nodes": nodes("required_custom_nodes"), "optional_nodes": nodes("optional_custom_nodes"),
    }
    if "nunchaku_version" in ns:
        profile["nunchaku_version"] = ns["nunchaku_version"]
    if locks:
        profile["pip_locks"] = {b: f"krita-{version}-linux-{b}" for b in ("cuda", "cpu")}
        profile["pip_python"] = python
    profile["required_resource_ids"] = sorted({r.string for r in ns["required_resource_ids"]})
    profile["models"] = models
    return profile


@pytest.mark.parametrize("tag", TAGS)
def test_vars_file_says_what_the_plugin_says(tag, clone, tmp_path):
    path, ns = plugin_resources(clone, tag, tmp_path)
    locks = plugin_lock_paths(clone, tag)
    python = ""
    if locks:  # the Python the plugin's own lock was compiled for, from uv's header line in it
        python = re.search(r"--python-version (\S+)", git("-C", str(clone), "show", f"{tag}:{locks['cuda']}")).group(1)
    expected = expected_profile(path, ns, (tmp_path / path).read_text(), version=tag[1:], locks=locks, python=python)
    got = load(VARS / f"krita-{tag[1:]}.yml")
    served = git("-C", str(clone), "rev-parse", f"{tag}^{{commit}}").strip()
    original = next(s["original"] for s in json.loads((UPSTREAM / "sources.json").read_text())
                    if s["name"] == "krita-ai-diffusion" and s["served"] == served)
    assert got.pop("plugin_version") == tag[1:]
    assert got.pop("source") == f"Acly/krita-ai-diffusion {path} @ {original}"
    assert list(got) == list(expected), f"{tag}: keys"
    for key in expected:
        if key == "models":
            assert [m["id"] for m in got[key]] == [m["id"] for m in expected[key]], f"{tag}: model ids and order"
            for g, e in zip(got[key], expected[key], strict=True):
                assert g == e, f"{tag}: model {e['id']} ({e['group']})"
        else:
            assert got[key] == expected[key], f"{tag}: {key}"


# --- 1.35.0: what molecule/krita asserts ----------------------------------------------------------------------------

def test_1_35_0_keeps_the_hand_made_pins():
    pins = load(VARS / "krita-1.35.0.yml")
    assert pins["comfy_url"] == HAND_MADE_1_35_0["comfy_url"]
    assert pins["comfy_version"] == HAND_MADE_1_35_0["comfy_version"]
    assert pins["required_nodes"] == HAND_MADE_1_35_0["required_nodes"]
    assert [n["name"] for n in pins["required_nodes"]] == [
        "comfyui_controlnet_aux", "ComfyUI_IPAdapter_plus", "comfyui-tooling-nodes", "comfyui-inpaint-nodes"]
    gguf, *others = pins["optional_nodes"]
    assert gguf == HAND_MADE_1_35_0["optional_nodes"][0]
    # the plugin's second optional node, which the hand-made file had left out
    assert others == [{"name": "Comfy-WaveSpeed", "git_url": "https://github.com/chengzeyi/Comfy-WaveSpeed",
                       "version": "16ec6f344f8cecbbf006d374043f85af22b7a51d", "classes": ["ApplyFBCacheOnModel"]}]
    required = [c for n in pins["required_nodes"] for c in n["classes"]]
    assert len(required) == 11
    assert len(required + gguf["classes"]) == 13
    assert "ETN_SendImageWebSocket" in required and "UnetLoaderGGUF" in gguf["classes"]


# --- What the generator refuses -------------------------------------------------------------------------------------

WHERE = r"v9\.9\.9 ai_diffusion/resources\.py"


@pytest.mark.parametrize(("change", "message"), [
    (('comfy_version = "5a87757ef96f807cf1cf5b41c55a0a84c9551f20"', "comfy_version = pinned()"),
     WHERE + r":14: cannot evaluate `pinned\(\)`"),
    (('comfy_url = "https://github.com/comfyanonymous/ComfyUI"', 'comfy_url = "https://github.com/comfyanonymous/ComfyUI"\n'
      'torch_version = "2.13"'), WHERE + r":14: assigns `torch_version`, which scripts/krita-profile does not know"),
    (("Arch.sd15, ControlMode.blur)", "Arch.sd16, ControlMode.blur)"), WHERE + r":\d+: Arch has no member 'sd16'"),
], ids=["not-a-literal", "unknown-pin", "unknown-enum-member"])
def test_generator_names_tag_file_and_line_of_what_it_cannot_read(change, message, clone, tmp_path):
    work = tmp_path / "plugin"
    git("init", "-q", str(work))
    for path in ("ai_diffusion/resources.py", "ai_diffusion/presets/models.json"):
        text = git("-C", str(clone), "show", f"v1.35.0:{path}")
        if path.endswith(".py"):
            assert change[0] in text
            text = text.replace(change[0], change[1])
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    git("-C", str(work), "add", "-A")
    git("-C", str(work), "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", "broken")
    git("-C", str(work), "tag", "v9.9.9")
    res = subprocess.run([str(SCRIPT), "--repo", str(work), "--tag", "v9.9.9", "--out", str(tmp_path / "out"),
                          "--locks-out", str(tmp_path / "out")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 1, res.stderr
    assert re.search(message, res.stderr), res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "wrote a file despite the error"
