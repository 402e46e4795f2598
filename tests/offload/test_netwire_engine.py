"""The real wire's parts without namespaces: the NIC engine fed crafted
frames, the shared record store, the frame parser, TCP_INFO's bytes_acked.

The NIC engine (``offload.netwire.nic.Nic``) is what runs in the NIC
process; here it gets frames built by hand so every path is pinned exactly:
in-order encryption across frame and record edges, resync of an old frame
from the store, a frame of a freed record dropped (never plaintext), bytes
before the start marker and flows without a context untouched.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import time
from collections.abc import Callable

import pytest

from offload.batch import TxBatches
from offload.drivers.simnic import SimNic
from offload.netdev import TLS_OFFLOAD_CTX_DIR_TX, NetDevice, create_device
from offload.netwire.frames import FlowKey, make_partial, parse_tcp
from offload.netwire.nic import Nic
from offload.netwire.recstore import StoreFull, StoreReader, StoreWriter
from offload.netwire.tun import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR
from offload.netwire.txpath import bytes_acked, outq
from offload.record import RecordSealer
from offload.tls_sw import SwTx
from offload.uapi import CipherType, CryptoInfo
from tests.conftest import COMBOS, combo_id, random_info

SRC, DST = socket.inet_aton("10.213.0.1"), socket.inet_aton("10.213.0.2")
KEY = FlowKey(SRC, 40000, DST, 443)
STREAMABLE = [c for c in COMBOS if c[1] != CipherType.AES_CCM_128]


def frame(
    seq: int, payload: bytes, *, key: FlowKey = KEY, flags: int = 0x18, needs_csum: bool = True
) -> memoryview:
    """virtio_net_hdr | IPv4 | TCP | payload, as the TUN hands it over."""
    vnet = VNET_HDR.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM if needs_csum else 0,
        0,
        0,
        0,
        20 if needs_csum else 0,
        16 if needs_csum else 0,
    )
    ip = struct.pack(
        ">BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0, key.src, key.dst
    )
    tcp = struct.pack(">HHIIBBHHH", key.sport, key.dport, seq, 1, 5 << 4, flags, 65535, 0, 0)
    return memoryview(bytearray(vnet + ip + tcp + payload))


def framed(info: CryptoInfo, data: bytes, record: int = 16384) -> tuple[bytearray, int, int, int]:
    """Records framed for the device as DeviceTx frames them: the buffer,
    its first record number, the size of each record but the last, count."""
    sealer = RecordSealer(info)
    batches = TxBatches(sealer, record, batch_records=1 << 20, pool_max=0)
    buf, slots = batches.lay_out(len(data))
    is13 = sealer.is13
    p = 0
    for slot in slots:
        k = len(slot) - 1 if is13 else len(slot)
        slot[:k] = data[p : p + k]
        p += k
    first = sealer.seq
    batches.frame_plaintext(buf, 23, slots)
    rsize = sealer.sealed_size(0) - int(is13) + len(slots[0])
    return buf, first, rsize, len(slots)


def software(info: CryptoInfo, data: bytes) -> bytes:
    return b"".join(bytes(b) for b in SwTx(info).frame(23, data, False))


class _NoBurst(SimNic):
    """sim-nic as a driver without ``xmit_burst`` (``xmit`` per frame)."""

    xmit_burst = None  # type: ignore[assignment]


class Host:
    """A host side for the engine: a store with one framed buffer."""

    def __init__(
        self, info: CryptoInfo, data: bytes, isn: int, lead: int = 0, burst: bool = True
    ) -> None:
        self.isn = isn
        self.lead = lead  # bytes before the start marker (stream offset of the marker)
        self.store = StoreWriter(isn, lead, ring_size=1 << 22, entries=64)
        self.reader = StoreReader(self.store.path)
        self.store.unlink()  # nothing left in /dev/shm whatever happens next
        buf, first, rsize, nrec = framed(info, data)
        self.buf = bytes(buf)
        self.store.append(buf, lead, first, rsize, nrec)
        # The NIC hands each frame to the driver's xmit_burst, or to xmit
        # for a driver without one (the same bytes either way).
        self.nic = Nic(create_device("sim-nic") if burst else NetDevice("nic0", _NoBurst()))
        self.nic.egress(frame((isn - 1) % (1 << 32), b"", flags=0x02))  # the SYN
        ctx = self.nic.device.driver.dev_add(TLS_OFFLOAD_CTX_DIR_TX, info, (isn + lead) % 2**32)
        self.nic.flows[KEY].offload = (ctx, self.reader)

    def send(self, off: int, n: int) -> tuple[bool, bytes]:
        """The framed bytes at stream offset ``off`` (from the marker) as one frame."""
        f = frame((self.isn + self.lead + off) % (1 << 32), self.buf[off : off + n])
        ok = self.nic.egress(f)
        t = parse_tcp(f)
        assert t is not None
        return ok, bytes(f[t.payload : t.end])

    def close(self) -> None:
        self.reader.close()
        self.store.close()


@pytest.mark.parametrize("combo", STREAMABLE, ids=combo_id)
@pytest.mark.parametrize("isn", [0x1234, 2**32 - 70000])
@pytest.mark.parametrize("burst", [True, False], ids=["xmit_burst", "xmit"])
def test_engine_in_order_and_resync_equal_software(
    combo: tuple[int, CipherType], isn: int, burst: bool
) -> None:
    """Frames cut anywhere (mid-header, mid-tag), across the 2^32 wrap; then
    an old frame again (resync from the store): all software TX's bytes."""
    info = random_info(*combo, seq=5)
    data = os.urandom(100_000)
    want = software(info, data)
    h = Host(info, data, isn, burst=burst)
    try:
        got = bytearray()
        for cut in (3, 1000, 16384 + 5, 7, 40000, 2, 65536):
            off = len(got)
            ok, out = h.send(off, cut)
            assert ok
            got += out
        ok, out = h.send(len(got), len(want) - len(got))
        got += out
        assert bytes(got) == want
        for off, n in ((1000, 20000), (17, 3), (40000, 30000), (0, 65000)):
            ok, out = h.send(off, n)
            assert ok and out == want[off : off + n]
        st = h.nic.device.stats
        assert st["tx_tls_ooo"] >= 4 and st["tx_tls_dump_bytes"] > 0
    finally:
        h.close()


@pytest.mark.parametrize("burst", [True, False], ids=["xmit_burst", "xmit"])
def test_engine_drops_a_freed_record_never_plaintext(burst: bool) -> None:
    info = random_info(*STREAMABLE[0])
    data = os.urandom(50_000)
    h = Host(info, data, 777, burst=burst)
    try:
        assert h.send(0, len(h.buf))[0]
        h.store.free(20000)  # TCP acknowledged past the first record
        before = dict(h.nic.counters)
        ok, _ = h.send(100, 1000)  # a late retransmission of freed data
        assert not ok
        assert h.nic.counters["frames_dropped"] == before["frames_dropped"] + 1
        assert h.nic.device.stats["tx_tls_drop_no_sync_data"] == 1
        ok, out = h.send(20000, 1000)  # still held: resynced, encrypted
        assert ok and out == software(info, data)[20000:21000]
    finally:
        h.close()


@pytest.mark.parametrize("burst", [True, False], ids=["xmit_burst", "xmit"])
def test_engine_drops_a_stale_copy_even_where_it_expects_the_next_frame(burst: bool) -> None:
    """TCP takes the ring's pages (``offload.filechunk``): a retransmitted
    clone still queued when its bytes are acknowledged may carry other
    records' plaintext once the host reuses that ring space.  Here the
    clone starts exactly where the driver expects the next in-order frame
    (a resync of the frame before it moved ``expected`` back there), so the
    driver alone would encrypt the new plaintext under the old records'
    nonces.  The NIC drops it (counted as a freed record's frame), and a
    frame of bytes not yet acknowledged still goes through."""
    info = random_info(*STREAMABLE[0])
    data, other = os.urandom(50_000), os.urandom(50_000)
    want = software(info, data)
    h = Host(info, data, 4242, burst=burst)
    try:
        assert h.send(0, 20000)[0] and h.send(20000, len(h.buf) - 20000)[0]
        ok, out = h.send(0, 20000)  # a retransmission: resync, expected back at 20000
        assert ok and out == want[:20000]
        h.store.free(len(h.buf))  # everything acknowledged and freed
        reused = bytes(framed(info, other)[0])  # what the ring's pages hold now
        before = dict(h.nic.counters)
        stale = frame((4242 + 20000) % (1 << 32), reused[20000:50000])
        assert not h.nic.egress(stale)
        assert bytes(stale[-30000:]) == reused[20000:50000]  # untouched: never encrypted
        assert h.nic.counters["frames_dropped"] == before["frames_dropped"] + 1
        assert h.nic.device.stats["tx_tls_drop_no_sync_data"] == 1
    finally:
        h.close()
    h = Host(info, data, 4242, burst=burst)
    try:  # not acknowledged: the same frame is the records' and is encrypted
        assert h.send(0, 20000)[0] and h.send(20000, len(h.buf) - 20000)[0]
        assert h.send(0, 20000)[0]
        h.store.free(19999)
        ok, out = h.send(20000, 30000)
        assert ok and out == want[20000:50000]
        assert h.nic.device.stats["tx_tls_drop_no_sync_data"] == 0
    finally:
        h.close()


def test_engine_passes_bytes_before_the_marker_and_flows_without_context() -> None:
    info = random_info(*STREAMABLE[3])
    data = os.urandom(30_000)
    h = Host(info, data, 5000, lead=300)
    try:
        plain = os.urandom(300)
        f = frame(5000, plain)  # the handshake's bytes, before the start marker
        assert h.nic.egress(f)
        assert bytes(f[-300:]) == plain
        assert h.nic.device.stats["tx_tls_skip_no_sync_data"] == 1
        other = FlowKey(SRC, 40001, DST, 443)
        g = frame(99, plain, key=other)
        assert h.nic.egress(g) and bytes(g[-300:]) == plain
        assert h.nic.counters["frames_passed"] >= 2
    finally:
        h.close()


def test_make_partial_gives_the_pseudo_header_sum() -> None:
    """A frame with a complete checksum is turned into a partial one (the
    receiver fills it in): the field holds the folded pseudo-header sum."""
    f = frame(1, b"x" * 100, needs_csum=False)
    t = parse_tcp(f)
    assert t is not None
    make_partial(f, t)
    flags, _, _, _, start, off = VNET_HDR.unpack_from(f, 0)
    assert flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (start, off) == (20, 16)
    words = struct.unpack(">4H", SRC + DST)
    s = sum(words) + 6 + 120
    s = (s & 0xFFFF) + (s >> 16)
    assert struct.unpack_from(">H", f, t.tcp + 16)[0] == s


def test_parse_ipv6_and_non_tcp() -> None:
    src6, dst6 = (
        socket.inet_pton(socket.AF_INET6, "fd00::1"),
        socket.inet_pton(socket.AF_INET6, "fd00::2"),
    )
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, 20 + 4, 6, 64, src6, dst6)
    tcp = struct.pack(">HHIIBBHHH", 1, 2, 42, 0, 5 << 4, 0x18, 1, 0, 0)
    t = parse_tcp(memoryview(bytes(10) + ip6 + tcp + b"abcd"))
    assert t is not None and t.key == FlowKey(src6, 1, dst6, 2) and t.seq == 42
    assert t.end - t.payload == 4
    udp = bytearray(frame(1, b"zz"))
    udp[10 + 9] = 17
    assert parse_tcp(memoryview(udp)) is None


def test_store_file_is_private_and_unlinked() -> None:
    st = StoreWriter(0, 0, ring_size=1 << 16, entries=4)
    try:
        mode = os.stat(st.path, follow_symlinks=False).st_mode
        assert stat.S_IMODE(mode) == 0o600
        st.unlink()
        assert not os.path.exists(st.path)
    finally:
        st.close()


def test_store_ring_wraps_and_waits_for_acks() -> None:
    """The ring reuses space only after ``free``; full, it asks for room
    (``wait_room``) and fails with ENOBUFS once waiting is pointless."""
    st = StoreWriter(2**32 - 10, 0, ring_size=100_000, entries=8)
    rd = StoreReader(st.path)
    try:
        calls: list[int] = []

        def give_up() -> bool:
            calls.append(1)
            return False  # never frees: give up

        st.wait_room = give_up
        off = 0
        for _ in range(2):
            st.append(bytearray(os.urandom(40_000)), off, 0, 40_000, 1)
            off += 40_000
        with pytest.raises(StoreFull):
            st.append(bytearray(40_000), off, 0, 40_000, 1)
        assert calls == [1]
        st.free(40_000)
        assert rd.get_record((2**32 - 10 + 100) % 2**32) is None  # freed
        rec = rd.get_record((2**32 - 10 + 50_000) % 2**32)  # across the seq wrap
        assert rec is not None and rec.record_sn == 0 and len(rec.data) == 40_000
        view = st.append(bytearray(b"\x07" * 40_000), off, 3, 40_000, 1)  # wraps to 0
        assert view.obj is not None
        rec = rd.get_record((2**32 - 10 + off + 1) % 2**32)
        assert rec is not None and bytes(rec.data) == b"\x07" * 40_000 and rec.record_sn == 3
    finally:
        rd.close()
        st.close()


def test_store_ring_full_all_the_way_round_waits() -> None:
    """A ring wrapped so that its newest buffer ends exactly where the
    oldest live one starts is full, not empty: the next buffer waits for
    acknowledgements instead of being written over unacknowledged records
    (which a resync, or the NIC's read-ahead of a cut record, then read)."""
    st = StoreWriter(500, 0, ring_size=100_000, entries=8)
    rd = StoreReader(st.path)
    st.unlink()
    try:
        st.wait_room = lambda: False  # nothing will be acknowledged: give up
        b = os.urandom(40_000)
        st.append(bytearray(40_000), 0, 0, 40_000, 1)  # ring [0, 40000)
        st.append(bytearray(b), 40_000, 1, 40_000, 1)  # ring [40000, 80000)
        st.free(40_000)
        st.append(bytearray(40_000), 80_000, 2, 40_000, 1)  # wraps: ring [0, 40000)
        with pytest.raises(StoreFull):
            st.append(bytearray(b"\xee" * 10_000), 120_000, 3, 10_000, 1)
        rec = rd.get_record(500 + 40_000)
        assert rec is not None and bytes(rec.data) == b  # untouched
        st.free(80_000)
        st.append(bytearray(10_000), 120_000, 3, 10_000, 1)  # room now
    finally:
        rd.close()
        st.close()


def test_bytes_acked_counts_data_acknowledged() -> None:
    """The offset of tcpi_bytes_acked in struct tcp_info: after the peer
    took N bytes and everything is acknowledged, it moved by exactly N."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    try:
        base = bytes_acked(c)
        c.sendall(b"q" * 123_456)
        got = 0
        while got < 123_456:
            got += len(s.recv(1 << 20))
        for _ in range(1000):
            if outq(c) == 0:
                break
            time.sleep(0.001)
        assert outq(c) == 0
        assert bytes_acked(c) - base == 123_456
    finally:
        for x in (c, s, srv):
            x.close()


def test_control_errors_never_echo_key_material() -> None:
    """A bad ``add`` is refused with a text naming the field, not its value."""
    nic = Nic(create_device("sim-nic"))
    nic.egress(frame(10, b"", flags=0x02))
    secret = random_info(*STREAMABLE[0]).pack().hex()
    bad = secret[:-2]  # one byte short: EINVAL from CryptoInfo.unpack
    answer = nic.handle(
        {
            "op": "add",
            "flow": [SRC.hex(), 40000, DST.hex(), 443],
            "crypto_info": bad,
            "start_seq": 11,
            "store": "/nonexistent",
        }
    )
    assert "error" in answer and bad[:16] not in str(answer) and secret[:16] not in str(answer)
    assert nic.handle({"op": "add", "flow": "junk"}) == {"error": "bad flow in request"}
    assert nic.handle({"op": "nope", "flow": [SRC.hex(), 1, DST.hex(), 2]}) == {
        "error": "unknown request"
    }


@pytest.mark.parametrize("combo", STREAMABLE, ids=combo_id)
def test_ring_regions_keep_their_framing_and_match_fresh_framing(
    combo: tuple[int, CipherType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """sendfile frames straight into the shared ring; full batches recur at
    the same ring places, so their headers are left there and only what
    varies is rewritten (``_reframe``).  Whatever lands in between - a
    short batch copied in over a region, a batch of another size, another
    content type - every batch's ring bytes equal framing from scratch
    (but the tag space, which the NIC fills)."""
    reframed: list[int] = []
    real_reframe = TxBatches._reframe

    def counting(self: TxBatches, out: bytearray, ct: int, slots: list[memoryview]) -> bool:
        done = real_reframe(self, out, ct, slots)
        reframed.append(int(done))
        return done

    monkeypatch.setattr(TxBatches, "_reframe", counting)
    info = random_info(*combo, seq=3)
    record, per_batch = 1000, 8
    sealer, ref_sealer = RecordSealer(info), RecordSealer(info)
    batches = TxBatches(sealer, record, per_batch, pool_max=0)
    full = batches.buffer_size(record * per_batch)
    st = StoreWriter(0x7000, 0, ring_size=full * 4 + full // 2, entries=16)
    st.unlink()
    is13 = sealer.is13
    off = prev_end = 0
    try:
        # (plaintext bytes, into the ring?, content type) for each batch
        plan = [(record * per_batch, True, 23)] * 5
        plan += [(2500, False, 23), (record * per_batch, True, 23), (5500, True, 23)]
        plan += [(record * per_batch, True, 23)] * 4 + [(record * per_batch, True, 21)]
        plan += [(record * per_batch, True, 23)] * 5
        for total, ring, ct in plan:
            data = os.urandom(total)
            first = sealer.seq
            buf: bytearray | memoryview
            if ring:
                region = st.reserve(batches.buffer_size(total))
                buf, slots = region, batches.lay_out_in(total, region)
            else:
                buf, slots = batches.lay_out(total)
            _fill(slots, data, is13)
            batches.frame_plaintext(buf, ct, slots)
            rsize = len(slots[0]) + sealer.sealed_size(0) - int(is13)
            view = st.append(buf, off, first, rsize, len(slots))
            ref = TxBatches(ref_sealer, record, per_batch, pool_max=0)
            ref_buf, ref_slots = ref.lay_out(total)
            _fill(ref_slots, data, is13)
            ref.frame_plaintext(ref_buf, ct, ref_slots)
            assert _untagged(view) == _untagged(ref_buf)
            st.free(prev_end)  # the batch before this one is acknowledged
            prev_end = off
            off += len(view)
        assert st.reserve(full) is st.reserve(full)  # one view per ring place
        assert sum(reframed) >= 4  # recurring places were not framed from scratch
    finally:
        st.close()


def _fill(slots: list[memoryview], data: bytes, is13: bool) -> None:
    """Copy ``data`` into the records' plaintext slots (a TLS 1.3 slot ends
    with the inner-type byte, which framing writes)."""
    p = 0
    for slot in slots:
        k = len(slot) - int(is13)
        slot[:k] = data[p : p + k]
        p += k


def _untagged(buf: bytearray | memoryview) -> bytes:
    """Framed records with their tag space zeroed (what is there before the
    NIC writes the tag is whatever the memory held)."""
    out = bytearray(buf)
    o = 0
    while o < len(out):
        end = o + 5 + int.from_bytes(out[o + 3 : o + 5], "big")
        out[end - 16 : end] = bytes(16)
        o = end
    return bytes(out)


class _Reads:
    """Counts the store's read-ahead (``read_record``) and what it answered,
    optionally freeing the whole store while the driver uses the bytes (a
    record acknowledged and its ring space reused mid-DMA)."""

    def __init__(self, h: Host, tear: bool = False) -> None:
        self.answers: list[bool] = []
        real = h.reader.read_record

        def read(tcp_seq: int, length: int, use: Callable[[memoryview], bool]) -> bool:
            def using(view: memoryview) -> bool:
                ok = use(view)
                if tear:
                    h.store.free(h.lead + len(h.buf))
                return ok

            got = real(tcp_seq, length, using)
            self.answers.append(got)
            return got

        h.reader.read_record = read  # type: ignore[method-assign]


CUT_FRAME = 20_000
"""Frames of this size cut every record of ~16 KiB in its body."""


@pytest.mark.parametrize("combo", STREAMABLE, ids=combo_id)
@pytest.mark.parametrize("burst", [True, False], ids=["xmit_burst", "xmit"])
def test_cut_record_sealed_whole_from_the_store_equals_software(
    combo: tuple[int, CipherType], burst: bool
) -> None:
    """A record cut by a frame's edge is sealed in one call from the host's
    store; its ciphertext goes out across two (or three) frames, byte for
    byte software TX's, and the NIC took the store read for every cut."""
    info = random_info(*combo, seq=9)
    data = os.urandom(100_000)
    want = software(info, data)
    h = Host(info, data, 2**32 - 30_000, burst=burst)  # the 2^32 wrap inside
    reads = _Reads(h)
    try:
        got = bytearray()
        for off in range(0, len(want), CUT_FRAME):
            ok, out = h.send(off, min(CUT_FRAME, len(want) - off))
            assert ok and out == want[off : off + len(out)]
            got += out
        assert bytes(got) == want
        cuts = len(want) // CUT_FRAME  # every frame but the last ends mid-record
        assert reads.answers == [True] * cuts
        st = h.nic.device.stats
        assert st["tx_tls_ooo"] == 0 and st["tx_tls_dump_packets"] == 0
    finally:
        h.close()


@pytest.mark.parametrize("combo", STREAMABLE, ids=combo_id)
@pytest.mark.parametrize(
    "order",
    [
        (0, 1, 1, 2, 3, 4),  # the frame after a cut retransmitted at once
        (0, 0, 1, 2, 3, 4),  # the frame with the cut record's start again
        (0, 2, 1, 3, 4),  # the frame after a cut overtaken (reordered)
        (0, 2, 3, 4, 1),  # ... lost past the NIC, retransmitted last
        (0, 1, 2, 1, 3, 4, 0),  # retransmissions after the cut was finished
    ],
    ids=["retx-next", "retx-cut", "reordered", "lost-next", "late-retx"],
)
def test_frame_after_a_cut_record_out_of_order_equals_software(
    combo: tuple[int, CipherType], order: tuple[int, ...]
) -> None:
    """The ciphertext carried for the next in-order frame is never used for
    another one: a frame out of order resyncs from the store (DUMP work
    from the record's start) and every frame equals software TX's bytes."""
    info = random_info(*combo, seq=2)
    data = os.urandom(90_000)
    want = software(info, data)
    h = Host(info, data, 0x1234)
    try:
        expected, ooo = 0, []
        for i in order:
            off = i * CUT_FRAME
            ok, out = h.send(off, min(CUT_FRAME, len(want) - off))
            assert ok and out == want[off : off + len(out)], f"frame {i}"
            if off != expected:
                ooo.append(i)
            expected = off + len(out)
        st = h.nic.device.stats
        assert st["tx_tls_ooo"] == len(ooo)
        # Every frame but the first starts inside a record: DUMP work to rebuild.
        assert st["tx_tls_dump_packets"] == len([i for i in ooo if i])
    finally:
        h.close()


def test_cut_record_freed_before_or_during_the_read_streams_from_the_frame() -> None:
    """The store no longer holds the cut record (acknowledged, freed) or
    frees it while the NIC reads (the ring space maybe reused): what was
    sealed from it is thrown away, the record streams from the frame's own
    bytes as without a store, still software TX's bytes; a retransmission
    of the freed records is dropped, never sent in plaintext."""
    info = random_info(*STREAMABLE[1], seq=4)
    data = os.urandom(60_000)
    want = software(info, data)
    h = Host(info, data, 99)
    reads = _Reads(h, tear=True)
    try:
        ok, out = h.send(0, CUT_FRAME)  # freed while the NIC read: torn
        assert ok and out == want[:CUT_FRAME]
        assert reads.answers == [False] and h.reader.freed_during_copy == 1
        ok, out = h.send(CUT_FRAME, CUT_FRAME)  # freed already: not read at all
        assert ok and out == want[CUT_FRAME : 2 * CUT_FRAME]
        assert reads.answers == [False, False] and h.reader.freed_during_copy == 1
        ok, out = h.send(2 * CUT_FRAME, len(want) - 2 * CUT_FRAME)
        assert ok and out == want[2 * CUT_FRAME :]
        ok, out = h.send(CUT_FRAME, 100)
        assert not ok and h.nic.counters["frames_dropped"] == 1
        assert h.nic.device.stats["tx_tls_drop_no_sync_data"] == 1
    finally:
        h.close()


def test_store_read_ahead_checks_record_edges_and_liveness() -> None:
    """``read_record`` answers only for a record that starts at the given
    sequence number with the given length, and only while it is held."""
    info = random_info(*STREAMABLE[0])
    data = os.urandom(40_000)
    h = Host(info, data, 2**32 - 5)
    try:
        buf = h.buf
        r0 = 5 + int.from_bytes(buf[3:5], "big")  # the first record's size
        seen: list[bytes] = []

        def use(view: memoryview) -> bool:
            seen.append(bytes(view))
            return True

        rd = h.reader
        seq = (h.isn + r0) % 2**32
        assert rd.read_record(seq, r0, use) and seen == [buf[r0 : 2 * r0]]
        assert not rd.read_record((seq + 1) % 2**32, r0, use)  # not a record's start
        assert not rd.read_record(seq, r0 + 1, use)  # not its length
        last = (len(buf) // r0) * r0
        assert rd.read_record((h.isn + last) % 2**32, len(buf) - last, use)  # the short last one
        assert not rd.read_record(seq, r0, lambda v: False)  # use said no
        h.store.free(len(buf))
        assert not rd.read_record(seq, r0, use) and len(seen) == 2
    finally:
        h.close()


def test_store_closed_under_a_read_ahead_answers_false_never_raises() -> None:
    """The control thread deletes the context (closes the store) while the
    egress thread reads ahead: the read in flight finishes on the mapping
    it holds, every later read answers False (the driver streams from the
    frame), and nothing raises on either thread."""
    info = random_info(*STREAMABLE[0])
    data = os.urandom(40_000)
    h = Host(info, data, 7)
    try:
        rd = h.reader
        r0 = 5 + int.from_bytes(h.buf[3:5], "big")
        seq = (h.isn + r0) % 2**32
        seen: list[bytes] = []

        def closing(view: memoryview) -> bool:
            rd.close()  # the mapping stays while this view is alive
            seen.append(bytes(view))
            return True

        assert rd.read_record(seq, r0, closing) and seen == [h.buf[r0 : 2 * r0]]
        assert not rd.read_record(seq, r0, lambda v: True)
        assert not rd.read_record((seq + r0) % 2**32, r0, lambda v: True)
    finally:
        h.close()
