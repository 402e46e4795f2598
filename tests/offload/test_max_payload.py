"""``TLS_TX_MAX_PAYLOAD_LEN`` (Linux 6.19+) in the layer, on this host.

The whole call script is held against Linux 7.3 in the VM oracle
(``kernel_payload_scenarios``); here the rules are pinned without a VM and
the records are read back by the independent decoder in ``tests.helpers.wire``
(a second reading of the RFCs), for software TX and for sim-nic's device TX.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
from collections.abc import Callable

import pytest

from offload import KTLSSocket, sockopt
from offload.netdev import create_device
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_TX,
    TLS_TX_MAX_PAYLOAD_LEN,
    CipherType,
)
from offload.wiremodel import TxPipeline
from tests.conftest import random_info
from tests.helpers.wire import decrypt_records, split_records

Pair = Callable[[], tuple[socket.socket, socket.socket]]


def _u16(value: int) -> bytes:
    return struct.pack("<H", value)


def _errno(fn: Callable[[], object]) -> int:
    with pytest.raises(OSError) as e:
        fn()
    assert e.value.errno is not None
    return e.value.errno


def _drain(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n}"
        buf += chunk
    return buf


@pytest.mark.parametrize(
    ("version", "least"), [(None, 64), (TLS_1_2_VERSION, 64), (TLS_1_3_VERSION, 63)]
)
def test_codec_bounds(version: int | None, least: int) -> None:
    dec = sockopt.decode_max_payload
    assert dec(_u16(least), version) == least
    assert dec(_u16(16384), version) == 16384
    for bad in (0, least - 1, 16385, 65535):
        assert _errno(lambda b=bad: dec(_u16(b), version)) == errno.EINVAL  # type: ignore[misc]
    assert _errno(lambda: dec(struct.pack("<I", 4096), version)) == errno.EINVAL
    assert _errno(lambda: dec(b"\x40", version)) == errno.EINVAL
    assert sockopt.encode_u16(4096, 8) == _u16(4096)
    assert _errno(lambda: sockopt.encode_u16(4096, 1)) == errno.EINVAL


@pytest.mark.parametrize("nic", [False, True], ids=["sw", "sim-nic"])
@pytest.mark.parametrize("version", [TLS_1_2_VERSION, TLS_1_3_VERSION], ids=["1.2", "1.3"])
def test_records_on_the_wire_follow_the_limit(tcp_pair: Pair, version: int, nic: bool) -> None:
    """Set before TLS_TX, kept by it, changed between sends: every record
    carries at most the limit, and the peer's decoder gets every byte."""
    info = random_info(version, CipherType.AES_GCM_256, seq=5)
    c, s = tcp_pair()
    path = TxPipeline(create_device("sim-nic")) if nic else None
    k = KTLSSocket(c, backend="sw", txpath=path)
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    assert k.getsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN) == 16384
    k.setsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, _u16(1000))
    k.setsockopt(SOL_TLS, TLS_TX, info.pack())
    assert k.tx_conf == ("device" if nic else "sw")
    assert k.getsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, 2) == _u16(1000)
    first, second = os.urandom(100_000), os.urandom(70_000)
    k.sendall(first)
    k.setsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, _u16(4097))
    k.sendall(second)
    over = 5 + 16 + (1 if version == TLS_1_3_VERSION else 8)
    n1 = -(-len(first) // 1000)
    n2 = -(-len(second) // 4097)
    wire = _drain(s, n1 * over + len(first) + n2 * over + len(second))
    sizes = [len(r) - over for r in split_records(wire)]
    assert sizes == [1000] * (n1 - 1) + [len(first) % 1000 or 1000] + [4097] * (n2 - 1) + [
        len(second) % 4097 or 4097
    ]
    got = b"".join(p for _t, p in decrypt_records(info, wire))
    assert hashlib.sha256(got).digest() == hashlib.sha256(first + second).digest()


def test_open_record_is_ebusy_and_rekey_keeps_the_limit(tcp_pair: Pair) -> None:
    info = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    c, s = tcp_pair()
    k = KTLSSocket(c, backend="sw")
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    k.setsockopt(SOL_TLS, TLS_TX, info.pack())
    k.setsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, _u16(63))
    k.send(b"abc", socket.MSG_MORE)
    assert _errno(lambda: k.setsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, _u16(200))) == errno.EBUSY
    k.send(b"d" * 100)  # closes the open record: 103 bytes, cut at 63
    new = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    k.setsockopt(SOL_TLS, TLS_TX, new.pack())
    k.send(b"e" * 100)
    wire = _drain(s, 2 * (2 * 22) + 103 + 100)
    records = split_records(wire)
    assert [len(r) - 22 for r in records] == [63, 40, 63, 37]
    old = b"".join(p for _t, p in decrypt_records(info, b"".join(records[:2])))
    assert old == b"abc" + b"d" * 100
    after = b"".join(p for _t, p in decrypt_records(new, b"".join(records[2:])))
    assert after == b"e" * 100
