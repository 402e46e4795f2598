"""Scenarios run inside the kTLS VM that put this layer next to the kernel.

Two kinds of check, both against the real Linux kTLS:

* interop: records sealed by ``KTLSSocket(backend="sw")`` are read by a
  kernel kTLS RX socket, and records sealed by the kernel are read by this
  layer, for every version x cipher the kernel takes, control records too;
* oracle: one script of setsockopt/getsockopt/sendmsg/recvmsg calls runs
  against a raw kernel socket and against this layer, and the outcomes
  (results or errno values) must be identical.

``register(scenario)`` is called by ``kernel_scenarios`` with its decorator,
so the scenarios land in its registry whether it runs as a script or not.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import Any

from offload import KTLSSocket
from offload.keys import Suite, crypto_info_tls13, tls13_next_secret
from offload.uapi import (
    CIPHER_SPECS,
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_GET_RECORD_TYPE,
    TLS_RX,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    CipherType,
    CryptoInfo,
)

CMSG = socket.CMSG_SPACE(1)
VERSIONS = {"12": TLS_1_2_VERSION, "13": TLS_1_3_VERSION}


def _info(version: int, cipher: CipherType, seq: int = 0, fixed: bool = False) -> CryptoInfo:
    """Random keys, or fixed ones so two runs can compare getsockopt bytes."""
    spec = CIPHER_SPECS[cipher]

    def material(label: bytes, n: int) -> bytes:
        return hashlib.sha256(label).digest()[:n] if fixed else os.urandom(n)

    return CryptoInfo.create(
        version,
        cipher,
        key=material(b"key", spec.key_size),
        iv=material(b"iv", spec.iv_size),
        salt=material(b"salt", spec.salt_size),
        seq=seq,
    )


@contextlib.contextmanager
def _pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        c = socket.create_connection(lsock.getsockname(), timeout=10)
        s, _ = lsock.accept()
    s.settimeout(10)
    try:
        yield c, s
    finally:
        c.close()
        s.close()


def _wrap(sock: socket.socket, kind: str) -> Any:
    """The socket under test: the raw kernel socket or this layer (sw)."""
    return sock if kind == "kernel" else KTLSSocket(sock, backend="sw")


def _recv_all(k: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = k.recv(n - len(buf))
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n}")
        buf += chunk
    return bytes(buf)


def _transfer(tx_kind: str, rx_kind: str, version: int, cipher: CipherType) -> str:
    """Data and control records from ``tx_kind`` to ``rx_kind``; hashes compared."""
    info = _info(version, cipher, seq=11)
    sizes = [1, 16383, 16384, 16385, 200_000]
    with _pair() as (c, s):
        tx, rx = _wrap(c, tx_kind), _wrap(s, rx_kind)
        tx.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        rx.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        tx.setsockopt(SOL_TLS, TLS_TX, info.pack())
        rx.setsockopt(SOL_TLS, TLS_RX, info.pack())
        payloads = [os.urandom(n) for n in sizes]
        errors: list[BaseException] = []

        def send() -> None:
            try:
                for p in payloads:
                    tx.sendall(p)
                tx.sendmsg([b"\x01\x00"], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")])
                tx.sendall(b"tail")
            except BaseException as exc:  # reported by the receiver side
                errors.append(exc)

        t = threading.Thread(target=send)
        t.start()
        total = sum(sizes)
        got = _recv_all(rx, total)
        t.join(20)
        if errors:
            raise errors[0]
        assert hashlib.sha256(got).digest() == hashlib.sha256(b"".join(payloads)).digest()
        data, anc, _flags, _ = rx.recvmsg(100, CMSG)
        assert (data, anc) == (b"\x01\x00", [(SOL_TLS, TLS_GET_RECORD_TYPE, b"\x15")]), (
            data,
            anc,
        )
        assert _recv_all(rx, 4) == b"tail"
        size = len(info.pack())
        rx_seq = CryptoInfo.unpack(rx.getsockopt(SOL_TLS, TLS_RX, size)).seq
        tx_seq = CryptoInfo.unpack(tx.getsockopt(SOL_TLS, TLS_TX, size)).seq
        assert rx_seq == tx_seq, (rx_seq, tx_seq)
    return f"{total} bytes + alert + tail, rec_seq {tx_seq}"


def _outcome(fn: Callable[[], object]) -> str:
    try:
        result = fn()
    except OSError as exc:
        return f"errno {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    if isinstance(result, bytes):
        return f"bytes {result.hex()}"
    return f"ok {result!r}"


def _recvmsg_head(sock: Any, bufsize: int, ancbufsize: int) -> tuple[Any, ...]:
    """``recvmsg``'s (data, ancillary data), the part both socket kinds agree on."""
    return tuple(sock.recvmsg(bufsize, ancbufsize)[:2])


def _semantics_script(kind: str) -> list[tuple[str, str]]:
    """The same calls against one kind of socket; returns (step, outcome)."""
    out: list[tuple[str, str]] = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    raw = socket.socket()
    k = _wrap(raw, kind)
    step("ulp on unconnected socket", lambda: k.setsockopt(SOL_TCP, TCP_ULP, b"tls"))
    raw.close()
    info12 = _info(TLS_1_2_VERSION, CipherType.AES_GCM_128, seq=5, fixed=True)
    info13 = _info(TLS_1_3_VERSION, CipherType.AES_GCM_256, seq=7, fixed=True)
    with _pair() as (c, s):
        kc, ks = _wrap(c, kind), _wrap(s, kind)
        step("SOL_TLS before ulp", lambda: kc.setsockopt(SOL_TLS, TLS_TX, info12.pack()))
        step("ulp", lambda: kc.setsockopt(SOL_TCP, TCP_ULP, b"tls"))
        step("ulp twice", lambda: kc.setsockopt(SOL_TCP, TCP_ULP, b"tls"))
        step("getsockopt TX before set", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 40))
        step("getsockopt TX len 2", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 2))
        step("set TX 3 bytes", lambda: kc.setsockopt(SOL_TLS, TLS_TX, b"\x03\x03\x33"))
        bad = bytearray(info12.pack())
        bad[0:2] = (0x0302).to_bytes(2, "little")
        step("set TX bad version", lambda: kc.setsockopt(SOL_TLS, TLS_TX, bytes(bad)))
        bad = bytearray(info12.pack())
        bad[2:4] = (50).to_bytes(2, "little")
        step("set TX bad cipher", lambda: kc.setsockopt(SOL_TLS, TLS_TX, bytes(bad)))
        step("set TX long", lambda: kc.setsockopt(SOL_TLS, TLS_TX, info12.pack() + b"\0"))
        step("set TX", lambda: kc.setsockopt(SOL_TLS, TLS_TX, info12.pack()))
        step("set TX again (1.2)", lambda: kc.setsockopt(SOL_TLS, TLS_TX, info12.pack()))
        step("set RX other cipher", lambda: kc.setsockopt(SOL_TLS, TLS_RX, info13.pack()))
        step("getsockopt TX 4", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 4))
        step("getsockopt TX int", lambda: kc.getsockopt(SOL_TLS, TLS_TX))
        step("getsockopt TX 39", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 39))
        step("getsockopt TX 56", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 56))
        step("unknown SOL_TLS opt", lambda: kc.getsockopt(SOL_TLS, 99, 4))
        step("send 3 records", lambda: [kc.send(b"abc") for _ in range(3)])
        step("getsockopt TX after 3", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 40))
        step(
            "MSG_MORE with record type",
            lambda: kc.sendmsg([b"x"], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")], socket.MSG_MORE),
        )
        step(
            "bad SOL_TLS cmsg type",
            lambda: kc.sendmsg([b"x"], [(SOL_TLS, TLS_GET_RECORD_TYPE, b"\x15")]),
        )
        step("send MSG_MORE", lambda: kc.send(b"more", socket.MSG_MORE))
        step(
            "control record pushes open record",
            lambda: kc.sendmsg([b"\x01\x00"], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")]),
        )
        step("server ulp", lambda: ks.setsockopt(SOL_TCP, TCP_ULP, b"tls"))
        step("server set RX", lambda: ks.setsockopt(SOL_TLS, TLS_RX, info12.pack()))
        step("recv data", lambda: _recv_all(ks, 9))
        step("recv 'more' record", lambda: ks.recvmsg(100, CMSG)[:2])
        step("recv control without cmsg", lambda: ks.recv(100))
        step("recvmsg control", lambda: ks.recvmsg(100, CMSG)[:2])
        step("getsockopt RX", lambda: ks.getsockopt(SOL_TLS, TLS_RX, 40))
        ks.settimeout(0.5)
        step("recv nothing (timeout)", lambda: ks.recv(10, socket.MSG_DONTWAIT))
    with _pair() as (c, s):
        kc = _wrap(c, kind)
        kc.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        wrap = _info(TLS_1_3_VERSION, CipherType.AES_GCM_128, seq=2**64 - 1, fixed=True)
        kc.setsockopt(SOL_TLS, TLS_TX, wrap.pack())
        step("send with rec_seq 2^64-1", lambda: kc.send(b"last"))
        step("send after wrap", lambda: kc.send(b"next"))
        step("getsockopt after wrap", lambda: kc.getsockopt(SOL_TLS, TLS_TX, 40)[-8:])
    out += _rx_script(kind)
    return out


def _rx_script(kind: str) -> list[tuple[str, str]]:
    """Hostile and edge-case records from a raw peer into the RX side."""
    from tests.helpers.wire import encrypt_record

    out: list[tuple[str, str]] = []
    info = _info(TLS_1_2_VERSION, CipherType.AES_GCM_128, seq=2**64 - 2, fixed=True)
    cases: dict[str, bytes] = {
        "rx wrap": encrypt_record(info, 2**64 - 2, 23, b"ok")
        + encrypt_record(info, 2**64 - 1, 23, b"last number"),
        "rx bad tag": encrypt_record(info, 2**64 - 2, 23, b"ok")
        + encrypt_record(info, 2**64 - 1, 23, b"x")[:-1]
        + b"\0",
        "rx bad version": bytes([23, 3, 1, 0, 40]) + bytes(40),
        "rx oversized": bytes([23, 3, 3, 0x48, 0x00]) + bytes(64),
        "rx too short": bytes([23, 3, 3, 0, 10]) + bytes(10),
    }
    for name, wire_bytes in cases.items():
        with _pair() as (c, s):
            ks = _wrap(s, kind)
            ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
            ks.settimeout(2)
            c.sendall(wire_bytes)
            for i in range(3):
                out.append((f"{name} recv {i}", _outcome(functools.partial(ks.recv, 100))))
    return out


_KEY_UPDATE = bytes([24, 0, 0, 1, 0])  # KeyUpdate, update_not_requested


def _rekey_pair(suite: Suite, tx_kind: str, rx_kind: str) -> list[tuple[str, str]]:
    """TLS 1.3 KeyUpdate across the record layer: data, the KeyUpdate
    handshake record, the next TX key by a second setsockopt, more data; the
    receiver sees EKEYEXPIRED until it installs the next RX key."""
    secret = hashlib.sha256(b"traffic secret " + bytes([suite & 0xFF])).digest()
    if suite.hash_name == "sha384":
        secret += secret[:16]
    first = crypto_info_tls13(secret, suite, 0)
    nxt_secret = tls13_next_secret(secret, suite)
    second = crypto_info_tls13(nxt_secret, suite, 0)
    third = crypto_info_tls13(tls13_next_secret(nxt_secret, suite), suite, 0)
    out: list[tuple[str, str]] = []

    def step(name: str, fn: Callable[[], object]) -> None:
        out.append((name, _outcome(fn)))

    with _pair() as (c, s):
        kc, ks = _wrap(c, tx_kind), _wrap(s, rx_kind)
        for k in (kc, ks):
            k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        kc.setsockopt(SOL_TLS, TLS_TX, first.pack())
        ks.setsockopt(SOL_TLS, TLS_RX, first.pack())
        size = len(first.pack())
        payload = os.urandom(40_000)
        step("send before", lambda: kc.sendall(payload))
        step(
            "send KeyUpdate",
            lambda: kc.sendmsg([_KEY_UPDATE], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")]),
        )
        swap = (
            CipherType.AES_GCM_256
            if first.cipher == CipherType.AES_GCM_128
            else (CipherType.AES_GCM_128)
        )
        other = _info(TLS_1_3_VERSION, swap, fixed=True)
        step("rekey TX with another cipher", lambda: kc.setsockopt(SOL_TLS, TLS_TX, other.pack()))
        step("rekey TX", lambda: kc.setsockopt(SOL_TLS, TLS_TX, second.pack()))
        step("send after", lambda: kc.sendall(b"after the key update"))
        step("getsockopt TX after rekey", lambda: kc.getsockopt(SOL_TLS, TLS_TX, size))
        step(
            "recv before",
            lambda: (
                hashlib.sha256(_recv_all(ks, len(payload))).hexdigest()
                == hashlib.sha256(payload).hexdigest()
            ),
        )
        step("recv KeyUpdate", lambda: ks.recvmsg(100, CMSG)[:2])
        # No timeout: Python then calls recv(2) directly, so the kernel's own
        # answer is compared (with a timeout Python polls first, and a kTLS
        # socket waiting for its next key does not poll readable).
        ks.settimeout(None)
        step("recv before the new key", lambda: ks.recv(100, socket.MSG_DONTWAIT))
        ks.settimeout(10)
        step("rekey RX", lambda: ks.setsockopt(SOL_TLS, TLS_RX, second.pack()))
        step("recv after", lambda: _recv_all(ks, 20))
        step("getsockopt RX after rekey", lambda: ks.getsockopt(SOL_TLS, TLS_RX, size))
        # A second round, the other way of sending the KeyUpdate (MSG_OOB
        # is this layer's; the kernel takes the cmsg).
        step(
            "send KeyUpdate 2",
            lambda: kc.sendmsg([_KEY_UPDATE], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")]),
        )
        step("rekey TX 2", lambda: kc.setsockopt(SOL_TLS, TLS_TX, third.pack()))
        step("send after 2", lambda: kc.sendall(b"third key"))
        step("recv KeyUpdate 2", lambda: ks.recvmsg(100, CMSG)[:2])
        step("rekey RX 2", lambda: ks.setsockopt(SOL_TLS, TLS_RX, third.pack()))
        step("recv after 2", lambda: _recv_all(ks, 9))
    return out


def _rx13_script(kind: str, key_update: bool = True) -> list[tuple[str, str]]:
    """TLS 1.3 records the post-handshake session must tell apart, as the
    receive side reports them: a protected record whose header type is not
    application_data (sealed over that header as RFC 8446 5.2 says, or over
    type 23), a plaintext ChangeCipherSpec, and a KeyUpdate fragmented over
    two records (the pause after the first, ended by installing the live RX
    key again, then the next key after the second)."""
    from tests.helpers.wire import encrypt_record

    suite = Suite.TLS_AES_128_GCM_SHA256
    secret = hashlib.sha256(b"rx13 traffic secret").digest()
    first = crypto_info_tls13(secret, suite, 0)
    second = crypto_info_tls13(tls13_next_secret(secret, suite), suite, 0)
    size = len(first.pack())
    out: list[tuple[str, str]] = []
    cases: dict[str, bytes] = {
        "outer 22 sealed over its header": encrypt_record(first, 0, 23, b"x", outer=22),
        "outer 22 sealed over 23": encrypt_record(first, 0, 23, b"x", outer=22, aad_outer=23),
        "outer 21 alert sealed over its header": encrypt_record(
            first, 0, 21, b"\x01\x00", outer=21
        ),
        "plaintext ccs": bytes([20, 3, 3, 0, 1, 1]) + encrypt_record(first, 0, 23, b"x"),
    }
    for name, wire_bytes in cases.items():
        with _pair() as (c, s):
            ks = _wrap(s, kind)
            ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            ks.setsockopt(SOL_TLS, TLS_RX, first.pack())
            ks.settimeout(2)
            c.sendall(wire_bytes)
            for i in range(2):
                got = _outcome(functools.partial(_recvmsg_head, ks, 100, CMSG))
                out.append((f"rx13 {name} recv {i}", got))
    if not key_update:  # a kernel without TLS 1.3 rekey (6.1) has no pause
        return out
    with _pair() as (c, s):
        ks = _wrap(s, kind)
        ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        ks.setsockopt(SOL_TLS, TLS_RX, first.pack())
        ks.settimeout(2)
        c.sendall(
            encrypt_record(first, 0, 22, _KEY_UPDATE[:3])
            + encrypt_record(first, 1, 22, _KEY_UPDATE[3:])
            + encrypt_record(second, 0, 23, b"after")
        )

        def step(name: str, fn: Callable[[], object]) -> None:
            out.append((f"rx13 KeyUpdate fragments: {name}", _outcome(fn)))

        step("recv first fragment", lambda: ks.recvmsg(100, CMSG)[:2])
        ks.settimeout(None)  # recv(2) itself, as in _rekey_pair
        step("recv paused", lambda: ks.recv(100, socket.MSG_DONTWAIT))
        ks.settimeout(2)
        live: list[bytes] = []
        step("getsockopt RX", lambda: live.append(bytes(ks.getsockopt(SOL_TLS, TLS_RX, size))))
        step("set RX to the live key", lambda: ks.setsockopt(SOL_TLS, TLS_RX, live[0]))
        step("recv second fragment", lambda: ks.recvmsg(100, CMSG)[:2])
        # No pause now (this record does not start with KeyUpdate): the next
        # key must be in before the next read, or that read fails its tag.
        step("set RX to the next key", lambda: ks.setsockopt(SOL_TLS, TLS_RX, second.pack()))
        step("recv after", lambda: ks.recvmsg(100, CMSG)[:2])
    return out


def _edges() -> Any:
    """kernel_edge_scenarios (imported late: it imports this module)."""
    from tests.helpers import kernel_edge_scenarios

    return kernel_edge_scenarios


def _rekey_departure(
    theirs: list[tuple[str, str]], ours: list[tuple[str, str]], step: str = "rekey TX"
) -> str:
    """A kernel without TLS 1.3 rekey (6.1): its EBUSY at ``step`` is the
    departure the README lists; the layer rekeys as Linux 6.14+ does."""
    k, u = dict(theirs)[step], dict(ours)[step]
    assert k == "errno EBUSY", f"kernel {os.uname().release} at {step!r}: {k}"
    assert u == "ok None", f"layer at {step!r}: {u}"
    return f"departure (README): kernel {os.uname().release} cannot rekey ({step}: {k})"


REKEY_SUITES = (
    Suite.TLS_AES_128_GCM_SHA256,
    Suite.TLS_AES_256_GCM_SHA384,
    Suite.TLS_CHACHA20_POLY1305_SHA256,
)


Decorator = Callable[[Callable[[], object]], Callable[[], object]]


def register(scenario: Callable[..., Decorator]) -> None:
    """Add this module's scenarios to ``kernel_scenarios``' registry."""
    for vname, version in VERSIONS.items():
        for cipher in CipherType:
            tag = f"{vname}_{cipher.name.lower()}"

            def layer_to_kernel(v: int = version, c: CipherType = cipher) -> str:
                return _transfer("sw", "kernel", v, c)

            def kernel_to_layer(v: int = version, c: CipherType = cipher) -> str:
                return _transfer("kernel", "sw", v, c)

            scenario(f"interop_layer_tx_kernel_rx_{tag}", timeout=60)(layer_to_kernel)
            scenario(f"interop_kernel_tx_layer_rx_{tag}", timeout=60)(kernel_to_layer)

    @scenario("oracle_semantics_same_as_kernel", timeout=60)
    def oracle() -> str:
        theirs = _semantics_script("kernel")
        ours = _semantics_script("sw")
        diffs = [
            f"{name}: kernel {k!s} / layer {u!s}"
            for (name, k), (_, u) in zip(theirs, ours, strict=True)
            if k != u
        ]
        assert not diffs, "differs from the kernel:\n" + "\n".join(diffs)
        return "; ".join(f"{n} -> {o}" for n, o in theirs)

    for suite in REKEY_SUITES:
        tag = suite.name.lower()

        def rekey_oracle(su: Suite = suite) -> str:
            theirs = _rekey_pair(su, "kernel", "kernel")
            ours = _rekey_pair(su, "sw", "sw")
            if not _edges().kernel_rekeys():
                return _rekey_departure(theirs, ours)
            diffs = [
                f"{name}: kernel {k} / layer {u}"
                for (name, k), (_, u) in zip(theirs, ours, strict=True)
                if k != u
            ]
            assert not diffs, "rekey differs from the kernel:\n" + "\n".join(diffs)
            return "; ".join(f"{n} -> {o}" for n, o in theirs)

        def rekey_interop(su: Suite = suite) -> str:
            edges = _edges()
            if not edges.kernel_rekeys():
                raise edges.ScenarioSkipped(
                    f"kernel {os.uname().release} cannot rekey: nothing to interoperate with "
                    "(oracle_rekey_same_as_kernel_* checks the departure)"
                )
            results = {}
            for tx_kind, rx_kind in (("sw", "kernel"), ("kernel", "sw")):
                got = dict(_rekey_pair(su, tx_kind, rx_kind))
                bad = {
                    k: v
                    for k, v in got.items()
                    if k in ("recv before", "recv after", "recv after 2", "rekey TX", "rekey RX")
                    and v
                    not in (
                        "ok True",
                        "ok None",
                        f"bytes {b'after the key update'.hex()}",
                        f"bytes {b'third key'.hex()}",
                    )
                }
                assert not bad, f"{tx_kind} TX -> {rx_kind} RX: {bad}"
                results[f"{tx_kind}->{rx_kind}"] = got["recv after 2"]
            return str(results)

        scenario(f"oracle_rekey_same_as_kernel_{tag}", timeout=60)(rekey_oracle)
        scenario(f"interop_rekey_{tag}", timeout=60)(rekey_interop)

    @scenario("oracle_rx13_records_same_as_kernel", timeout=60)
    def rx13_oracle() -> str:
        key_update = _edges().kernel_rekeys()  # 6.1 neither pauses nor rekeys
        theirs = _rx13_script("kernel", key_update)
        ours = _rx13_script("sw", key_update)
        diffs = [
            f"{name}: kernel {k} / layer {u}"
            for (name, k), (_, u) in zip(theirs, ours, strict=True)
            if k != u
        ]
        assert not diffs, "TLS 1.3 RX differs from the kernel:\n" + "\n".join(diffs)
        return "; ".join(f"{n} -> {o}" for n, o in theirs)

    @scenario("kernel_backend_passthrough", timeout=60)
    def kernel_backend() -> str:
        """KTLSSocket(backend="kernel"/"auto") drives the real kTLS: sendfile
        goes through os.sendfile, MSG_OOB control records become cmsgs."""
        info = _info(TLS_1_2_VERSION, CipherType.AES_GCM_256, seq=3)
        data = os.urandom(300_001)
        with tempfile.NamedTemporaryFile() as f, _pair() as (c, s):
            f.write(data)
            f.flush()
            kc = KTLSSocket(c, backend="auto")
            ks = KTLSSocket(s, backend="sw")
            kc.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            assert kc.backend == "kernel", kc.backend
            ks.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            kc.setsockopt(SOL_TLS, TLS_TX, info.pack())
            ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
            result: list[int] = []
            t = threading.Thread(target=lambda: result.append(kc.sendfile(f.file, 0)))
            t.start()
            got = _recv_all(ks, len(data))
            t.join(20)
            assert result == [len(data)], result
            assert got == data
            assert kc.sendmsg([b"\x15\x01\x00"], [], socket.MSG_OOB) == 3
            data2, anc, _, _ = ks.recvmsg(100, CMSG)
            assert (data2, anc) == (b"\x01\x00", [(SOL_TLS, TLS_GET_RECORD_TYPE, b"\x15")])
            live = kc.getsockopt(SOL_TLS, TLS_TX, 56)
            assert isinstance(live, bytes)  # with a buflen: the crypto_info's bytes
            seq = CryptoInfo.unpack(live).seq
        return f"sendfile {len(data)} bytes via kernel kTLS; tx rec_seq {seq}"


__all__ = ["register"]
