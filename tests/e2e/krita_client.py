"""Run the Krita AI Diffusion plugin's OWN client code against a server and print its verdict as JSON.

Not a stand-in: this imports the plugin release checked out from ../shared/upstream/krita-ai-diffusion.bundle
(its ai_diffusion/ package, with the websockets copy its release zip bundles), headless (PyQt5 from PyPI,
QCoreApplication, the plugin's own asyncio/Qt event loop glue), and lets it decide:

- 1.35.0 (ai_diffusion/connection.py): `Connection._connect(url, ServerMode.external)`, exactly what Krita's
  Settings -> Connection -> "Custom Server" -> Connect does: /system_stats, the websocket probe, /object_info and
  the custom node check, the model resource check per workload. The verdict is the Connection's state
  ("connected"/"error") and error text; `supported` lists the workloads (archs) with no missing resource.
  With --upload-lora, the plugin's upload call (ComfyClient.upload_loras: `self._requests.upload(
  f"{url}/api/etn/upload/loras/<name>", data)` then `refresh()`), and whether the LoRA is listed afterwards.
- 1.5x (ai_diffusion/backend/comfy_client.py): `ComfyClient(url).connect()`, the same steps; the verdict is
  "connected" or the error the plugin raises (e.g. its MissingResources naming the nodes it lacks).

usage: python krita_client.py PLUGIN_DIR URL [--upload-lora FILE] [--ca CERT] [--connect-to DOMAIN=HOST:PORT]
  --ca: a PEM certificate Qt (and Python's ssl, through SSL_CERT_FILE set by the caller) should trust, as a
  user does by importing the self-signed certificate into the system store.
  --connect-to: what DNS and the network would do for a name this computer cannot resolve (RunPod's
  <pod id>-<port>.proxy.runpod.net, whose stand-in listens on loopback): every connection to a name ending in
  DOMAIN goes to HOST:PORT instead, the URL, the TLS server name and the Host header unchanged. Python's
  connections (the plugin's websockets) through socket.getaddrinfo; Qt's (its HTTP requests) through an HTTP
  CONNECT proxy in this process, set as Qt's application proxy (Qt resolves names in C, out of Python's reach).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import traceback

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("plugin_dir")
    ap.add_argument("url")
    ap.add_argument("--upload-lora")
    ap.add_argument("--ca")
    ap.add_argument("--connect-to")
    args = ap.parse_args()
    sys.path.insert(0, args.plugin_dir)

    from PyQt5.QtCore import QCoreApplication
    from PyQt5.QtNetwork import QNetworkProxy, QSslCertificate, QSslConfiguration, QSslSocket

    app = QCoreApplication([])
    if args.connect_to:
        domain, _, target = args.connect_to.partition("=")
        host, _, port = target.rpartition(":")
        _reroute(domain, host, int(port))
        QNetworkProxy.setApplicationProxy(QNetworkProxy(QNetworkProxy.HttpProxy, "127.0.0.1", _connect_proxy()))
    if args.ca:
        conf = QSslConfiguration.defaultConfiguration()
        conf.setCaCertificates(conf.caCertificates() + QSslCertificate.fromPath(args.ca))
        QSslConfiguration.setDefaultConfiguration(conf)

    import ai_diffusion
    from ai_diffusion import eventloop

    result = {"plugin": ai_diffusion.__version__, "url_scheme": args.url.split(":")[0], "qt_ssl": QSslSocket.supportsSsl()}
    eventloop.setup()

    def run(coro):
        task = eventloop.run(coro)
        while not task.done():
            app.processEvents()
        return task.result()

    if os.path.exists(os.path.join(args.plugin_dir, "ai_diffusion", "connection.py")):
        run(_connect_135(args, result))
    else:
        run(_connect_15x(args, result))
    print(json.dumps(result))


def _reroute(domain, host, port):
    """socket.getaddrinfo answers host:port for every name ending in `domain` (as a DNS entry for it would, with
    the port mapped too); other names as before."""
    real = socket.getaddrinfo

    def getaddrinfo(name, service, family=0, type=0, proto=0, flags=0):  # noqa: A002, PLR0917 - socket's own signature
        if isinstance(name, str) and name.rstrip(".").endswith(domain):
            return real(host, port, socket.AF_INET, type or socket.SOCK_STREAM, proto, flags)
        return real(name, service, family, type, proto, flags)

    socket.getaddrinfo = getaddrinfo


def _connect_proxy():
    """An HTTP CONNECT proxy on 127.0.0.1 (for Qt): it opens the asked host:port through socket.getaddrinfo (so
    through _reroute) and relays the bytes. Returns its port."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "standins"))
    from port_forward import accept_forever, read_head, relay  # noqa: PLC0415

    server = socket.create_server(("127.0.0.1", 0))

    def one(conn):
        head = read_head(conn)
        if head is None:
            return
        method, target = head.split(b" ", 2)[:2]
        name, _, port = target.decode().rpartition(":")
        try:
            assert method == b"CONNECT"
            upstream = socket.create_connection((name, int(port)), timeout=10)
        except (AssertionError, OSError, ValueError):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        upstream.settimeout(None)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        relay(conn, upstream, first=head.split(b"\r\n\r\n", 1)[1])

    threading.Thread(target=accept_forever, args=(server, one), daemon=True).start()
    return server.getsockname()[1]


async def _connect_135(args, result):
    from ai_diffusion.connection import Connection, ConnectionState
    from ai_diffusion.settings import ServerMode

    connection = Connection()
    await connection._connect(args.url, ServerMode.external)
    result["state"] = connection.state.name
    result["error"] = connection.error
    client = connection.client_if_connected
    if connection.missing_resources is not None:
        result["missing"] = _missing(connection.missing_resources)
    if connection.state is not ConnectionState.connected:
        return
    result["supported"] = sorted(a.name for a, miss in client._supported_archs.items() if len(miss) == 0)
    result["device"] = client.device_info.type
    if args.upload_lora:
        name = os.path.basename(args.upload_lora)
        try:  # ComfyClient.upload_loras, without the Krita document that picks the file
            with open(args.upload_lora, "rb") as f:
                data = f.read()
            async for _sent, _total in client._requests.upload(f"{client.url}/api/etn/upload/loras/{name}", data):
                pass
            await client.refresh()
            result["upload"] = "ok"
        except Exception as e:  # the plugin's own error text
            result["upload"] = f"error: {e}"
        result["lora_listed"] = name in client.models.loras
    # what closing Krita does; its message task may not have started yet (then it is cancelled unstarted)
    with contextlib.suppress(asyncio.CancelledError):
        await connection.disconnect()


async def _connect_15x(args, result):
    from ai_diffusion.backend.client import MissingResources
    from ai_diffusion.backend.comfy_client import ComfyClient

    client = ComfyClient(args.url)
    try:
        await client.connect()
        result["state"] = "connected"
        result["supported"] = sorted(a.name for a, miss in client._supported_archs.items() if len(miss) == 0)
    except MissingResources as e:
        result["state"] = "error"
        result["error"] = "MissingResources"
        result["missing"] = _missing(e)
    except Exception as e:
        result["state"] = "error"
        result["error"] = f"{type(e).__name__}: {e}"
        result["trace"] = traceback.format_exc()[-2000:]


def _missing(e):
    """MissingResources: missing custom nodes (packages with their names) or the missing models per arch."""
    missing = e.missing
    if isinstance(missing, dict):
        return {arch.name: [getattr(r, "string", str(r)) for r in ids] for arch, ids in missing.items()}
    return [getattr(p, "name", str(p)) for p in missing]


if __name__ == "__main__":
    main()
