"""model_sync: main() end to end against the local model server stand-in (tests/standins/model_server.py)."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import socket
import sys
import time
from unittest import mock

import pytest
from ansible.module_utils.sdcloud import download, model_state, transfer

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "standins"))
sys.path.insert(0, str(ROOT / "plugins" / "modules"))

import model_server  # noqa: E402
import model_sync  # noqa: E402
from module_runner import run_main  # noqa: E402

KB = 1024
MB = 1024 * 1024


def blob(seed, size):
    """Deterministic pseudo-random bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def sha(data):
    return hashlib.sha256(data).hexdigest()


def run(args, check=False, diff=False):
    """Run model_sync.main() with args; return (failed, result)."""
    return run_main(model_sync.main, args, check=check, diff=diff)


@pytest.fixture(scope="module")
def server():
    with model_server.ModelServer() as srv:
        yield srv


@pytest.fixture
def slow_server():
    """Each connection limited to 2 MB/s."""
    with model_server.ModelServer(rate=2 * MB) as srv:
        yield srv


@pytest.fixture
def base(tmp_path):
    return {
        "models_dir": str(tmp_path / "models"),
        "log_path": str(tmp_path / "sync.log"),
        "backoff": 0.05,
        "retries": 3,
        "timeout": 10,
        "gcs_metadata_token": False,
    }


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    """Let small test files be split into many ranges (production: 1 MiB pieces)."""
    monkeypatch.setattr(transfer, "MIN_PIECE", 64 * KB)


def model(name, kind, source, data=None, **extra):
    entry = {"name": name, "kind": kind, "source": source}
    if data is not None:
        entry["sha256"] = sha(data)
    entry.update(extra)
    return entry


def gets(srv, path):
    return [e for e in srv.requests(path) if e["method"] == "GET"]


# ---------------------------------------------------------------- basic fetching


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "no-ranges"])
def test_fetches_into_kind_folder_and_verifies(server, base, tmp_path, ranges):
    data = blob(f"basic-{ranges}", 300 * KB)
    path = f"/basic-{ranges}.safetensors"
    url = server.add(path, data, ranges=ranges)
    failed, res = run({**base, "models": [model("a.safetensors", "checkpoints", url, data)]})
    assert not failed, res
    assert res["changed"] is True
    dest = tmp_path / "models" / "checkpoints" / "a.safetensors"
    assert dest.read_bytes() == data
    (entry,) = res["files"]
    assert entry["status"] == "fetched" and entry["action"] == "create"
    assert entry["bytes"] == len(data) and entry["sha256"] == sha(data) and entry["connections"] == 1
    assert entry["seconds"] >= 0 and entry["mbps"] > 0
    assert os.listdir(tmp_path / "models" / ".partial" / "checkpoints") == []
    state = json.loads((tmp_path / "models" / ".sdcloud-state.json").read_text())
    assert state["files"]["checkpoints/a.safetensors"]["sha256"] == sha(data)
    log = (tmp_path / "sync.log").read_text()
    assert "checkpoints/a.safetensors: done" in log and "MiB/s" in log


def test_multi_connection_is_faster_than_one_on_a_throttled_server(slow_server, base, tmp_path):
    data = blob("multi", 3 * MB)
    url = slow_server.add("/big.safetensors", data)
    args = {**base, "split_threshold": 1 * MB}
    t0 = time.monotonic()
    failed, res = run({**args, "connections": 1, "models": [model("one.safetensors", "checkpoints", url, data)]})
    single = time.monotonic() - t0
    assert not failed, res
    assert single > 1.2  # 3 MB at 2 MB/s on one connection
    slow_server.clear()
    t0 = time.monotonic()
    failed, res = run({**args, "connections": 8, "models": [model("eight.safetensors", "checkpoints", url, data)]})
    multi = time.monotonic() - t0
    assert not failed, res
    assert res["files"][0]["connections"] == 8
    assert (tmp_path / "models" / "checkpoints" / "eight.safetensors").read_bytes() == data
    ranged = [e for e in gets(slow_server, "/big.safetensors") if e["range"] != "bytes=0-0"]
    assert len(ranged) >= 8 and all(e["range"] and e["status"] == 206 for e in ranged)
    assert len({e["client_port"] for e in ranged}) >= 8  # separate connections
    assert res["files"][0]["bytes"] == len(data)  # each byte written once
    # a connection whose range was split (work stealing) hangs up; bytes already in flight are wasted
    assert sum(e["sent"] for e in ranged) <= len(data) * 1.25
    assert multi < single / 2.5, (single, multi)


# ---------------------------------------------------------------- redirects and tokens


def test_redirect_to_other_host_drops_authorization(server, base, tmp_path):
    data = blob("redirect", 200 * KB)
    server.add("/cdn/model.bin", data, reject_auth=True)  # a signed CDN URL: refuses Authorization
    server.add(
        "/org/repo/resolve/v1/sub/model.bin",
        token="hf_redirecttoken123",
        redirect_to=server.other_url("/cdn/model.bin"),
    )
    args = {
        **base,
        "hf_endpoint": server.url(""),
        "hf_token": "hf_redirecttoken123",
        "models": [model("model.bin", "vae", "hf://org/repo/sub/model.bin@v1", data)],
    }
    failed, res = run(args)
    assert not failed, res
    assert (tmp_path / "models" / "vae" / "model.bin").read_bytes() == data
    origin = server.requests("/org/repo/resolve/v1/sub/model.bin")
    cdn = server.requests("/cdn/model.bin")
    assert origin and all(e["authorization"] == "Bearer hf_redirecttoken123" for e in origin)
    assert cdn and all(e["authorization"] is None for e in cdn)
    assert all(e["host"].startswith("localhost:") for e in cdn)
    assert "hf_redirecttoken123" not in json.dumps(res)


@pytest.mark.parametrize("token", [None, "hf_wrongtoken456"], ids=["missing", "wrong"])
def test_401_names_the_token_variable_and_never_shows_it(server, base, tmp_path, token):
    server.add("/gated/repo/resolve/main/m.safetensors", blob("gated", 10 * KB), token="hf_righttoken789")
    args = {
        **base,
        "hf_endpoint": server.url(""),
        "models": [model("m.safetensors", "unet", "hf://gated/repo/m.safetensors@main")],
    }
    if token:
        args["hf_token"] = token
    failed, res = run(args)
    assert failed
    assert "HTTP 401" in res["msg"] and "HF_TOKEN" in res["msg"] and "hf_token" in res["msg"]
    assert res["files"][0]["status"] == "failed"
    assert not (tmp_path / "models" / "unet" / "m.safetensors").exists()
    blob_text = json.dumps(res) + (tmp_path / "sync.log").read_text()
    assert "hf_wrongtoken456" not in blob_text and "hf_righttoken789" not in blob_text


def test_token_in_url_is_redacted_everywhere(server, base, tmp_path):
    url = server.url("/api/download/models/999?type=Model&token=civ_secret_in_url")
    failed, res = run({**base, "models": [model("gone.safetensors", "loras", url)]})
    assert failed
    assert "HTTP 404" in res["msg"] and "/api/download/models/999" in res["msg"]
    text = json.dumps(res) + (tmp_path / "sync.log").read_text()
    assert "civ_secret_in_url" not in text
    assert "token=REDACTED" in res["msg"]


def test_civitai_login_page_instead_of_file(server, base, tmp_path):
    data = blob("civitai", 150 * KB)
    server.add("/api/download/models/4242", data, token="civ_goodtoken", html_login=True)
    args = {
        **base,
        "civitai_endpoint": server.url(""),
        "models": [model("x.safetensors", "loras", "civitai://4242", data)],
    }
    failed, res = run(args)
    assert failed
    assert "HTML" in res["msg"] and "login" in res["msg"] and "CIVITAI_TOKEN" in res["msg"]
    assert not (tmp_path / "models" / "loras" / "x.safetensors").exists()
    failed, res = run({**args, "civitai_token": "civ_goodtoken"})
    assert not failed, res
    assert (tmp_path / "models" / "loras" / "x.safetensors").read_bytes() == data
    assert "civ_goodtoken" not in json.dumps(res) + (tmp_path / "sync.log").read_text()


# ---------------------------------------------------------------- failures, retries, resume


def test_dropped_connection_resumes_from_partial_size(server, base, tmp_path):
    data = blob("drop", 1 * MB)
    cut = 300 * KB + 17
    url = server.add("/drop.safetensors", data, drop_after=cut)
    failed, res = run({**base, "models": [model("d.safetensors", "checkpoints", url, data)]})
    assert not failed, res
    assert (tmp_path / "models" / "checkpoints" / "d.safetensors").read_bytes() == data
    body = [e for e in gets(server, "/drop.safetensors") if e["range"] != "bytes=0-0"]
    assert len(body) == 2
    assert body[0]["sent"] == cut
    assert body[1]["range"] == f"bytes={cut}-{len(data) - 1}"
    assert body[0]["sent"] + body[1]["sent"] == len(data)  # nothing downloaded twice


def test_interrupted_multi_connection_download_resumes_next_run(server, base, tmp_path):
    data = blob("resume", 2 * MB)
    cut = 100 * KB
    url = server.add("/resume.safetensors", data, drop_after=cut, drop_times=4)
    args = {
        **base,
        "retries": 0,
        "connections": 4,
        "split_threshold": 1 * MB,
        "models": [model("r.safetensors", "checkpoints", url, data)],
    }
    failed, res = run(args)
    assert failed and "connection dropped" in res["msg"]
    partial = tmp_path / "models" / ".partial" / "checkpoints"
    assert (partial / "r.safetensors.part").exists() and (partial / "r.safetensors.part.json").exists()
    assert not (tmp_path / "models" / "checkpoints" / "r.safetensors").exists()
    done = json.loads((partial / "r.safetensors.part.json").read_text())["done"]
    have = sum(e - s for s, e in done)
    assert have >= cut
    server.files["/resume.safetensors"].drop_times = 0
    server.clear()
    failed, res = run(args)
    assert not failed, res
    assert (tmp_path / "models" / "checkpoints" / "r.safetensors").read_bytes() == data
    assert res["files"][0]["resumed_from"] == have
    body = [e for e in gets(server, "/resume.safetensors") if e["range"] != "bytes=0-0"]
    assert sum(e["sent"] for e in body) == len(data) - have
    starts = {int(e["range"].split("=")[1].split("-")[0]) for e in body}
    assert starts.isdisjoint({s for s, _ in done})  # no completed range asked for again
    assert not (partial / "r.safetensors.part.json").exists()


def test_sha_mismatch_keeps_previous_file_and_finishes_the_others(server, base, tmp_path):
    good = blob("v1", 120 * KB)
    newer = blob("v2", 120 * KB)
    other = blob("other", 80 * KB)
    server.add("/v1.safetensors", good)
    server.add("/v2.safetensors", newer, corrupt=True)  # serves wrong bytes
    server.add("/other.safetensors", other)
    first = [model("m.safetensors", "checkpoints", server.url("/v1.safetensors"), good)]
    assert not run({**base, "models": first})[0]
    wanted = [
        model("m.safetensors", "checkpoints", server.url("/v2.safetensors"), newer),
        model("o.safetensors", "loras", server.url("/other.safetensors"), other),
    ]
    failed, res = run({**base, "models": wanted})
    assert failed
    assert "1 of 2 model files failed" in res["msg"]
    assert f"expected {sha(newer)}" in res["msg"] and f"got {sha(bytes(b ^ 0x5A for b in newer))}" in res["msg"]
    assert (tmp_path / "models" / "checkpoints" / "m.safetensors").read_bytes() == good
    assert (tmp_path / "models" / "loras" / "o.safetensors").read_bytes() == other
    assert not list((tmp_path / "models" / ".partial").rglob("*.part*"))
    assert res["changed"] is True  # o.safetensors was written


def test_429_honours_retry_after(server, base, tmp_path):
    data = blob("429", 50 * KB)
    url = server.add("/busy.safetensors", data, fail_429=1, retry_after="1")
    failed, res = run({**base, "backoff": 0.01, "models": [model("b.safetensors", "vae", url, data)]})
    assert not failed, res
    first, second = server.requests("/busy.safetensors")[:2]
    assert first["status"] == 429
    assert second["time"] - first["time"] >= 0.95
    assert "retry 1/3" in (tmp_path / "sync.log").read_text()


def test_5xx_gives_up_after_retries(server, base, tmp_path):
    url = server.add("/broken.safetensors", status=503)
    failed, res = run({**base, "retries": 2, "models": [model("x.safetensors", "vae", url)]})
    assert failed and "HTTP 503" in res["msg"] and "gave up after 2 retries" in res["msg"]
    assert len(server.requests("/broken.safetensors")) == 3


def test_404_names_the_url(server, base):
    url = server.url("/nope/missing.safetensors")
    failed, res = run({**base, "models": [model("missing.safetensors", "vae", url)]})
    assert failed and "HTTP 404" in res["msg"] and url in res["msg"]


def test_disk_space_checked_before_any_download(server, base, tmp_path):
    url = server.add("/huge.safetensors", b"x")
    huge = 10**18
    failed, res = run({**base, "models": [model("h.safetensors", "checkpoints", url, size=huge)]})
    assert failed and "not enough disk space" in res["msg"] and str(huge) in res["msg"]
    assert server.requests("/huge.safetensors") == []


def test_declared_size_differs_from_server(server, base):
    url = server.add("/sized.safetensors", blob("sized", 10 * KB))
    failed, res = run({**base, "models": [model("s.safetensors", "vae", url, size=5)]})
    assert failed and "size is declared as 5" in res["msg"]


# ---------------------------------------------------------------- idempotence, check mode, diff, prune


@pytest.fixture
def three(server):
    files = {n: blob(f"three-{n}", (40 + 10 * i) * KB) for i, n in enumerate(("a", "b", "c"))}
    for n, data in files.items():
        server.add(f"/three/{n}.safetensors", data)
    models = [model(f"{n}.safetensors", "loras", server.url(f"/three/{n}.safetensors"), d) for n, d in files.items()]
    return files, models


def test_noop_rerun_makes_no_request_and_hashes_nothing(server, base, three):
    _files, models = three
    failed, res = run({**base, "models": models})
    assert not failed and res["changed"] is True
    server.clear()
    with mock.patch.object(model_state, "sha256_file", side_effect=AssertionError("re-hashed")):
        for check in (True, False):
            failed, res = run({**base, "models": models}, check=check, diff=True)
            assert not failed, res
            assert res["changed"] is False
            assert {f["status"] for f in res["files"]} == {"present"}
            assert res["diff"]["before"] == res["diff"]["after"]
    assert server.requests() == []


def test_changing_one_sha256_refetches_only_that_file(server, base, three, tmp_path):
    files, models = three
    assert not run({**base, "models": models})[0]
    new_b = blob("three-b-v2", 70 * KB)
    server.add("/three/b.safetensors", new_b)
    models[1]["sha256"] = sha(new_b)
    server.clear()
    failed, res = run({**base, "models": models}, check=True)
    assert not failed and res["changed"] is True
    assert [f["status"] for f in res["files"]] == ["present", "would_fetch", "present"]
    assert server.requests() == []
    failed, res = run({**base, "models": models})
    assert not failed and res["changed"] is True
    assert [f["status"] for f in res["files"]] == ["present", "fetched", "present"]
    assert res["files"][1]["action"] == "replace" and res["files"][1]["reason"] == "sha256 changed"
    assert {e["path"] for e in server.requests()} == {"/three/b.safetensors"}
    assert (tmp_path / "models" / "loras" / "b.safetensors").read_bytes() == new_b


@pytest.mark.parametrize("check", [True, False], ids=["check", "real"])
def test_first_run_plan_and_check_mode_changes_nothing(server, base, three, tmp_path, check):
    _files, models = three
    server.clear()
    failed, res = run({**base, "models": models}, check=check, diff=True)
    assert not failed and res["changed"] is True
    assert res["diff"]["before"] == ""
    assert res["diff"]["after"] == "loras/a.safetensors\nloras/b.safetensors\nloras/c.safetensors\n"
    if check:
        assert [f["status"] for f in res["files"]] == ["would_fetch"] * 3
        assert not (tmp_path / "models").exists() and not (tmp_path / "sync.log").exists()
        assert server.requests() == []
    else:
        assert [f["status"] for f in res["files"]] == ["fetched"] * 3


def test_existing_correct_file_is_adopted_without_download(server, base, tmp_path):
    data = blob("adopt", 30 * KB)
    url = server.add("/adopt.safetensors", data)
    dest = tmp_path / "models" / "embeddings" / "e.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(data)
    failed, res = run({**base, "models": [model("e.pt", "embeddings", url, data)]})
    assert not failed and res["changed"] is False
    assert res["files"][0]["reason"] == "verified existing file"
    assert server.requests("/adopt.safetensors") == []
    state = json.loads((tmp_path / "models" / ".sdcloud-state.json").read_text())
    assert state["files"]["embeddings/e.pt"]["sha256"] == sha(data)


def test_prune_check_mode_then_real(server, base, three, tmp_path):
    _files, models = three
    assert not run({**base, "models": models})[0]
    stray = tmp_path / "models" / "checkpoints" / "old.safetensors"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"old")
    (tmp_path / "models" / "checkpoints" / ".hidden").write_bytes(b"keep")
    unmanaged = tmp_path / "models" / "notakind" / "x.bin"
    unmanaged.parent.mkdir()
    unmanaged.write_bytes(b"keep")
    keep = models[:2]
    failed, res = run({**base, "models": keep, "prune": False})
    assert not failed and res["changed"] is False and res["removed"] == []
    failed, res = run({**base, "models": keep, "prune": True}, check=True, diff=True)
    assert not failed and res["changed"] is True
    assert res["removed"] == ["checkpoints/old.safetensors", "loras/c.safetensors"]
    assert "checkpoints/old.safetensors" in res["diff"]["before"]
    assert "checkpoints/old.safetensors" not in res["diff"]["after"]
    assert stray.exists() and (tmp_path / "models" / "loras" / "c.safetensors").exists()
    failed, res = run({**base, "models": keep, "prune": True})
    assert not failed and res["changed"] is True
    assert not stray.exists() and not (tmp_path / "models" / "loras" / "c.safetensors").exists()
    assert (tmp_path / "models" / "checkpoints" / ".hidden").exists() and unmanaged.exists()
    failed, res = run({**base, "models": keep, "prune": True})
    assert not failed and res["changed"] is False


def test_invalid_entries_fail_before_anything(server, base, tmp_path):
    failed, res = run(
        {
            **base,
            "models": [
                {"name": "a", "kind": "checkpoint", "source": server.url("/x")},
                {"name": "../evil", "kind": "loras", "source": server.url("/y")},
                {"name": "b", "kind": "vae", "source": server.url("/z"), "sha256": "abc"},
            ],
        }
    )
    assert failed
    assert "unknown kind 'checkpoint'" in res["msg"] and "'../evil'" in res["msg"] and "64 hex" in res["msg"]
    assert server.requests("/x") == [] and not (tmp_path / "models").exists()


def test_file_source_on_target(base, tmp_path):
    data = blob("local", 90 * KB)
    src = tmp_path / "upload" / "u.safetensors"
    src.parent.mkdir()
    src.write_bytes(data)
    failed, res = run({**base, "models": [model("u.safetensors", "upscale_models", f"file://{src}", data)]})
    assert not failed, res
    assert (tmp_path / "models" / "upscale_models" / "u.safetensors").read_bytes() == data


# ---------------------------------------------------------------- object stores


def test_s3_through_moto(base, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        data = blob("s3", 1536 * KB)
        s3.put_object(Bucket="models", Key="ckpt/s3.safetensors", Body=data)
        args = {**base, "s3_endpoint": endpoint, "s3_region": "us-east-1", "split_threshold": 512 * KB}
        failed, res = run({**args, "models": [model("s3.safetensors", "checkpoints", "s3://models/ckpt/s3.safetensors", data)]})
        assert not failed, res
        assert res["files"][0]["connections"] > 1
        assert (tmp_path / "models" / "checkpoints" / "s3.safetensors").read_bytes() == data
        failed, res = run({**args, "models": [model("no.safetensors", "vae", "s3://models/missing.safetensors")]})
        assert failed and "not found: s3://models/missing.safetensors" in res["msg"]
    finally:
        moto.stop()


def test_gcs_through_standin(base, tmp_path):
    gcs_server = pytest.importorskip("gcs_server")
    data = blob("gcs", 700 * KB)
    with gcs_server.GcsServer(token="ya29.gcs_test_token") as gcs:
        gcs.objects[("bucket", "dir/obj.safetensors")] = data
        args = {**base, "gcs_endpoint": gcs.endpoint, "split_threshold": 256 * KB, "connections": 3}
        entry = model("g.safetensors", "controlnet", "gs://bucket/dir/obj.safetensors", data)
        failed, res = run({**args, "models": [entry]})
        assert failed and "GOOGLE_OAUTH_ACCESS_TOKEN" in res["msg"]
        failed, res = run({**args, "gcs_token": "ya29.gcs_test_token", "models": [entry]})
        assert not failed, res
        assert res["files"][0]["connections"] == 3
        assert (tmp_path / "models" / "controlnet" / "g.safetensors").read_bytes() == data
        media = [e for e in gcs.log if e["path"] == "/download/storage/v1/b/bucket/o/dir%2Fobj.safetensors"]
        assert media and all(e["query"] == "alt=media" for e in media)
        assert "ya29.gcs_test_token" not in json.dumps(res)


def test_redactor_removes_every_kind_of_secret():
    redact = download.Redactor(["hf_abcdefgh", "civ_12345678"])
    text = redact(
        "GET https://user:pw@huggingface.co/x?download=1&token=civ_12345678&X-Amz-Signature=deadbeef "
        "Authorization: Bearer hf_abcdefgh and again hf_abcdefgh"
    )
    for secret in ("hf_abcdefgh", "civ_12345678", "deadbeef", "user:pw"):
        assert secret not in text
    assert "download=1" in text and "token=REDACTED" in text


# ---------------------------------------------------------------- progress for the terminal, and the plan


def test_log_has_a_line_for_all_files_and_the_plan_says_what_is_pending(slow_server, base, tmp_path):
    files = {f"p{i}.safetensors": blob(f"overall-{i}", 2 * MB) for i in range(3)}
    models = [model(n, "checkpoints", slow_server.add(f"/overall/{n}", d), d) for n, d in files.items()]
    failed, plan = run({**base, "models": models}, check=True)
    assert not failed and plan["pending"] is True and plan["changed"] is True
    failed, res = run({**base, "models": models, "connections": 1})
    assert not failed, res
    log = (tmp_path / "sync.log").read_text().splitlines()
    overall = [ln.split(" ", 1)[1] for ln in log if " all: " in ln]
    # 6 MB at 2 MB/s per file, three at once: ~1 s, a line every 2 s per file and for all files
    assert overall, log
    line = re.compile(r"all: [\d.]+ [KM]?B/6\.3 MB \([\d.]+%\) [\d.]+ MiB/s ETA \S+, [0-3] of 3 files done$")
    assert all(line.match(ln) for ln in overall), overall
    # nothing left to do: the plan says so, and a file present but not yet recorded is pending (to be recorded)
    failed, plan = run({**base, "models": models}, check=True)
    assert not failed and plan["pending"] is False and plan["changed"] is False
    (tmp_path / "models" / ".sdcloud-state.json").unlink()
    failed, plan = run({**base, "models": models}, check=True)
    assert not failed and plan["pending"] is True and plan["changed"] is False
    assert {f["reason"] for f in plan["files"]} == {"verified existing file"}


def test_a_large_file_says_it_is_being_verified(server, base, tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "VERIFY_NOTE", 100 * KB)
    data = blob("verify-note", 200 * KB)
    failed, res = run({**base, "models": [model("v.safetensors", "vae", server.add("/verify-note.safetensors", data), data)]})
    assert not failed, res
    assert "vae/v.safetensors: verifying sha256 of 204.8 KB" in (tmp_path / "sync.log").read_text()
