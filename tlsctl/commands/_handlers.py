"""What ``tlsctl serve`` does with one established connection.

Each mode is a function from a channel to a dict of facts for the log line
(bytes in/out, SHA-256, file).  They run in the connection's own thread and
raise :class:`ChannelError` for anything the peer did wrong; the server
turns that into one log line and carries on.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tlsctl.commands._channel import KtlsChannel, OpenSSLChannel

Chan = KtlsChannel | OpenSSLChannel
Handler = Callable[[Chan, int], dict[str, Any]]
_RECV = 1 << 20


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
