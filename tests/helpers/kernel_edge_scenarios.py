"""Issue 16 in the VM oracle: the edges where the layer was held against Linux 7.x.

Each script below makes the same socket calls on a raw kernel kTLS socket
and on this layer (``_wrap(sock, "kernel" | "sw")``) and records every
outcome (result or errno); a scenario compares the two lists:

* a TX rekey with the send side full returns at once; records already
  sealed go out under the old key, later ones under the new;
* an open MSG_MORE record is sealed under the key in force when it closes;
* ``recv_into`` writes nothing past the bytes it returns;
* ``recvmsg`` sets MSG_EOR when the end of a record was delivered and
  MSG_CTRUNC when the record type's cmsg found no room;
* an empty control record is not sent (0 returned);
* TLS 1.2, a handshake record starting with 24: Linux 7.3 pauses RX and can
  never resume it (EKEYEXPIRED, then EBUSY); 6.1 and the layer read on.

The oracle boots each kernel it finds (Debian's 6.1 and the backports 7.3):
the first two need a kernel that rekeys kTLS (6.14+); on one that cannot,
the scenario checks the departure the README lists instead (the kernel's
EBUSY) and says so in its detail.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    CipherType,
    CryptoInfo,
)
from tests.helpers.kernel_layer_scenarios import (
    CMSG,
    _info,
    _outcome,
    _recv_all,
    _rekey_departure,
    _wrap,
)

Steps = list[tuple[str, str]]


class ScenarioSkipped(Exception):
    """A scenario that cannot apply to this kernel: reported as skipped
    with the reason (``kernel_scenarios._run_child``), never as a pass."""


_KEY_UPDATE = bytes([24, 0, 0, 1, 0])


@functools.cache
def kernel_rekeys() -> bool:
    """Whether this kernel takes a second TLS 1.3 TLS_TX (Linux 6.14+)."""
    with _small_pair() as (c, _s):
        c.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        info = _info(TLS_1_3_VERSION, CipherType.AES_GCM_128, fixed=True)
        c.setsockopt(SOL_TLS, TLS_TX, info.pack())
        try:
            c.setsockopt(SOL_TLS, TLS_TX, info.pack())
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
    return True


@contextmanager
def _small_pair(buf: int | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback pair; with ``buf``, small send/receive buffers (a full
    send side after a few records)."""
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        if buf:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf)
        lsock.listen(1)
        c = socket.socket()
        if buf:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf)
        c.settimeout(10)
        c.connect(lsock.getsockname())
        s, _ = lsock.accept()
    s.settimeout(10)
    try:
        yield c, s
    finally:
        c.close()
        s.close()


def _flags(value: int) -> str:
    names = [n for n in ("MSG_EOR", "MSG_CTRUNC") if value & getattr(socket, n)]
    rest = value & ~(socket.MSG_EOR | socket.MSG_CTRUNC)
    return "|".join(names + ([hex(rest)] if rest else [])) or "0"


def _recvmsg(k: Any, n: int, anc: int, flags: int = 0) -> str:
    data, ancdata, msg_flags, _addr = k.recvmsg(n, anc, flags)
    types = [bytes(a[2]).hex() for a in ancdata]
    return f"{bytes(data).hex()} types={types} flags={_flags(msg_flags)}"


def _records(wire: bytes, keys: dict[str, CryptoInfo]) -> list[str]:
    """Which key opens each record, with its type and plaintext (the
    independent decoder, tests/helpers/wire.py)."""
    from tests.helpers.wire import decrypt_records, split_records

    seqs = dict.fromkeys(keys, 0)
    out = []
    for rec in split_records(wire):
        for name, info in keys.items():
            try:
                ((ctype, plain),) = decrypt_records(info.with_seq(info.seq + seqs[name]), rec)
            except Exception:  # another key's record: try the next key
                continue
            seqs[name] += 1
            out.append(f"{name} {ctype} {plain.hex()}")
            break
        else:
            out.append("opens with no key")
    return out


# -- 1. a TX rekey with the send side full ------------------------------------------


def rekey_full_queue(kind: str) -> Steps:
    """Fill the send side (non-blocking sends until EAGAIN), rekey TX from a
    thread, and see whether it returned before the peer read anything."""
    info = _info(TLS_1_3_VERSION, CipherType.AES_GCM_128, fixed=True)
    nxt = CryptoInfo.create(
        TLS_1_3_VERSION,
        CipherType.AES_GCM_128,
        key=bytes(range(16)),
        iv=bytes(8),
        salt=b"next",
        seq=0,
    )
    out: Steps = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    with _small_pair(4096) as (c, s):
        kc, ks = _wrap(c, kind), _wrap(s, kind)
        for k in (kc, ks):
            k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        kc.setsockopt(SOL_TLS, TLS_TX, info.pack())
        ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
        kc.setblocking(False)
        sent = bytearray()
        block = hashlib.sha256(b"block").digest() * 2048
        while True:
            try:
                sent += block[: kc.send(block)]
            except BlockingIOError:
                break
        out.append(("send side full", f"ok {bool(sent)}"))
        result: list[str] = []
        t = threading.Thread(
            target=lambda: result.append(
                _outcome(lambda: kc.setsockopt(SOL_TLS, TLS_TX, nxt.pack()))
            ),
            daemon=True,
        )
        t.start()
        t.join(20)  # a guard: the peer reads nothing until this returns or gives up
        out.append(("rekey TX, the peer reading nothing", result[0] if result else "blocked"))
        step("send after (non-blocking)", lambda: kc.send(b"x"))
        step(
            "recv the old key's bytes",
            lambda: (
                hashlib.sha256(_recv_all(ks, len(sent))).digest() == hashlib.sha256(sent).digest()
            ),
        )
        step("rekey RX", lambda: ks.setsockopt(SOL_TLS, TLS_RX, nxt.pack()))
        kc.setblocking(True)
        kc.settimeout(10)
        step("send after (blocking)", lambda: kc.sendall(b"after"))
        step("recv after", lambda: _recv_all(ks, 5))
    return out


# -- 2. the open MSG_MORE record across a rekey -------------------------------------


def more_across_rekey(kind: str, key_update_between: bool) -> Steps:
    info = _info(TLS_1_3_VERSION, CipherType.AES_GCM_256, fixed=True)
    nxt = CryptoInfo.create(
        TLS_1_3_VERSION,
        CipherType.AES_GCM_256,
        key=bytes(range(32)),
        iv=bytes(8),
        salt=b"next",
        seq=0,
    )
    out: Steps = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    with _small_pair() as (c, s):
        kc = _wrap(c, kind)
        kc.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        kc.setsockopt(SOL_TLS, TLS_TX, info.pack())
        step("send abc, MSG_MORE", lambda: kc.send(b"abc", socket.MSG_MORE))
        if key_update_between:
            step(
                "send KeyUpdate",
                lambda: kc.sendmsg([_KEY_UPDATE], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")]),
            )
        step("rekey TX", lambda: kc.setsockopt(SOL_TLS, TLS_TX, nxt.pack()))
        step("send def", lambda: kc.send(b"def"))
        kc.shutdown(socket.SHUT_WR)
        wire = bytearray()
        while chunk := s.recv(65536):
            wire += chunk
        out.append(("on the wire", str(_records(bytes(wire), {"old": info, "new": nxt}))))
    return out


# -- 3. recv_into writes nothing past what it returns --------------------------------


_RECV_INTO_CASES = {
    "1.3 data+KeyUpdate": (TLS_1_3_VERSION, 22, _KEY_UPDATE),
    "1.3 data+alert": (TLS_1_3_VERSION, 21, b"\x01\x00"),
    "1.2 data+alert": (TLS_1_2_VERSION, 21, b"\x01\x00"),
}


def recv_into_script(kind: str) -> Steps:
    from tests.helpers.wire import encrypt_record

    out: Steps = []
    for name, (version, ctype, body) in _RECV_INTO_CASES.items():
        info = _info(version, CipherType.AES_GCM_128, fixed=True)
        with _small_pair() as (c, s):
            ks = _wrap(s, kind)
            ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
            c.sendall(encrypt_record(info, 0, 23, b"data") + encrypt_record(info, 1, ctype, body))
            buf = bytearray(b"\xaa" * 32)

            def read(buf: bytearray = buf, ks: Any = ks) -> str:
                n = ks.recv_into(buf, 0, socket.MSG_WAITALL)
                return f"{n} buf={bytes(buf).hex()}"

            def read_control(ks: Any = ks) -> str:
                b = bytearray(b"\xaa" * 32)
                n, anc, flags, _addr = ks.recvmsg_into([b], CMSG)
                types = [bytes(a[2]).hex() for a in anc]
                return f"{n} types={types} flags={_flags(flags)} buf={bytes(b).hex()}"

            out.append((f"{name}: recv_into(buf, 0, MSG_WAITALL)", _outcome(read)))
            # No timeout: Python then calls recvmsg(2) at once (with one it
            # polls first, and a kTLS socket that read a KeyUpdate's header
            # and waits to deliver it does not poll readable on 7.3).
            ks.settimeout(None)
            out.append((f"{name}: recvmsg_into the control record", _outcome(read_control)))
    return out


# -- 4. recvmsg flags ----------------------------------------------------------------


def flags_script(kind: str, version: int) -> Steps:
    from tests.helpers.wire import encrypt_record

    info = _info(version, CipherType.AES_GCM_128, fixed=True)
    recs = [
        (23, b"0123456789"),
        (23, b"abcdef"),
        (23, b"ghij"),
        (21, b"\x01\x00"),
        (23, b"zz"),
        (21, b"\x01\x00"),
        (23, b"yy"),
        (23, b"xxxx"),
        (22, b"\x04\x00\x00\x00"),
        (23, b"abcd"),
        (23, b"efgh"),
    ]
    reads: list[tuple[str, int, int, int]] = [
        ("4 bytes of a record", 4, CMSG, 0),
        ("the rest of it exactly", 6, CMSG, 0),
        ("two records to the end", 10, CMSG, 0),
        ("control, no ancillary buffer", 100, 0, 0),
        ("control, 1-byte ancillary buffer", 100, 1, 0),
        ("1 byte of a control record", 1, CMSG, 0),
        ("the rest of the control record", 100, CMSG, 0),
        ("data, no ancillary buffer", 100, 0, 0),
        ("a control record whole", 100, CMSG, 0),
        ("1 byte of data, 4-byte ancillary buffer", 1, 4, 0),
        ("the rest, 4-byte ancillary buffer", 100, 4, 0),
        ("peek a handshake record", 100, CMSG, socket.MSG_PEEK),
        ("3 bytes of it", 3, CMSG, 0),
        ("the last byte of it", 100, CMSG, 0),
        ("MSG_WAITALL ending inside a record", 6, CMSG, socket.MSG_WAITALL),
        ("the rest of that record", 2, CMSG, 0),
    ]
    out: Steps = []
    with _small_pair() as (c, s):
        ks = _wrap(s, kind)
        ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
        c.sendall(b"".join(encrypt_record(info, i, t, p) for i, (t, p) in enumerate(recs)))
        for name, n, anc, flags in reads:
            out.append((name, _outcome(functools.partial(_recvmsg, ks, n, anc, flags))))
    return out


# -- 5. an empty control record ------------------------------------------------------


def empty_control_script(kind: str) -> Steps:
    info = _info(TLS_1_3_VERSION, CipherType.AES_GCM_128, fixed=True)
    out: Steps = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    with _small_pair() as (c, s):
        kc = _wrap(c, kind)
        kc.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        kc.setsockopt(SOL_TLS, TLS_TX, info.pack())
        for t in (b"\x15", b"\x16"):
            step(
                f"empty record of type {t.hex()}",
                functools.partial(kc.sendmsg, [b""], [(SOL_TLS, TLS_SET_RECORD_TYPE, t)]),
            )
        step("empty data", lambda: kc.send(b""))
        step("x, MSG_MORE", lambda: kc.send(b"x", socket.MSG_MORE))
        step(
            "empty alert after it",
            lambda: kc.sendmsg([b""], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")]),
        )
        kc.shutdown(socket.SHUT_WR)
        wire = bytearray()
        while chunk := s.recv(65536):
            wire += chunk
        out.append(("on the wire", str(_records(bytes(wire), {"key": info}))))
    return out


# -- 6. TLS 1.2 and a handshake record that starts with 24 ---------------------------


def tls12_keyupdate_byte_script(kind: str) -> Steps:
    from tests.helpers.wire import encrypt_record

    info = _info(TLS_1_2_VERSION, CipherType.AES_GCM_128, fixed=True)
    out: Steps = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    with _small_pair() as (c, s):
        ks = _wrap(s, kind)
        ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
        c.sendall(encrypt_record(info, 0, 22, _KEY_UPDATE) + encrypt_record(info, 1, 23, b"after"))
        step("recv the handshake record", lambda: _recvmsg(ks, 100, CMSG))
        ks.settimeout(None)  # recv(2) itself: a kTLS socket waiting for a key does not poll
        step("recv next", lambda: _recvmsg(ks, 100, CMSG, socket.MSG_DONTWAIT))
        step("set RX again", lambda: ks.setsockopt(SOL_TLS, TLS_RX, info.with_seq(1).pack()))
    return out


# -- the scenarios ---------------------------------------------------------------------


def _same(theirs: Steps, ours: Steps, what: str) -> str:
    diffs = [
        f"{name}: kernel {k} / layer {u}"
        for (name, k), (_, u) in zip(theirs, ours, strict=True)
        if k != u
    ]
    assert not diffs, f"{what} differs from the kernel {os.uname().release}:\n" + "\n".join(diffs)
    return "; ".join(f"{n} -> {o}" for n, o in theirs)


def rekey_full_queue_oracle() -> str:
    theirs, ours = rekey_full_queue("kernel"), rekey_full_queue("sw")
    if not kernel_rekeys():
        return _rekey_departure(theirs, ours, "rekey TX, the peer reading nothing")
    return _same(theirs, ours, "a TX rekey with a full send side")


def more_across_rekey_oracle() -> str:
    done = []
    for between in (False, True):
        theirs, ours = more_across_rekey("kernel", between), more_across_rekey("sw", between)
        if not kernel_rekeys():
            done.append(_rekey_departure(theirs, ours, "rekey TX"))
        else:
            done.append(_same(theirs, ours, "the open MSG_MORE record across a rekey"))
    return " | ".join(done)


def recv_into_oracle() -> str:
    return _same(recv_into_script("kernel"), recv_into_script("sw"), "recv_into")


def flags_oracle() -> str:
    done = []
    for version in (TLS_1_2_VERSION, TLS_1_3_VERSION):
        done.append(
            _same(
                flags_script("kernel", version),
                flags_script("sw", version),
                f"recvmsg flags (0x{version:04x})",
            )
        )
    return " | ".join(done)


def empty_control_oracle() -> str:
    return _same(
        empty_control_script("kernel"), empty_control_script("sw"), "an empty control record"
    )


_PAUSED_FOREVER = {  # what Linux 7.3 does (the README's departure)
    "recv next": "errno EKEYEXPIRED",
    "set RX again": "errno EBUSY",
}


def tls12_keyupdate_byte_oracle() -> str:
    """The layer keeps 6.1's answer (reads on).  A kernel that rekeys (7.x)
    must show the pause the README describes, or the README is wrong."""
    theirs, ours = tls12_keyupdate_byte_script("kernel"), tls12_keyupdate_byte_script("sw")
    if not kernel_rekeys():
        return _same(theirs, ours, "TLS 1.2, a handshake record starting with 24")
    got = dict(theirs)
    assert {k: got[k] for k in _PAUSED_FOREVER} == _PAUSED_FOREVER, theirs
    assert b"after".hex() in dict(ours)["recv next"], ours
    return f"departure (README): kernel {os.uname().release}: {theirs}; layer (6.1's): {ours}"


def register(
    scenario: Callable[..., Callable[[Callable[[], object]], Callable[[], object]]],
) -> None:
    """Add these scenarios to ``kernel_scenarios``' registry."""
    scenario("oracle_linux7_rekey_full_queue", timeout=90)(rekey_full_queue_oracle)
    scenario("oracle_linux7_msg_more_across_rekey", timeout=60)(more_across_rekey_oracle)
    scenario("oracle_linux7_recv_into_writes_nothing_more", timeout=60)(recv_into_oracle)
    scenario("oracle_linux7_recvmsg_flags", timeout=60)(flags_oracle)
    scenario("oracle_linux7_empty_control_record", timeout=60)(empty_control_oracle)
    scenario("oracle_linux7_tls12_keyupdate_byte", timeout=60)(tls12_keyupdate_byte_oracle)


__all__ = ["ScenarioSkipped", "kernel_rekeys", "register"]
