"""The control channel between the host and the NIC process.

The kernel reaches a NIC's TLS offload through driver ops (``tls_dev_add``,
``tls_dev_del``); across a process boundary those become request/response
messages on a unix ``SOCK_SEQPACKET`` socket (one message per datagram, so
no framing of our own).  The socket is a file in a directory only the
owner can enter: unlike an abstract socket it is reachable from every
network namespace, and unlike a TCP port no other user can connect to it.

Messages are JSON objects; ``op`` names the request.  The crypto_info blob
travels hex-encoded in an ``add`` and must never appear in a log line or an
error text: the server answers a bad request with a message that names the
field, not its value.

Requests (answers):

* ``flow`` {flow} - what the NIC saw of a flow: ISN from its SYN, the next
  sequence number after the last byte it forwarded, frames it lost on
  purpose ({isn, snd_nxt, lost: [[seq, len], ...]}).
* ``add`` {flow, crypto_info, start_seq, store} - ``tls_dev_add``: install
  the TX context, map the record store ({driver} or {error}).
* ``del`` {flow} - ``tls_dev_del`` ({}).
* ``lose`` {flow, frames} - lose those offloaded data frames after the NIC
  (a test bench hook: the sender's TCP retransmits them).
* ``stats`` - the NIC's own counters, its driver's counters, its CPU time.

With ``"direction": "rx"`` the flow is the peer -> host direction and the
requests are RX offload's (``offload.netwire.nic_rx``):

* ``flow`` - {isn, rcv_nxt, gen, ctx}: the peer's ISN from its SYN, the
  next sequence number after what the NIC forwarded, the generation of the
  RX context and whether one is installed;
* ``add`` {flow, crypto_info, start_seq, sync, gen, ring} - ``tls_dev_add``
  for ``TLS_OFFLOAD_CTX_DIR_RX``: the resync scheme (``RxSyncType`` name),
  the generation its marks carry, the mark ring (``offload.netwire.rxring``)
  on the first add;
* ``del`` {flow} - ``tls_dev_del`` (what the context decrypted is still
  kept, for later copies of those bytes);
* ``resync`` {flow, seq, sn, gen} - ``tls_dev_resync``: the stack's answer
  to a request, or CORE_NEXT_HINT's hint;
* ``close`` {flow} - the host's socket is gone: context, ring, kept bytes.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from offload.netwire.frames import FlowKey

MAX_MESSAGE = 1 << 16


class ControlError(OSError):
    """The NIC answered with an error, or the channel broke."""


def flow_to_json(key: FlowKey) -> list[Any]:
    return [key.src.hex(), key.sport, key.dst.hex(), key.dport]


def flow_from_json(raw: Any) -> FlowKey:
    if not isinstance(raw, list) or len(raw) != 4:
        raise ValueError("flow must be [src, sport, dst, dport]")
    src, sport, dst, dport = raw
    return FlowKey(bytes.fromhex(src), int(sport), bytes.fromhex(dst), int(dport))


def flow_of(sock: socket.socket) -> FlowKey:
    """The 4-tuple of a connected TCP socket's outgoing direction, as the
    NIC's parser reads it from frames."""
    fam = sock.family
    local, peer = sock.getsockname(), sock.getpeername()
    return FlowKey(
        socket.inet_pton(fam, local[0]), local[1], socket.inet_pton(fam, peer[0]), peer[1]
    )


class ControlClient:
    """One host connection to the NIC: blocking request/response (one at a
    time: a reader thread asking for the counters and the sender installing
    the context never interleave their messages)."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._sock.settimeout(timeout)
        self._lock = threading.Lock()
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ControlError(f"cannot reach the NIC at {path}: {exc.strerror or exc}") from None

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            with self._lock:
                self._sock.send(json.dumps({"op": op, **fields}).encode())
                raw = self._sock.recv(MAX_MESSAGE)
        except OSError as exc:
            raise ControlError(f"NIC control channel: {exc.strerror or exc}") from None
        if not raw:
            raise ControlError("NIC control channel closed")
        answer: dict[str, Any] = json.loads(raw)
        if "error" in answer:
            raise ControlError(str(answer["error"]))
        return answer

    def close(self) -> None:
        self._sock.close()


__all__ = ["ControlClient", "ControlError", "flow_from_json", "flow_of", "flow_to_json"]
