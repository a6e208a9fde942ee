"""Verifier: ComfyUI and AUTOMATIC1111 (stand-ins) side by side, one shared model directory."""

import json
import time

import pytest

testinfra_hosts = ["ansible://sdc-ui-node"]
MODELS = "/opt/sdcloud/models"


def get(host, url):
    return json.loads(host.check_output("curl -fsS --max-time 5 %s" % url))


def post(host, url):
    return host.check_output("curl -fsS --max-time 5 -X POST -H 'Content-Type: application/json' -d '{}' %s" % url)


def argv(host, unit):
    pid = host.check_output("systemctl show -p MainPID --value %s" % unit)
    return host.file("/proc/%s/cmdline" % pid).content.split(b"\0")


@pytest.mark.parametrize("unit,user", [("comfyui", "comfyui"), ("a1111", "a1111")])
def test_services_run_as_their_users(host, unit, user):
    svc = host.service(unit)
    assert svc.is_enabled and svc.is_running
    assert host.check_output("systemctl show -p User --value %s" % unit) == user


def test_a1111_command_line(host):
    args = [a.decode() for a in argv(host, "a1111") if a]
    assert args[1] == "launch.py"
    assert "--skip-prepare-environment" in args and "--api" in args and "--listen" not in args
    assert args[args.index("--ckpt-dir") + 1] == MODELS + "/checkpoints"
    assert args[args.index("--lora-dir") + 1] == MODELS + "/loras"
    assert args[args.index("--data-dir") + 1] == "/opt/a1111/data"


def test_a1111_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:7860").is_listening
    assert not host.socket("tcp://0.0.0.0:7860").is_listening
    assert get(host, "http://127.0.0.1:7860/internal/ping") == {}
    assert get(host, "http://127.0.0.1:7860/sdapi/v1/progress")["state"]["job_count"] == 0


def test_repositories_prepared_at_their_pins(host):
    for name in ("stable-diffusion-webui-assets", "stable-diffusion-stability-ai", "generative-models", "k-diffusion"):
        out = host.check_output("runuser -u a1111 -- git -C /opt/a1111/app/repositories/%s describe --tags" % name)
        assert out == "v0.0.1-fixture"
    assert host.check_output("runuser -u a1111 -- git -C /opt/a1111/app/repositories/BLIP describe --tags") == "v0.0.2-fixture"
    assert host.file("/opt/a1111/app/repositories/BLIP").user == "a1111"


def test_one_model_dir_for_both(host):
    ckpt = MODELS + "/checkpoints/verifier-shared.safetensors"
    lora = MODELS + "/loras/verifier-lora.safetensors"
    host.check_output("touch %s %s" % (ckpt, lora))
    try:
        assert "verifier-shared.safetensors" in get(host, "http://127.0.0.1:8188/models/checkpoints")
        titles = [m["title"] for m in get(host, "http://127.0.0.1:7860/sdapi/v1/sd-models")]
        assert "verifier-shared.safetensors" not in titles  # A1111 scans at start and on refresh only
        post(host, "http://127.0.0.1:7860/sdapi/v1/refresh-checkpoints")
        models = get(host, "http://127.0.0.1:7860/sdapi/v1/sd-models")
        assert {"title": "verifier-shared.safetensors", "filename": ckpt}.items() <= next(
            m for m in models if m["title"] == "verifier-shared.safetensors").items()
        post(host, "http://127.0.0.1:7860/sdapi/v1/refresh-loras")
        assert [x["path"] for x in get(host, "http://127.0.0.1:7860/sdapi/v1/loras")] == [lora]
        assert "verifier-lora.safetensors" in get(host, "http://127.0.0.1:8188/models/loras")
    finally:
        host.run("rm -f %s %s" % (ckpt, lora))


def test_a1111_restarts_in_seconds(host):
    start = time.monotonic()
    host.check_output("systemctl restart a1111")
    host.check_output("timeout 20 bash -c 'until curl -fs -o /dev/null http://127.0.0.1:7860/sdapi/v1/sd-models; do sleep 0.2; done'")
    assert time.monotonic() - start < 20
