"""Verifier: the proxy from a second host - TLS with the trusted certificate, token (header, cookie,
path), websocket, uploads, logs without the token."""

import datetime
import os
import stat

import pytest
import testinfra

testinfra_hosts = ["ansible://sdc-px-node"]
TOKEN_FILE = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "proxy.token")
# the role's copy of the certificate on the controller, next to the token (what the summary prints)
CERT_COPY = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "proxy.crt")
WRONG = "Wr0ngWr0ngWr0ngWr0ngWr0ngWr0ngWr0ngWr0ngWr0"  # a well-formed token that is not the node's

WS_CLIENT = r"""
import base64, os, socket, ssl, sys
host, port, path, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile="/tmp/sdcloud-ca.pem")
s = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname=host)
key = base64.b64encode(os.urandom(16)).decode()
auth = "Authorization: Bearer %s\r\n" % token if token else ""
s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (path, host, key, auth)).encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, _, rest = buf.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode())
if b" 101 " not in head.split(b"\r\n")[0]:
    sys.exit(0)
def frame():
    global rest
    while len(rest) < 2:
        rest += s.recv(4096)
    n = rest[1] & 0x7F
    while len(rest) < 2 + n:
        rest += s.recv(4096)
    payload, rest = rest[2:2 + n], rest[2 + n:]
    return payload.decode()
print(frame())
msg = b"sdcloud-echo"
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
print(frame())
"""


@pytest.fixture(scope="module")
def probe():
    return testinfra.get_host("ansible://sdc-px-probe?ansible_inventory=" + os.environ["MOLECULE_INVENTORY_FILE"])


@pytest.fixture(scope="module")
def ip(host):
    return host.ansible.get_variables()["ansible_host"]


@pytest.fixture(scope="module")
def token():
    return open(TOKEN_FILE).read().strip()


@pytest.fixture(scope="module")
def trusted(probe):
    """The probe trusts exactly the certificate the role copied to the controller (curl --cacert), nothing else."""
    with open(CERT_COPY) as f:
        pem = f.read()
    probe.run("cat > /tmp/sdcloud-ca.pem <<'EOF'\n%sEOF" % pem)
    probe.check_output("python3 - <<'EOF'\nopen('/tmp/sdcloud-ws.py', 'w').write(%r)\nEOF" % WS_CLIENT)
    return "/tmp/sdcloud-ca.pem"


def curl(probe, url, *args):
    """(status, body) of a request from the probe, verifying TLS against the node's certificate only."""
    cmd = "curl -sS --max-time 60 --cacert /tmp/sdcloud-ca.pem -o /tmp/sdcloud-body -w '%%{http_code}' %s '%s'" % (" ".join(args), url)
    status = probe.check_output(cmd)
    return int(status), probe.file("/tmp/sdcloud-body").content_string


def test_token_file_private_and_strong(token):
    assert stat.S_IMODE(os.stat(TOKEN_FILE).st_mode) == 0o600
    assert len(token) >= 32 and token.isalnum()


def test_certificate_copied_to_the_controller(host):
    assert stat.S_IMODE(os.stat(CERT_COPY).st_mode) == 0o644
    with open(CERT_COPY) as f:
        assert f.read() == host.file("/etc/sdcloud/proxy/cert.pem").content_string


def test_tls_verifies_with_the_nodes_certificate(probe, ip, trusted):
    assert probe.run("curl -sS --max-time 10 -o /dev/null https://%s/" % ip).rc != 0, "untrusted without --cacert"
    out = probe.check_output("openssl s_client -connect %s:443 -CAfile %s </dev/null 2>&1 | grep -i 'verify return code'" % (ip, trusted))
    assert "0 (ok)" in out


def test_without_token_401_and_login_page(probe, ip, trusted):
    status, body = curl(probe, "https://%s/system_stats" % ip)
    assert status == 401
    assert "sdcloud - sign in" in body
    assert curl(probe, "https://%s/system_stats" % ip, "-H 'Authorization: Bearer wrong-token-wrong-token-wrong-token'")[0] == 401


def test_bearer_and_cookie_reach_comfyui(probe, ip, trusted, token):
    status, body = curl(probe, "https://%s/system_stats" % ip, "-H 'Authorization: Bearer %s'" % token)
    assert status == 200 and '"comfyui_version": "0.0.1-fixture"' in body
    status, body = curl(probe, "https://%s/queue" % ip, "-b 'sdcloud_token=%s'" % token)
    assert status == 200 and "queue_running" in body


def test_a1111_on_its_own_port(probe, ip, trusted, token):
    assert curl(probe, "https://%s:7443/sdapi/v1/sd-models" % ip)[0] == 401
    status, body = curl(probe, "https://%s:7443/sdapi/v1/sd-models" % ip, "-H 'Authorization: Bearer %s'" % token)
    assert status == 200 and body.startswith("[")


def test_no_basic_auth_by_default(host, probe, ip, trusted):
    """The default (no users; side_effect.yml had one, then none again): no users file, basic auth off."""
    assert not host.file("/etc/nginx/sdcloud.htpasswd").exists
    assert "auth_basic" not in host.file("/etc/nginx/conf.d/sdcloud.conf").content_string
    assert curl(probe, "https://%s/queue" % ip, "-u alice:verifier-basic-secret")[0] == 401


def test_path_token_reaches_both_uis(host, probe, ip, trusted, token):
    """https://<host>/<token>/<rest> (Krita's "Custom Server" URL) is /<rest> for the UI, query string kept."""
    status, body = curl(probe, "https://%s/%s/system_stats?sdcloud_query=kept" % (ip, token))
    assert status == 200 and '"comfyui_version": "0.0.1-fixture"' in body
    assert 'GET /system_stats?sdcloud_query=kept HTTP' in host.check_output("journalctl -u comfyui -o cat")
    status, body = curl(probe, "https://%s:7443/%s/sdapi/v1/sd-models" % (ip, token))
    assert status == 200 and body.startswith("[")
    # the bare token URL: on to <token>/, so a browser's page loads relative to it
    out = probe.check_output("curl -sS --cacert /tmp/sdcloud-ca.pem -o /dev/null -w '%%{http_code} %%{redirect_url}' "
                             "https://%s/%s" % (ip, token))
    assert out == "301 https://%s/%s/" % (ip, token)


def test_wrong_path_token_401(probe, ip, trusted, token):
    status, body = curl(probe, "https://%s/%s/system_stats" % (ip, WRONG))
    assert status == 401 and "sdcloud - sign in" in body
    # the path form is judged by its path alone
    assert curl(probe, "https://%s/%s/system_stats" % (ip, WRONG), "-H 'Authorization: Bearer %s'" % token)[0] == 401
    assert curl(probe, "https://%s:7443/%s/sdapi/v1/sd-models" % (ip, WRONG))[0] == 401
    assert curl(probe, "https://%s/%s/system_stats" % (ip, token[:-1]))[0] == 401


def test_websocket_upgrade(probe, ip, trusted, token):
    out = probe.check_output("python3 /tmp/sdcloud-ws.py %s 443 /ws %s" % (ip, token)).splitlines()
    assert out[0].startswith("HTTP/1.1 101")
    assert '"type": "status"' in out[1]
    assert out[2] == "sdcloud-echo"
    denied = probe.check_output("python3 /tmp/sdcloud-ws.py %s 443 /ws ''" % ip).splitlines()
    assert denied[0].startswith("HTTP/1.1 401")


def test_websocket_through_the_path_token(host, probe, ip, trusted, token):
    """What the Krita plugin opens: wss://<host>/<token>/ws?clientId=..., no header."""
    out = probe.check_output("python3 /tmp/sdcloud-ws.py %s 443 '/%s/ws?clientId=sdcloud-verifier' ''" % (ip, token)).splitlines()
    assert out[0].startswith("HTTP/1.1 101")
    assert '"type": "status"' in out[1]
    assert out[2] == "sdcloud-echo"
    assert "GET /ws?clientId=sdcloud-verifier HTTP" in host.check_output("journalctl -u comfyui -o cat")
    denied = probe.check_output("python3 /tmp/sdcloud-ws.py %s 443 '/%s/ws?clientId=sdcloud-verifier' ''" % (ip, WRONG)).splitlines()
    assert denied[0].startswith("HTTP/1.1 401")


def test_large_upload_passes_and_limit_holds(probe, ip, trusted, token):
    probe.check_output("truncate -s 120M /tmp/sdcloud-120M && truncate -s 501M /tmp/sdcloud-501M")
    auth = "-H 'Authorization: Bearer %s' -H 'Expect: 100-continue' -X POST" % token
    status, body = curl(probe, "https://%s/upload/image" % ip, auth, "-T /tmp/sdcloud-120M")
    assert status == 200 and '"size": 125829120' in body
    assert curl(probe, "https://%s/upload/image" % ip, auth, "-T /tmp/sdcloud-501M")[0] == 413
    # the same through the path token: nginx logs the refusal as an error (with the request line)
    status, body = curl(probe, "https://%s/%s/upload/image" % (ip, token), "-H 'Expect: 100-continue' -X POST", "-T /tmp/sdcloud-120M")
    assert status == 200 and '"size": 125829120' in body
    assert curl(probe, "https://%s/%s/upload/image" % (ip, token), "-H 'Expect: 100-continue' -X POST", "-T /tmp/sdcloud-501M")[0] == 413


def test_timeouts_configured(host):
    conf = host.file("/etc/nginx/conf.d/sdcloud.conf").content_string
    assert "proxy_read_timeout 600s;" in conf and "client_max_body_size 500m;" in conf


def test_token_never_logged(host, token):
    """After every request above (path token, websocket, refusals): no token in any nginx log, nor in the UIs' journals."""
    assert host.run("grep -rF '%s' /var/log/nginx/" % token).rc == 1
    assert host.run("grep -rF '%s' /var/log/nginx/" % WRONG).rc == 1
    assert host.run("journalctl -u comfyui -u a1111 -o cat | grep -F '%s'" % token).rc == 1
    assert host.file("/etc/nginx/sdcloud-token.conf").mode == 0o600
    # the error log works for the other forms: the bearer header's 501 MB upload was logged
    assert "client intended to send too large body" in host.file("/var/log/nginx/error.log").content_string
    log = host.file("/var/log/nginx/sdcloud-access.log").content_string
    assert " 200 GET /system_stats " in log
    assert " 200 GET /<token>/system_stats " in log and " 101 GET /<token>/ws " in log
    assert " 200 GET /<token>/sdapi/v1/sd-models " in log and " 413 POST /<token>/upload/image " in log
    # autostop reads the time of the last line: the first field, ISO 8601, on every line
    for line in log.splitlines():
        datetime.datetime.fromisoformat(line.split(" ", 1)[0])


def test_only_the_proxy_is_open(probe, ip):
    def reachable(port):
        return probe.run("timeout 3 bash -c '</dev/tcp/%s/%d'" % (ip, port)).rc == 0
    assert reachable(443) and reachable(7443)
    assert not reachable(8188) and not reachable(7860)
