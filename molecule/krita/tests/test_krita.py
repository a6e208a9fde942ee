"""Verifier: custom nodes cloned as the comfyui user, requirements in the venv, classes loaded."""

import json

testinfra_hosts = ["ansible://sdc-krita-node"]
NODES = {"comfyui_controlnet_aux": "v0.0.1-fixture", "ComfyUI_IPAdapter_plus": "v0.0.1-fixture",
         "comfyui-tooling-nodes": "v0.0.2-fixture", "comfyui-inpaint-nodes": "v0.0.1-fixture"}


def test_nodes_checked_out_at_their_pins(host):
    for name, tag in NODES.items():
        path = "/opt/comfyui/app/custom_nodes/" + name
        assert host.file(path).user == "comfyui"
        assert host.check_output("runuser -u comfyui -- git -C %s describe --tags" % path) == tag
    assert not host.file("/opt/comfyui/app/custom_nodes/ComfyUI-GGUF").exists


def test_node_requirements_in_comfyuis_venv(host):
    assert host.run("/opt/comfyui/venv/bin/python -c 'import six'").rc == 0
    assert host.run("python3 -c 'import six'").rc != 0, "six must come from the venv, not the system"


def test_plugin_classes_in_object_info(host):
    info = json.loads(host.check_output("curl -fsS --max-time 5 http://127.0.0.1:8188/object_info"))
    for cls in ("InpaintPreprocessor", "DepthAnythingV2Preprocessor", "IPAdapterModelLoader", "IPAdapter",
                "ETN_LoadImageBase64", "ETN_LoadMaskBase64", "ETN_SendImageWebSocket", "ETN_Translate",
                "INPAINT_LoadFooocusInpaint", "INPAINT_ApplyFooocusInpaint", "INPAINT_ExpandMask"):
        assert cls in info, cls
    assert "UnetLoaderGGUF" not in info
