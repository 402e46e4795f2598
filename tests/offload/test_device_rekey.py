"""Device rekey (issue 13 item 4): a TLS 1.3 KeyUpdate on a device context.

No upstream NIC can do this; sim-nic does.  The NIC keeps the old key
until every record sealed under it is acknowledged, so a retransmitted
old-key record goes out under the old key and new records under the new
one.  Every test compares the wire with what software TX (``SwTx`` with
the same rekeys) puts there, byte for byte, or decrypts it with the
software receiver; the last one shows the no-rekey driver refused as Linux
refuses every device context.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload import KTLSSocket
from offload.drivers.simnic import SimNic, SimNicContext
from offload.netdev import (
    TLS_OFFLOAD_CTX_DIR_TX,
    NetDevice,
    OffloadRefused,
    RecordLookup,
    Segment,
    create_device,
)
from offload.tcpseq import SEQ_MOD, SeqSpace
from offload.tls_device import DeviceTx
from offload.tls_sw import SwTx
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_3_VERSION,
    TLS_RX,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    CipherType,
    CryptoInfo,
)
from offload.wiremodel import FaultSpec, TxPipeline
from tests.conftest import random_info

Pair = Callable[[], tuple[socket.socket, socket.socket]]
GCM_CHACHA = [CipherType.AES_GCM_128, CipherType.AES_GCM_256, CipherType.CHACHA20_POLY1305]
ALL_FAULTS = "reorder=0.1,split=0.1,dup=0.1,drop=0.1,redirect=0.1"
KEY_UPDATE = bytes([24, 0, 0, 1, 0])  # KeyUpdate, update_not_requested

Step = tuple[int, bytes] | CryptoInfo
"""A record run (content type, data) or a rekey to this crypto_info."""


def _steps(cipher: CipherType, sizes: list[list[int]]) -> tuple[CryptoInfo, list[Step]]:
    """Runs of data records, a KeyUpdate and a rekey between runs."""
    first = random_info(TLS_1_3_VERSION, cipher, seq=5)
    steps: list[Step] = []
    for i, run in enumerate(sizes):
        if i:
            steps.append((22, KEY_UPDATE))
            steps.append(random_info(TLS_1_3_VERSION, cipher))
        steps += [(23, os.urandom(n)) for n in run]
    return first, steps


def _through_device(
    info: CryptoInfo, steps: list[Step], *, faults: str | None, mss: int, isn: int
) -> tuple[bytes, bytes, NetDevice, DeviceTx]:
    """(wire bytes via sim-nic, software TX's bytes, device, device context)."""
    dev = NetDevice("nic0", SimNic())
    pipe = TxPipeline(
        dev,
        space=SeqSpace(isn),
        mss=mss,
        faults=FaultSpec.parse(faults) if faults else None,
        fallback_device=NetDevice("nic1", SimNic()),
    )
    hello = b"hello in the clear"
    out = bytearray(b"".join(pipe.transmit(hello)))
    tx = pipe.offload(info, 4096)
    sw = SwTx(info, 4096)
    ref = bytearray(hello)
    for step in steps:
        if isinstance(step, CryptoInfo):
            tx.rekey(step)
            sw.rekey(step)
            continue
        ctype, data = step
        for buf in tx.frame(ctype, data, False):
            out += b"".join(pipe.transmit(buf))
        for buf in sw.frame(ctype, data, False):
            ref += buf
    out += b"".join(pipe.drain())
    return bytes(out), bytes(ref), dev, tx


@pytest.mark.parametrize("cipher", GCM_CHACHA, ids=lambda c: c.name)
@pytest.mark.parametrize("faults", [None, ALL_FAULTS + ",seed=1", ALL_FAULTS + ",seed=2"])
@pytest.mark.parametrize(
    ("mss", "isn"), [(65536, SEQ_MOD - 5000), (1448, 12345), (97, SEQ_MOD - 40)]
)
def test_rekeyed_device_context_matches_software_tx(
    cipher: CipherType, faults: str | None, mss: int, isn: int
) -> None:
    """Three keys, with the TCP sequence number wrapping among them: the
    NIC's bytes equal software TX's, in order and under every fault (the
    software fallback takes redirected segments with the record's own key);
    once the wire acknowledged everything, only the last key is held."""
    info, steps = _steps(cipher, [[1, 20000, 5], [40000], [3, 9000]])
    wire, ref, dev, tx = _through_device(info, steps, faults=faults, mss=mss, isn=isn)
    assert wire == ref
    assert isinstance(tx.ctx, SimNicContext)
    empty = Segment(tx.space.seq(tx.next_offset), memoryview(b""))
    dev.driver.xmit(tx.ctx, empty, tx, memoryview(b""))  # the NIC takes the releases in
    assert len(tx.ctx.keys) == 1 and len(tx._epochs) == 1  # the old keys are gone
    if faults:
        assert dev.stats["tx_tls_ooo"] > 0


def test_key_changes_inside_one_segment() -> None:
    """Records of a few bytes with a rekey between each: one segment holds
    three key boundaries, each crossed at its record edge (the sequence
    number wrapping inside it too), in order and as a retransmission."""
    info, steps = _steps(CipherType.AES_GCM_128, [[10], [7], [1], [300]])
    dev = NetDevice("nic0", SimNic())
    space = SeqSpace(SEQ_MOD - 7)
    tx = DeviceTx(info, dev, space, 0, 4096)
    sw = SwTx(info, 4096)
    framed, ref = b"", b""
    for step in steps:
        if isinstance(step, CryptoInfo):
            tx.rekey(step)
            sw.rekey(step)
        else:
            framed += _framed(tx, *step)
            ref += b"".join(bytes(b) for b in sw.frame(*step, False))
    for _ in range(2):  # the second time round: a retransmission from the first key
        out = bytearray(len(framed))
        seg = Segment(space.seq(0), memoryview(bytearray(framed)))
        assert dev.driver.xmit(tx.ctx, seg, tx, memoryview(out))
        assert bytes(out) == ref
    assert dev.stats["tx_tls_encrypted_packets"] == 2 and dev.stats["tx_tls_ooo"] == 1


def _framed(tx: DeviceTx, ctype: int, data: bytes) -> bytes:
    return b"".join(bytes(b) for b in tx.frame(ctype, data, False))


@pytest.mark.parametrize("cipher", GCM_CHACHA, ids=lambda c: c.name)
def test_retransmitted_old_key_record_after_the_rekey(cipher: CipherType) -> None:
    """The NIC has moved on to the new key when TCP retransmits a segment
    from the middle of an old-key record: the segment goes out as software
    TX sealed it (old key, old record number), and the next new-key segment
    too.  Once the host says all old-key records are acknowledged the old
    key is gone, and a late retransmission of one is dropped, never sent in
    plaintext or under the wrong key."""
    info = random_info(TLS_1_3_VERSION, cipher, seq=9)
    new = random_info(TLS_1_3_VERSION, cipher)
    dev = NetDevice("nic0", SimNic())
    space = SeqSpace(SEQ_MOD - 1000)
    tx = DeviceTx(info, dev, space, 0, 4096)
    sw = SwTx(info, 4096)
    old_data, new_data = os.urandom(10000), os.urandom(10000)
    framed = _framed(tx, 23, old_data) + _framed(tx, 22, KEY_UPDATE)
    ref = b"".join(bytes(b) for b in sw.frame(23, old_data, False))
    ref += b"".join(bytes(b) for b in sw.frame(22, KEY_UPDATE, False))
    boundary = len(framed)
    tx.rekey(new)
    sw.rekey(new)
    framed += _framed(tx, 23, new_data)
    ref += b"".join(bytes(b) for b in sw.frame(23, new_data, False))
    assert len(framed) == len(ref)

    def send(lo: int, hi: int, lookup: RecordLookup = tx) -> bytes | None:
        out = bytearray(hi - lo)
        seg = Segment(space.seq(lo), memoryview(bytearray(framed[lo:hi])))
        return bytes(out) if dev.driver.xmit(tx.ctx, seg, lookup, memoryview(out)) else None

    cut = boundary + 1000
    assert send(0, cut) == ref[:cut]  # in order across the key change
    assert send(5000, 6000) == ref[5000:6000]  # a retransmission: old key
    assert dev.stats["tx_tls_ooo"] == 1 and dev.stats["tx_tls_dump_bytes"] > 0
    assert send(cut, len(framed)) == ref[cut:]  # back to the new key
    tx.clean_acked(boundary + 10)  # every old-key record acknowledged
    assert len(tx._epochs) == 1
    assert send(len(framed), len(framed)) == b""  # the NIC takes the release in
    assert isinstance(tx.ctx, SimNicContext) and len(tx.ctx.keys) == 1
    assert send(5000, 6000) is None  # freed: dropped
    assert dev.stats["tx_tls_drop_no_sync_data"] == 1
    assert send(boundary + 2000, boundary + 3000) == ref[boundary + 2000 : boundary + 3000]


def test_release_while_the_nic_replays_an_old_record() -> None:
    """The host frees the old key while the NIC's state is inside an old
    record it was replaying: the NIC resyncs on its next segment instead of
    going on with a key it no longer has."""
    info = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_256, seq=0)
    new = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_256)
    dev = NetDevice("nic0", SimNic())
    space = SeqSpace(77)
    tx = DeviceTx(info, dev, space, 0, 4096)
    sw = SwTx(info, 4096)
    a, b = os.urandom(9000), os.urandom(9000)
    framed = _framed(tx, 23, a)
    ref = b"".join(bytes(x) for x in sw.frame(23, a, False))
    boundary = len(framed)
    tx.rekey(new)
    sw.rekey(new)
    framed += _framed(tx, 23, b)
    ref += b"".join(bytes(x) for x in sw.frame(23, b, False))

    def send(lo: int, hi: int) -> bytes | None:
        out = bytearray(hi - lo)
        seg = Segment(space.seq(lo), memoryview(bytearray(framed[lo:hi])))
        return bytes(out) if dev.driver.xmit(tx.ctx, seg, tx, memoryview(out)) else None

    assert send(0, len(framed)) == ref
    assert send(100, 200) == ref[100:200]  # replaying an old record: expected is 200
    tx.clean_acked(boundary)  # every old-key record acknowledged: the release
    assert send(200, 300) is None  # not encrypted under the new key from stale state
    assert dev.stats["tx_tls_drop_no_sync_data"] == 1
    assert send(boundary + 100, boundary + 200) == ref[boundary + 100 : boundary + 200]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cipher=st.sampled_from(GCM_CHACHA),
    probs=st.lists(st.floats(0, 0.4), min_size=5, max_size=5),
    seed=st.integers(0, 2**32),
    mss=st.integers(1, 70_000),
    isn=st.integers(0, SEQ_MOD - 1),
    runs=st.lists(st.lists(st.integers(0, 20_000), min_size=1, max_size=3), min_size=2, max_size=5),
)
def test_property_rekeys_under_any_fault_schedule_equal_software(
    cipher: CipherType,
    probs: list[float],
    seed: int,
    mss: int,
    isn: int,
    runs: list[list[int]],
) -> None:
    kinds = ("reorder", "split", "dup", "drop", "redirect")
    spec = ",".join(f"{k}={p}" for k, p in zip(kinds, probs, strict=True))
    info, steps = _steps(cipher, runs)
    mss = max(mss, sum(map(sum, runs)) // 2000 + 1)
    wire, ref, *_ = _through_device(info, steps, faults=f"{spec},seed={seed}", mss=mss, isn=isn)
    assert wire == ref


# -- through real sockets ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_socket_rekey_on_a_device_context_under_faults(tcp_pair: Pair, seed: int) -> None:
    """send, KeyUpdate record, setsockopt(TLS_TX) new key, send: the
    software receiver reads the old key's bytes, EKEYEXPIRED at the
    KeyUpdate, then (new TLS_RX key) the rest; hashes equal."""
    info = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128, seq=1)
    nxt = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    c, s = tcp_pair()
    dev = create_device("sim-nic")
    pipe = TxPipeline(
        dev,
        faults=FaultSpec.parse(ALL_FAULTS.replace("0.1", "0.05") + f",seed={seed}"),
        mss=4096,
        fallback_device=create_device("sim-nic", "nic1"),
    )
    kc = KTLSSocket(c, backend="sw", txpath=pipe)
    ks = KTLSSocket(s, backend="sw")
    for k in (kc, ks):
        k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    kc.setsockopt(SOL_TLS, TLS_TX, info.pack())
    ks.setsockopt(SOL_TLS, TLS_RX, info.pack())
    assert kc.tx_conf == "device"
    before, after = os.urandom(300_001), os.urandom(200_003)

    def send() -> None:
        kc.sendall(before)
        kc.sendmsg([KEY_UPDATE], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")])
        kc.setsockopt(SOL_TLS, TLS_TX, nxt.pack())
        kc.sendall(after)

    t = threading.Thread(target=send)
    t.start()
    got = bytearray()
    while len(got) < len(before):
        chunk = ks.recv(1 << 20)
        assert chunk
        got += chunk
    msg, anc, _flags, _addr = ks.recvmsg(64, socket.CMSG_SPACE(1))
    assert msg == KEY_UPDATE and anc[0][2] == b"\x16"
    with pytest.raises(OSError) as err:
        ks.recv(10)
    assert err.value.errno == errno.EKEYEXPIRED
    ks.setsockopt(SOL_TLS, TLS_RX, nxt.pack())
    while len(got) < len(before) + len(after):
        chunk = ks.recv(1 << 20)
        assert chunk
        got += chunk
    t.join()
    assert hashlib.sha256(got).digest() == hashlib.sha256(before + after).digest()
    assert kc.getsockopt(SOL_TLS, TLS_TX, len(nxt.pack())) != info.pack()
    assert kc.stats["TlsTxRekeyOk"] == 1
    assert dev.stats["tx_tls_ooo"] > 0  # the faults drove the resync path
    kc.close()
    ks.close()


class _NoRekey:
    """sim-nic without ``dev_rekey``: an upstream-like driver."""

    name = "no-rekey-nic"

    def __init__(self) -> None:
        self._nic = SimNic()
        self.stats = self._nic.stats

    def dev_add(self, direction: int, info: CryptoInfo, start_tcp_seq: int) -> object:
        return self._nic.dev_add(direction, info, start_tcp_seq)

    def dev_del(self, ctx: object) -> None:
        self._nic.dev_del(ctx)

    def dev_resync(self, ctx: object, tcp_seq: int, record_sn: int) -> None:
        self._nic.dev_resync(ctx, tcp_seq, record_sn)

    def xmit(self, ctx: object, segment: Segment, lookup: RecordLookup, out: memoryview) -> bool:
        return self._nic.xmit(ctx, segment, lookup, out)


def test_a_driver_without_dev_rekey_is_refused_as_linux_refuses(tcp_pair: Pair) -> None:
    """EOPNOTSUPP, and the refusal has no effect: the open MSG_MORE record is
    not pushed under the old key first, the old key still reads back."""
    info = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    c, _s = tcp_pair()
    kc = KTLSSocket(c, backend="sw", txpath=TxPipeline(NetDevice("nic0", _NoRekey())))
    kc.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    kc.setsockopt(SOL_TLS, TLS_TX, info.pack())
    assert kc.tx_conf == "device"
    kc.send(b"open", socket.MSG_MORE)
    new = random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128)
    with pytest.raises(OSError) as err:
        kc.setsockopt(SOL_TLS, TLS_TX, new.pack())
    assert err.value.errno == errno.EOPNOTSUPP
    assert kc.getsockopt(SOL_TLS, TLS_TX, 40) == info.pack()  # nothing changed


def test_rekey_refuses_another_cipher_at_the_nic() -> None:
    nic = SimNic()
    ctx = nic.dev_add(
        TLS_OFFLOAD_CTX_DIR_TX, random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128), 0
    )
    with pytest.raises(OffloadRefused, match="keep the version and cipher"):
        nic.dev_rekey(ctx, random_info(TLS_1_3_VERSION, CipherType.AES_GCM_256), 100)
