"""What ``tlsctl serve`` does with one established connection.

Each mode is a function from a channel to a dict of facts for the log line
(bytes in/out, SHA-256, file).  They run in the connection's own thread and
raise :class:`ChannelError` for anything the peer did wrong; the server
turns that into one log line and carries on.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tlsctl.commands._channel import ChannelError, KtlsChannel, OpenSSLChannel

Chan = KtlsChannel | OpenSSLChannel
Handler = Callable[[Chan, int], dict[str, Any]]
_RECV = 1 << 20
_MAX_REQUEST = 8192


def _chunks(chan: Chan) -> Iterator[memoryview]:
    """The stream as views of one reused buffer, each valid until the next.

    ``recv_into`` lets the layer decrypt straight into this buffer, so the
    receive path costs the socket copy and the AEAD and nothing more.
    """
    buf = memoryview(bytearray(_RECV))
    while n := chan.recv_into(buf):
        yield buf[:n]


def sink(chan: Chan, _conn_id: int) -> dict[str, Any]:
    """Count and discard: the throughput of the receive path alone."""
    total = 0
    for data in _chunks(chan):
        total += len(data)
    return {"bytes_in": total}


def hash_sink(chan: Chan, _conn_id: int) -> dict[str, Any]:
    """Count, hash and discard: for checking a transfer without storing it."""
    total = 0
    h = hashlib.sha256()
    for data in _chunks(chan):
        h.update(data)
        total += len(data)
    return {"bytes_in": total, "sha256": h.hexdigest()}


def echo(chan: Chan, _conn_id: int) -> dict[str, Any]:
    """Send back every byte as it arrives (records may be re-split)."""
    total = 0
    for data in _chunks(chan):
        chan.send_all(data)
        total += len(data)
    return {"bytes_in": total, "bytes_out": total}


@dataclass
class Store:
    """``-o FILE`` (one shared path, last connection wins) or ``--save-dir``.

    The file is written as data arrives, so memory use does not grow with
    the stream; the SHA-256 is computed on the way.
    """

    output: str | None = None
    save_dir: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def path_for(self, conn_id: int) -> str:
        if self.save_dir is not None:
            return os.path.join(self.save_dir, f"conn-{conn_id:05d}.bin")
        if self.output is None:
            raise ValueError("Store needs output or save_dir")
        return self.output

    def __call__(self, chan: Chan, conn_id: int) -> dict[str, Any]:
        path = self.path_for(conn_id)
        h = hashlib.sha256()
        total = 0
        # -o is shared by every connection: one writer at a time keeps the
        # file equal to one whole stream, not an interleaving.
        lock = self._lock if self.save_dir is None else threading.Lock()
        with lock, open(path, "wb") as out:
            for data in _chunks(chan):
                out.write(data)
                h.update(data)
                total += len(data)
        return {"bytes_in": total, "sha256": h.hexdigest(), "file": path}


@dataclass
class Www:
    """``-WWW DIR``: ``GET /path HTTP/1.x`` answered with the file, like s_server.

    The body goes through the layer's sendfile.  The path is resolved and
    must stay inside DIR (symlinks included), so ``..`` or an absolute
    path cannot read anything else.
    """

    root: str

    def resolve(self, target: str) -> str | None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(target).path)
        if "\0" in path:
            return None
        root = os.path.realpath(self.root)
        full = os.path.realpath(os.path.join(root, path.lstrip("/")))
        if full != root and not full.startswith(root + os.sep):
            return None
        if os.path.isdir(full):
            full = os.path.join(full, "index.html")
        return full

    def __call__(self, chan: Chan, _conn_id: int) -> dict[str, Any]:
        head = bytearray()
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            data = chan.recv(_MAX_REQUEST)
            if not data:
                raise ChannelError("connection closed before a complete HTTP request")
            head += data
            if len(head) > _MAX_REQUEST:
                raise ChannelError("HTTP request header too long")
        line = bytes(head).split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) != 3 or parts[0] != "GET" or not parts[2].startswith("HTTP/1."):
            self._reply(chan, 400, b"bad request\n")
            return {"request": line[:80], "status": 400}
        path = self.resolve(parts[1])
        if path is None:
            self._reply(chan, 403, b"forbidden\n")
            return {"request": line[:80], "status": 403}
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            self._reply(chan, 404, b"not found\n")
            return {"request": line[:80], "status": 404}
        with f:
            size = os.fstat(f.fileno()).st_size
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            chan.send_all(
                f"HTTP/1.0 200 ok\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            sent = chan.send_file(f, 0, size)
        return {"request": line[:80], "status": 200, "bytes_out": sent}

    @staticmethod
    def _reply(chan: Chan, status: int, body: bytes) -> None:
        reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}[status]
        chan.send_all(
            f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
