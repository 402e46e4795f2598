"""The real wire's RX offload without namespaces: the NIC's RX engine
(``offload.netwire.nic_rx.NicRx``) fed crafted frames, its mark ring, and the
host's ``NetRxPath`` reading what a model of the host's kernel kept.

The point pinned here is the one the real wire adds to RX offload: the
same TCP range can reach the NIC more than once (a duplicate, a
retransmission after a lost ACK, a retransmission that coalesces old and
new bytes), and the host's kernel - not the NIC - decides which copy it
keeps.  Both of Linux's choices are modelled (``first``: the first copy of
a byte stays, as for an equal range in the ofo queue and anything below
rcv_nxt; ``last``: a later copy replaces it, as a larger skb replaces
smaller ones in the ofo queue or after pruning), and for each the host
must read exactly the plaintext sent, every record counted once.  A NIC
that did not keep its decrypted ranges in one state (no replay) makes the
``last`` host take ciphertext as plaintext: shown too, so these tests can
fail.
"""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest

from offload.drivers.simnic import SimNic
from offload.drivers.simnic_rx import SimNicRxContext
from offload.netdev import NetDevice, RxSyncType
from offload.netwire.control import ControlClient, flow_to_json
from offload.netwire.frames import TCP_SYN, FlowKey, parse_tcp
from offload.netwire.nic_rx import NicRx
from offload.netwire.rxpath import NetDeviceRx, NetRxPath, RemoteRxNic
from offload.netwire.rxring import RingReader
from offload.stats import TlsStats
from offload.tcpseq import SEQ_MOD, SeqSpace
from offload.tls_device_rx import DeviceRx
from offload.tls_sw import SwTx
from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, CipherType, ContentType, CryptoInfo
from tests.conftest import random_info
from tests.offload.test_netwire_engine import frame

PEER, HOST = socket.inet_aton("10.213.0.2"), socket.inet_aton("10.213.0.1")
KEY = FlowKey(PEER, 443, HOST, 40000)
ISN = SEQ_MOD - 7000  # the stream wraps 2^32 a few KiB in
DATA = int(ContentType.APPLICATION_DATA)
SEG = 1000


class LocalControl:
    """The control channel, answered in this process by the NIC engine."""

    def __init__(self, nic: NicRx) -> None:
        self.nic = nic

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        answer = self.nic.handle(op, KEY, {"op": op, **fields})
        if "error" in answer:
            raise OSError(answer["error"])
        return answer

    def close(self) -> None:
        pass


class Bench:
    """The NIC engine, a host kernel that keeps one copy of each byte, the
    host's RX path reading the in-order bytes."""

    def __init__(self, info: CryptoInfo, sync: RxSyncType, keep: str) -> None:
        self.nic = NicRx(NetDevice("nic0", SimNic()))
        self.keep = keep
        self.nic.ingress(frame(ISN, b"", key=KEY, flags=TCP_SYN))
        self.kernel: dict[int, int] = {}  # stream offset -> byte the kernel holds
        self.read = 0
        ring = RingReader(entries=1024)
        nic = RemoteRxNic(cast(ControlClient, LocalControl(self.nic)), KEY, ring)
        a, b = socket.socketpair()
        self._socks = (a, b)
        self.path = NetRxPath(a, "", sync)
        self.rx = DeviceRx(info, NetDevice("nic0", nic), SeqSpace(ISN + 1), TlsStats(), sync)
        nic.closing = lambda: not self.rx.key_update_pending
        self.path.rx, self.path.nic, self.path._ring = self.rx, nic, ring
        self.path._armed = True
        self.plain = bytearray()

    def arrive(
        self, offset: int, payload: bytes, read: bool = True, reaches_host: bool = True
    ) -> bool:
        """A frame with ``payload`` at stream ``offset`` reaches the NIC; what
        the NIC forwards reaches the host's kernel (unless ``reaches_host``
        is False: the kernel dropped it, out of memory), and (``read``) the
        host reads what is in order.  True if forwarded."""
        f = frame((ISN + 1 + offset) % SEQ_MOD, payload, key=KEY)
        if not self.nic.ingress(f):
            return False
        t = parse_tcp(f)
        assert t is not None
        out = bytes(f[t.payload : t.end])
        if not reaches_host:
            return True
        for i, byte in enumerate(out):
            pos = offset + i
            if pos < self.read:
                continue  # below rcv_nxt: the kernel trims it
            if self.keep == "last" or pos not in self.kernel:
                self.kernel[pos] = byte
        if read:
            self._read()
        return True

    def _read(self) -> None:
        end = self.read
        while end in self.kernel:
            end += 1
        if end == self.read:
            return
        data = bytes(self.kernel.pop(p) for p in range(self.read, end))
        self.read = end
        self.path.receive(memoryview(data))
        while self.rx.decrypt_next() is not None:
            pass
        while self.rx.ready:
            self.plain += bytes(self.rx.ready.popleft().data)

    def report(self) -> dict[str, int | str]:
        return self.rx.report()


def stream(info: CryptoInfo, n: int, size: int = 2900) -> tuple[bytes, bytes]:
    """``n`` data records of ``size`` bytes: (plaintext, ciphertext stream)."""
    tx = SwTx(info)
    plain = bytes(i % 251 for i in range(n * size))
    wire = b"".join(
        bytes(b) for i in range(n) for b in tx.frame(DATA, plain[i * size : (i + 1) * size], False)
    )
    return plain, wire


def segments(wire: bytes, size: int = SEG) -> list[tuple[int, bytes]]:
    return [(o, wire[o : o + size]) for o in range(0, len(wire), size)]


def _check(b: Bench, plain: bytes, records: int) -> dict[str, int | str]:
    assert bytes(b.plain) == plain
    r = b.report()
    assert (
        int(r["rx_records_device"]) + int(r["rx_records_partial"]) + int(r["rx_records_sw"])
        == records
    )
    return r


def _ofo_scenario(info: CryptoInfo, keep: str) -> tuple[bytes, Bench]:
    plain, wire = stream(info, 12)
    b = Bench(info, RxSyncType.DRIVER_REQ, keep)
    segs = segments(wire)
    for o, p in segs[:3]:
        b.arrive(o, p)
    hole = segs[3]
    b.arrive(*hole, reaches_host=False)
    for o, p in segs[4:9]:  # past the hole: the host holds them
        b.arrive(o, p)
    # Old bytes of 4..8 plus new bytes of 9..10 in one frame (the sender
    # coalesced its retransmission), then each of 5..7 again.
    o4 = segs[4][0]
    end = segs[10][0] + len(segs[10][1])
    b.arrive(o4, wire[o4:end])
    for o, p in segs[5:8]:
        b.arrive(o, p)
    b.arrive(*hole)
    for o, p in segs[11:]:
        b.arrive(o, p)
    return plain, b


INFOS = [
    pytest.param(TLS_1_2_VERSION, CipherType.AES_GCM_128, id="1.2-aes128"),
    pytest.param(TLS_1_3_VERSION, CipherType.CHACHA20_POLY1305, id="1.3-chacha"),
]


@pytest.mark.parametrize("keep", ["first", "last"])
@pytest.mark.parametrize(("version", "cipher"), INFOS)
def test_duplicate_of_a_decrypted_range_carries_the_same_plaintext_and_mark(
    version: int, cipher: CipherType, keep: str
) -> None:
    """Every frame reaches the NIC twice (a duplicate, as a lost ACK's
    retransmission would): the second copy goes out as the first did."""
    info = random_info(version, cipher)
    plain, wire = stream(info, 12)
    b = Bench(info, RxSyncType.DRIVER_REQ, keep)
    segs = segments(wire)
    for i, (o, p) in enumerate(segs):
        # The host reads every fourth frame: the copies meet bytes not read yet.
        b.arrive(o, p, read=i % 4 == 3)
        if i >= 2:
            b.arrive(*segs[i - 2], read=False)
    b.arrive(*segs[-1])
    r = _check(b, plain, 12)
    assert r["rx_records_device"] == 12
    assert b.nic.counters["rx_frames_replayed"] > 0


@pytest.mark.parametrize("keep", ["first", "last"])
@pytest.mark.parametrize(("version", "cipher"), INFOS)
def test_retransmission_held_in_the_ofo_queue_replaces_the_decrypted_copy(
    version: int, cipher: CipherType, keep: str
) -> None:
    """A frame the NIC decrypted is dropped by the host's kernel (memory
    pressure): a hole holds the host's reads back, the frames after it
    (decrypted, the NIC still in sync) sit in the out-of-order queue, and
    their retransmissions - one coalescing old and new bytes - arrive
    before the hole is filled by the retransmission of the dropped frame:
    whichever copy the kernel keeps, the mark is right."""
    info = random_info(version, cipher)
    plain, b = _ofo_scenario(info, keep)
    r = _check(b, plain, 12)
    assert b.nic.counters["rx_bytes_replayed"] > 0
    assert r["rx_records_device"] == 12  # the NIC never lost sync: every record its


@pytest.mark.parametrize("keep", ["first", "last"])
def test_retransmission_of_old_and_new_bytes_in_order(keep: str) -> None:
    """In sync, a frame that repeats the tail of what the NIC decrypted and
    carries new bytes: the old part replayed, the new part through the
    engine at its own sequence number (still in sync: every record by the NIC)."""
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_256)
    plain, wire = stream(info, 10)
    b = Bench(info, RxSyncType.DRIVER_REQ, keep)
    pos = 0
    step = 1500
    while pos < len(wire):
        back = 400 if pos else 0
        b.arrive(pos - back, wire[pos - back : pos + step])
        pos += step
    r = _check(b, plain, 10)
    assert r["rx_records_device"] == 10 and r["rx_records_sw"] == 0


@pytest.mark.parametrize("keep", ["first", "last"])
def test_without_replay_a_later_copy_would_be_taken_as_plaintext(
    monkeypatch: pytest.MonkeyPatch, keep: str
) -> None:
    """The guard for the tests above: a NIC that forwards a later copy of a
    decrypted range as it came (ciphertext) while the ring says "decrypted"
    makes the host read garbage - whichever copy it keeps, since the
    retransmission of the frame its kernel dropped is the only copy."""
    monkeypatch.setattr(NicRx, "_replay", lambda *a, **k: None)
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    plain, b = _ofo_scenario(info, keep)
    assert bytes(b.plain) != plain  # silently: the NIC "checked the tag"


@pytest.mark.parametrize("sync", list(RxSyncType))
def test_loss_then_resync_through_the_ring(sync: RxSyncType) -> None:
    """A frame lost before the NIC: the engine loses sync, the resync calls
    and answers cross the ring and the control ops, and the NIC decrypts
    again; the late copy of the lost frame passes as it came."""
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    plain, wire = stream(info, 40, size=1200)
    b = Bench(info, sync, "first")
    segs = segments(wire, 700)
    lost = segs[5]
    for o, p in segs[:5] + segs[6:12]:
        b.arrive(o, p)
    b.arrive(*lost)
    for o, p in segs[12:]:
        b.arrive(o, p)
    r = _check(b, plain, 40)
    assert int(r["rx_records_device"]) > 0 and int(r["rx_records_sw"]) > 0
    assert b.rx.stats.snapshot()["TlsRxDeviceResync"] >= 1


def test_kept_ranges_go_once_the_host_read_past_them() -> None:
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    plain, wire = stream(info, 30)
    b = Bench(info, RxSyncType.DRIVER_REQ, "first")
    for o, p in segments(wire):
        b.arrive(o, p)
    _check(b, plain, 30)
    fl = b.nic.flows[KEY]
    assert len(fl.kept) <= 1  # the last frame's: the host reads after it is forwarded


def test_ring_full_drops_the_frame_before_the_engine() -> None:
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    _plain, wire = stream(info, 2)
    b = Bench(info, RxSyncType.DRIVER_REQ, "first")
    ring = b.nic.flows[KEY].ring
    assert ring is not None
    for _ in range(ring.room() - 4):
        ring.append(1, 9, 0, 0)
    assert not b.arrive(0, wire[:SEG])
    assert b.nic.counters["rx_ring_full"] == 1
    assert b.nic.flows[KEY].high == ISN + 1  # the engine never saw it


def test_rx_requests_name_the_field_not_the_key() -> None:
    nic = NicRx(NetDevice("nic0", SimNic()))
    nic.ingress(frame(ISN, b"", key=KEY, flags=TCP_SYN))
    bad = nic.handle("add", KEY, {"flow": flow_to_json(KEY), "crypto_info": "zz" * 40})
    assert "crypto_info" in bad["error"] and "zz" not in bad["error"]
    unknown = nic.handle("add", FlowKey(PEER, 1, HOST, 2), {})
    assert "not seen" in unknown["error"]


def test_rx_state_goes_with_the_host_connection() -> None:
    """A host that vanished without ``close`` (its control connection
    closed): the NIC drops the flow's context, ring and kept bytes."""
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    _plain, wire = stream(info, 2)
    b = Bench(info, RxSyncType.DRIVER_REQ, "first")
    b.arrive(0, wire[:SEG], read=False)
    assert b.nic.flows[KEY].kept and b.nic.device.stats.snapshot()["rx_tls_del"] == 0
    b.nic.disconnected(owner=1)  # another host connection: nothing happens
    assert b.nic.flows[KEY].ring is not None
    b.nic.disconnected(owner=0)
    assert KEY not in b.nic.flows
    assert b.nic.device.stats.snapshot()["rx_tls_del"] == 1


def test_read_ahead_moves_the_context_back_at_once() -> None:
    """Ciphertext the handshake read ahead (fed after TLS_RX) lies before
    ``copied_seq``: as it is fed, offset 0 and the NIC's context move back
    to it (the context before could not decrypt: wrong record numbers),
    and the rest of the stream, through the NIC, reads right."""
    info = random_info(TLS_1_2_VERSION, CipherType.AES_GCM_128)
    plain, wire = stream(info, 8)
    ahead = 3 * 2900 + 100  # three records and a bit of the fourth
    nic = NicRx(NetDevice("nic0", SimNic()))
    nic.ingress(frame(ISN, b"", key=KEY, flags=TCP_SYN))
    nic.ingress(frame(ISN + 1, wire[:ahead], key=KEY))  # before TLS_RX
    ring = RingReader(entries=256)
    rnic = RemoteRxNic(cast(ControlClient, LocalControl(nic)), KEY, ring)
    a, b = socket.socketpair()
    path = NetRxPath(a, "", RxSyncType.DRIVER_REQ)
    copied = SeqSpace((ISN + 1 + ahead) % SEQ_MOD)  # what offload_rx computes
    rx = NetDeviceRx(info, NetDevice("nic0", rnic), copied, TlsStats(), RxSyncType.DRIVER_REQ)
    rx.path = path
    path.rx, path.nic, path._ring = rx, rnic, ring
    assert cast(SimNicRxContext, nic.flows[KEY].ctx).expected == copied.seq(0)
    rx.feed(wire[:ahead])
    assert rx.space.seq(0) == (ISN + 1) % SEQ_MOD
    assert cast(SimNicRxContext, nic.flows[KEY].ctx).expected == (ISN + 1) % SEQ_MOD
    assert nic.device.stats.snapshot()["rx_tls_ctx"] == 2  # the context, moved
    got = bytearray()
    for o in range(ahead, len(wire), 1000):
        f = frame((ISN + 1 + o) % SEQ_MOD, wire[o : o + 1000], key=KEY)
        assert nic.ingress(f)
        t = parse_tcp(f)
        assert t is not None
        path.receive(f[t.payload : t.end])
        while rx.decrypt_next() is not None:
            pass
        while rx.ready:
            got += bytes(rx.ready.popleft().data)
    assert bytes(got) == plain
    r = rx.report()
    assert int(r["rx_records_device"]) > 0  # back in sync (DRIVER_REQ) after the gap
    assert r["rx_records_device"] + r["rx_records_partial"] + r["rx_records_sw"] == 8  # type: ignore[operator]
    a.close()
    b.close()
