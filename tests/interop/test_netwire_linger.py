"""NetTxPath's close on a connection the peer reset: no waiting for
acknowledgements that can never come (``serve --wire netns -WWW``: curl
closes before the server's close_notify reaches it, so the peer resets and
the last record is never acknowledged; every such connection used to hold
its close for CLOSE_LINGER, 10 s)."""

from __future__ import annotations

import socket
import struct
import time
from types import SimpleNamespace

import pytest

from offload.ktls_socket import KTLSSocket
from offload.netwire import txpath as txpath_mod
from offload.netwire.netns import NetnsWire, unavailable_reason
from offload.netwire.txpath import TCP_CLOSE, NetTxPath, tcp_state
from offload.uapi import SOL_TCP, SOL_TLS, TCP_ULP, TLS_1_3_VERSION, TLS_TX, CipherType
from tests.conftest import random_info
from tests.helpers.netwire_helpers import lose_frames

REASON = unavailable_reason()


def test_close_after_reset_does_not_linger(
    wire: NetnsWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = wire.socket("rx")
    srv.bind((wire.addr("rx"), 0))
    srv.listen(1)
    raw = wire.socket("tx")
    raw.settimeout(10)
    raw.connect((wire.addr("rx"), srv.getsockname()[1]))
    peer, _ = srv.accept()
    path = NetTxPath(raw, wire.control)
    k = KTLSSocket(raw, backend="sw", txpath=path)
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    k.setsockopt(SOL_TLS, TLS_TX, random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128).pack())
    assert not k.offload_refused
    lose_frames(wire, raw, [1])  # the record's frame never reaches the peer ...
    k.sendall(b"x" * 100)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # ... which resets the connection: nothing will be acknowledged now
    srv.close()
    deadline = time.monotonic() + 10
    while tcp_state(raw) != TCP_CLOSE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tcp_state(raw) == TCP_CLOSE
    assert path.tx is not None and path.poll_acks() < path.tx.next_offset
    sleeps: list[float] = []
    fake = SimpleNamespace(monotonic=time.monotonic, sleep=sleeps.append)
    monkeypatch.setattr(txpath_mod, "time", fake)
    k.close()  # the context goes without waiting for the ACK that cannot come
    assert sleeps == []
