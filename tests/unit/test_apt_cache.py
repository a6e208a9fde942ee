"""The package cache the test hosts and local machines share (nspawn.AptCache, a real apt-cacher-ng): a second
fetch is served from the cache, and when the archive does not answer at the cache's start, what is cached -
package lists and packages - is still served. The archive is a labelled stand-in: a directory served over HTTP
in the layout of a Debian mirror (dists/<suite>/InRelease, pool/...), on 127.0.0.2 port 80 because
apt-cacher-ng fetches from port 80 only unless told otherwise (AllowUserPorts)."""

import functools
import http.server
import os
import shutil
import socket
import threading
import urllib.request

import pytest

from plugins.module_utils.sdcloud import nspawn

ARCHIVE_HOST = "127.0.0.2"
FREE_PORT = 3159  # not the real cache's: that one may serve other runs' machines right now

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the stand-in archive listens on port 80 (root)"),
    pytest.mark.skipif(shutil.which("apt-cacher-ng") is None, reason="apt-cacher-ng is not installed (scripts/apt-deps.sh)"),
]


class _Archive:
    """STAND-IN for a Debian archive mirror: static files, with a request count per path."""

    def __init__(self, root):
        self.hits = {}
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def send_head(self):
                hits[self.path] = hits.get(self.path, 0) + 1
                return super().send_head()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer((ARCHIVE_HOST, 80), functools.partial(Handler, directory=str(root)))
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    (root / "debian/dists" / nspawn.SUITE).mkdir(parents=True)
    (root / "debian/dists" / nspawn.SUITE / "InRelease").write_text("Origin: stand-in\nSuite: %s\n" % nspawn.SUITE)
    (root / "debian/pool/main/s").mkdir(parents=True)
    (root / "debian/pool/main/s/standin_1.0_all.deb").write_bytes(os.urandom(200_000))
    try:
        a = _Archive(root)
    except OSError as e:
        pytest.skip(f"cannot listen on {ARCHIVE_HOST}:80: {e}")
    yield a
    a.stop()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", FREE_PORT)) == 0:
            pytest.skip(f"127.0.0.1:{FREE_PORT} is taken")
    monkeypatch.setattr(nspawn, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(nspawn, "APT_CACHE_DIR", str(tmp_path / "cache/apt"))
    monkeypatch.setattr(nspawn, "APT_CACHE_PORT", FREE_PORT)
    c = nspawn.AptCache(str(tmp_path / "state"))
    c.mirror = f"http://{ARCHIVE_HOST}/debian"
    yield c
    c.stop()


def _get(path):
    """Fetch an archive URL through the cache, as a machine's apt does (the cache as its HTTP proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{FREE_PORT}"}))
    with opener.open(f"http://{ARCHIVE_HOST}/debian/{path}", timeout=30) as r:
        return r.status, r.read()


def test_second_fetch_is_local_and_the_cache_listens_on_loopback_only(archive, cache):
    assert cache.ensure() is True
    assert cache.mode() == "online"
    assert cache.ensure() is False  # one instance, however many nets come up
    deb = "pool/main/s/standin_1.0_all.deb"
    first = _get(deb)
    assert first[0] == 200
    assert _get(deb) == first
    assert archive.hits["/debian/" + deb] == 1, "the second fetch went to the archive again"
    with open(os.path.join(cache.dir, "conf/acng.conf")) as f:
        assert "BindAddress: 127.0.0.1\n" in f.read()


def test_archive_down_serves_what_is_cached(archive, cache):
    cache.ensure()
    lists = "dists/%s/InRelease" % nspawn.SUITE
    deb = "pool/main/s/standin_1.0_all.deb"
    cached = {p: _get(p)[1] for p in (lists, deb)}
    cache.stop()
    archive.stop()  # the archive is down from here on

    assert cache.ensure() is True
    assert cache.mode().startswith("offline: http://127.0.0.2/debian did not answer")
    for path, body in cached.items():
        assert _get(path) == (200, body), path


def test_empty_cache_and_archive_down_starts_online(archive, cache):
    archive.stop()
    assert cache.ensure() is True
    assert cache.mode() == "online"  # nothing cached to serve: apt's own error names the archive


def test_stop_when_unused_spares_a_cache_other_nets_use(archive, cache, monkeypatch):
    cache.ensure()
    monkeypatch.setattr(nspawn, "_bridges", lambda: ["sdcloud3"])
    assert cache.stop_when_unused() is False
    assert cache.running()
    monkeypatch.setattr(nspawn, "_bridges", lambda: [])
    assert cache.stop_when_unused() is True
    assert not cache.running()
