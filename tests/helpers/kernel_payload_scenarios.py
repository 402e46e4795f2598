"""``TLS_TX_MAX_PAYLOAD_LEN`` in the VM oracle: the layer next to Linux 6.19+.

The option (a u16, RFC 8449's record_size_limit as plaintext per record)
came with Linux 6.19.  One script of calls runs on a raw kernel kTLS socket
and on this layer, and every outcome must match, including the record
lengths a raw peer reads off the wire:

* read back before any key (16384), set before TLS_TX and kept by it;
* exactly two bytes (an int or a byte: EINVAL), 64..16384 for TLS 1.2 and
  63..16384 for TLS 1.3 (its content-type byte counts in the limit);
* data and control records split at the limit, TLS 1.2 and 1.3;
* EBUSY while a MSG_MORE record is open;
* on a socket with only TLS_RX (TLS 1.3), allowed and read back.

Debian's 6.1 has no such option (ENOPROTOOPT): there the scenario checks
that departure, which the README lists, and says so in its detail.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_RX,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    TLS_TX_MAX_PAYLOAD_LEN,
    CipherType,
)
from tests.helpers.kernel_edge_scenarios import _same, _small_pair
from tests.helpers.kernel_layer_scenarios import _info, _outcome, _wrap

Steps = list[tuple[str, str]]
_ALERT = b"\x15"


def _u16(value: int) -> bytes:
    return struct.pack("<H", value)


def _record_lengths(peer: socket.socket) -> list[tuple[int, int]]:
    """(outer type, length) of every record a raw peer has received so far."""
    time.sleep(0.3)
    data = b""
    peer.setblocking(False)
    try:
        while chunk := peer.recv(1 << 16):
            data += chunk
    except BlockingIOError:
        pass
    finally:
        peer.settimeout(10)
    out = []
    i = 0
    while i + 5 <= len(data):
        n = int.from_bytes(data[i + 3 : i + 5], "big")
        out.append((data[i], n))
        i += 5 + n
    return out


def max_payload_script(kind: str) -> Steps:
    out: Steps = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    def put(k: Any, value: bytes) -> Callable[[], object]:
        return lambda: k.setsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, value)

    def get(k: Any, n: int | None = 2) -> Callable[[], object]:
        if n is None:
            return lambda: k.getsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN)
        return lambda: k.getsockopt(SOL_TLS, TLS_TX_MAX_PAYLOAD_LEN, n)

    info12 = _info(TLS_1_2_VERSION, CipherType.AES_GCM_128, seq=3, fixed=True)
    with _small_pair() as (c, s):
        k = _wrap(c, kind)
        k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        step("get before any key", get(k))
        step("get as int", get(k, None))
        step("get into 1 byte", get(k, 1))
        step("get into 8 bytes", get(k, 8))
        step("set 4096 before TX", put(k, _u16(4096)))
        step("get after set", get(k))
        step("set TX 1.2", lambda: k.setsockopt(SOL_TLS, TLS_TX, info12.pack()))
        step("get after TX", get(k))
        for value in (0, 63, 64, 65, 16384, 16385, 65535):
            step(f"set {value}", put(k, _u16(value)))
        step("set as an int", put(k, struct.pack("<I", 4096)))
        step("set as a byte", put(k, b"\x40"))
        step("get after the refusals", get(k))
        step("set 100", put(k, _u16(100)))
        step("send 1000 bytes", lambda: k.sendall(b"d" * 1000))
        step("records on the wire", lambda: _record_lengths(s))
        step(
            "control record of 300 bytes",
            lambda: k.sendmsg([b"c" * 300], [(SOL_TLS, TLS_SET_RECORD_TYPE, _ALERT)]),
        )
        step("control records on the wire", lambda: _record_lengths(s))
        step("open a MSG_MORE record", lambda: k.send(b"abc", socket.MSG_MORE))
        step("set 200 with the record open", put(k, _u16(200)))
        step("set as an int with the record open", put(k, struct.pack("<I", 200)))
        step("close the record", lambda: k.send(b"def"))
        step("set 200 after it closed", put(k, _u16(200)))
        step("send 450 bytes", lambda: k.sendall(b"e" * 450))
        step("records after the change", lambda: _record_lengths(s))
    info13 = _info(TLS_1_3_VERSION, CipherType.AES_GCM_256, seq=9, fixed=True)
    with _small_pair() as (c, s):
        k = _wrap(c, kind)
        k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        step("1.3: set TX", lambda: k.setsockopt(SOL_TLS, TLS_TX, info13.pack()))
        for value in (62, 63, 64, 16384, 16385):
            step(f"1.3: set {value}", put(k, _u16(value)))
        step("1.3: set 100", put(k, _u16(100)))
        step("1.3: get", get(k))
        step("1.3: send 1000 bytes", lambda: k.sendall(b"d" * 1000))
        step("1.3: records on the wire", lambda: _record_lengths(s))
        step(
            "1.3: control record of 300 bytes",
            lambda: k.sendmsg([b"c" * 300], [(SOL_TLS, TLS_SET_RECORD_TYPE, _ALERT)]),
        )
        step("1.3: control records on the wire", lambda: _record_lengths(s))
    with _small_pair() as (c, s):
        k = _wrap(s, kind)
        k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        step("RX only: set RX 1.3", lambda: k.setsockopt(SOL_TLS, TLS_RX, info13.pack()))
        step("RX only: set 63", put(k, _u16(63)))
        step("RX only: get", get(k))
    return out


def max_payload_oracle() -> str:
    theirs, ours = max_payload_script("kernel"), max_payload_script("sw")
    first = dict(theirs)["get before any key"]
    if first == f"errno {errno.errorcode[errno.ENOPROTOOPT]}":
        assert dict(ours)["get before any key"] == f"bytes {_u16(16384).hex()}", ours
        return (
            f"departure (README): kernel {os.uname().release} has no TLS_TX_MAX_PAYLOAD_LEN "
            "(Linux 6.19+); the layer has it"
        )
    return _same(theirs, ours, "TLS_TX_MAX_PAYLOAD_LEN")


def register(
    scenario: Callable[..., Callable[[Callable[[], object]], Callable[[], object]]],
) -> None:
    """Add this scenario to ``kernel_scenarios``' registry."""
    scenario("oracle_linux7_tx_max_payload_len", timeout=60)(max_payload_oracle)


__all__ = ["max_payload_oracle", "max_payload_script", "register"]
