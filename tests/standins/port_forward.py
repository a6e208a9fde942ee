"""TEST STAND-IN of a provider's port publishing: relay TCP connections from a public port to a container's port.

Docker publishes a container port (`docker run -p PUBLIC:PORT`, what vast.ai's `-p` options ask for) with its
userland proxy, docker-proxy: a process that listens on the public port and opens a connection to the
container's port for each client, copying bytes both ways (Docker's docs, "Packet filtering and firewalls" /
"Port publishing and mapping": https://docs.docker.com/engine/network/packet-filtering-firewalls/). This does
the same, run by tests/e2e/podhost.py inside the pod-like host's network namespace (`nsenter -n`), so the
public port is reachable at the pod's address and the container sees a connection from its own loopback.

`relay(a, b)`, `read_head` and `accept_forever` also serve the RunPod proxy stand-in (runpod_proxy.py) and the
CONNECT proxy of tests/e2e/krita_client.py.

Run: python port_forward.py PUBLIC_PORT CONTAINER_PORT
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
import threading


def relay(a: socket.socket, b: socket.socket, first: bytes = b"", idle: float | None = None) -> None:
    """Copy bytes both ways between a and b (after sending `first` to b) until both directions end, or nothing
    moved for `idle` seconds; then close both. One thread: a TLS socket is never read and written at once.
    A plain socket whose peer ended gets its writing half ended (the other direction goes on); when a TLS peer
    is the one left, the relay ends (a TLS socket cannot half-close)."""
    peer = {a: b, b: a}
    sending = {a, b}
    try:
        if first:
            b.sendall(first)
        while sending:
            ready = [s for s in sending if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(list(sending), [], [], idle)
                if not ready:
                    return  # idle: the relay ends
            for src in ready:
                try:
                    data = src.recv(65536)
                except ssl.SSLWantReadError:
                    continue
                except OSError:
                    data = b""
                if data:
                    peer[src].sendall(data)
                    continue
                sending.discard(src)
                dst = peer[src]
                if isinstance(dst, ssl.SSLSocket):
                    return
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        a.close()
        b.close()


def accept_forever(server: socket.socket, handle) -> None:
    """handle(connection), in a thread of its own, for each connection `server` accepts, until it is closed."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return  # closed
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def read_head(conn: socket.socket, limit: int = 65536) -> bytes | None:
    """What the client sent until its request head ended (b"\\r\\n\\r\\n"; what followed in the same reads too), or
    up to `limit` bytes; None, with the connection closed, when the client closed or failed first."""
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < limit:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        else:
            return data
    except OSError:
        pass
    conn.close()
    return None


def serve(public_port: int, port: int, host: str = "127.0.0.1") -> None:
    def one(client):
        try:
            upstream = socket.create_connection((host, port), timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        relay(client, upstream)

    accept_forever(socket.create_server(("0.0.0.0", public_port)), one)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
