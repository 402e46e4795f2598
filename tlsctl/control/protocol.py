"""The control protocol on the wire: one JSON object per line, one request per
connection, and the peer's uid checked both ways (SO_PEERCRED).

Requests: ``{"op": "list", "show_secrets": false}`` is answered with
``{"protocol": 1, "pid", "uid", "argv", "started", "connections": [...],
"stats": {...}}``; ``{"op": "ping"}`` with ``{"protocol": 1, "pid": ...}``;
anything else, or a caller of another uid, with one ``{"error": ...}``.
"""

from __future__ import annotations

import json
import socket
import struct
from datetime import UTC, datetime
from typing import Any

PROTOCOL = 1
MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 64 * 1024 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def send_line(sock: socket.socket, obj: dict[str, Any]) -> None:
    sock.sendall(json.dumps(obj, default=str, separators=(",", ":")).encode() + b"\n")


def read_line(sock: socket.socket, limit: int) -> bytes:
    """One line (without its newline); ValueError past ``limit`` bytes."""
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("message too long")
    return bytes(buf).split(b"\n", 1)[0]


def iso(t: float) -> str:
    """A UNIX time as ISO 8601 UTC to the second (``2024-05-01T12:00:00Z``)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
