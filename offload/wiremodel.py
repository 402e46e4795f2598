"""The wire between the layer and the NIC, and between the NIC and the peer.

Linux has no such module: this is the test bench around the device path.
Segments from the segmenter pass a seeded, deterministic fault model before
reaching a device - reorder, duplicate, split, drop-and-retransmit,
redirect to a device without the context - and what the devices emit is
reassembled in TCP order before it is written to the real socket.  The
reassembler checks that every duplicate carries exactly the ciphertext
already delivered, and acknowledges delivered bytes to the device context so
records are freed (the ``clean_acked`` hook).

Two classes, because the wire has two directions:

* :class:`SegmentWire` is what both directions share: a stream cut into
  segments by MSS over a ``SeqSpace``, the seeded fault schedule (its
  draws in one fixed order, so a seed names the same faults and bytes on
  either side), the hold/release queue with its window, the reassembler,
  and the device's CPU meter and report.  What a segment meets at the NIC
  (``_xmit``) and where reassembled bytes go (``_delivered``) are each
  direction's own.
* :class:`TxPipeline` is a TX path (``offload.txpath.TxPath``): the caller
  builds one around a device and hands it to ``KTLSSocket(txpath=...)``; the
  socket gives it framed buffers and writes the chunks it returns.  The TX
  device context, the fallback device of ``redirect``, the TX ring and the
  in-place fast path are TX only and live there.  Its RX mirror,
  ``offload.rxwire.RxWire``, is the other subclass.
"""

from __future__ import annotations

import heapq
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from offload.fallback import sw_fallback
from offload.faultspec import parse_faults
from offload.netdev import NetDevice, Segment, xmit_each
from offload.state import DeviceReport
from offload.tcpseq import Segmenter, SeqSpace
from offload.tls_device import DeviceTx
from offload.txpath import Chunk
from offload.uapi import TLS_MAX_PAYLOAD_SIZE, CryptoInfo

FAULT_KINDS = ("reorder", "split", "dup", "drop", "redirect")


MAX_WINDOW = 65535 << 14
"""The largest window TCP can advertise (RFC 7323: 65535 << 14, just under
2^30).  Serial-number arithmetic needs every unacknowledged byte within
2^31 of the oldest; TCP never has more than a window in flight."""


@dataclass(frozen=True)
class FaultSpec:
    """Probabilities per segment for each fault, and the RNG seed.

    Parsed from the CLI form ``reorder=0.02,split=0.05,dup=0.01,drop=0.01,
    redirect=0.01,seed=7``.
    """

    reorder: float = 0.0
    split: float = 0.0
    dup: float = 0.0
    drop: float = 0.0
    redirect: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        return cls(**parse_faults(text, FAULT_KINDS))  # type: ignore[arg-type]

    @property
    def any(self) -> bool:
        return bool(self.reorder or self.split or self.dup or self.drop or self.redirect)

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in FAULT_KINDS if getattr(self, k)]
        return ",".join([*parts, f"seed={self.seed}"])


@dataclass
class FaultCounts:
    """How many of each fault the wire injected (to compare with counters)."""

    reorder: int = 0
    split: int = 0
    dup: int = 0
    drop: int = 0
    redirect: int = 0
    retransmit: int = 0
    delivered_dup_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ReassemblyError(RuntimeError):
    """Two copies of the same TCP bytes differ: a driver produced bad ciphertext."""


class Reassembler:
    """In-order delivery of what the devices emit, with duplicate checking.

    ``check_dups`` keeps a copy of the last ``HISTORY`` delivered bytes so a
    late duplicate can be compared with what went out (only needed when the
    wire duplicates or retransmits; off on the fast path).

    Pieces ahead of a hole wait in a dict by offset, their offsets in a
    heap beside it: the next piece to deliver is found in O(log n), so
    filling a hole behind n pieces costs O(n log n), not O(n^2).
    """

    HISTORY = 1 << 20

    def __init__(
        self,
        start: int,
        deliver: Callable[[Chunk], None],
        check_dups: bool = True,
        strict: bool = True,
    ) -> None:
        self.next = start
        self._strict = strict
        """Two waiting copies of the same bytes that differ are a driver bug
        on TX; on RX (``offload.rxwire``) one may come decrypted and the
        other as on the wire, and TCP keeps either."""
        self._deliver = deliver
        self._ooo: dict[int, Chunk] = {}
        self._ooo_heap: list[int] = []  # the keys of _ooo, smallest first
        self._check = check_dups
        self._hist = bytearray()  # the last delivered bytes, ending at self.next
        self.counts_dup_bytes = 0

    def receive(self, offset: int, data: Chunk) -> None:
        if not data:
            return
        end = offset + len(data)
        if offset < self.next:
            self._check_dup(offset, data[: min(end, self.next) - offset])
            if end <= self.next:
                return
            data = data[self.next - offset :]
            offset = self.next
        if offset > self.next:
            old = self._ooo.get(offset)
            if old is not None:
                common = min(len(old), len(data))
                if self._strict and old[:common] != data[:common]:
                    raise ReassemblyError(f"duplicate at stream offset {offset} differs")
                if len(old) >= len(data):
                    return
            else:
                heapq.heappush(self._ooo_heap, offset)
            self._ooo[offset] = data
            return
        self._push(data)
        heap = self._ooo_heap
        while heap:
            first = heap[0]
            if first > self.next:
                break
            heapq.heappop(heap)
            seg = self._ooo.pop(first)
            if first + len(seg) <= self.next:
                self._check_dup(first, seg)
            else:
                self._check_dup(first, seg[: self.next - first])
                self._push(seg[self.next - first :])

    def _push(self, data: Chunk) -> None:
        if self._check:
            self._hist += data
            if len(self._hist) > 2 * self.HISTORY:  # amortized: trim in big steps
                del self._hist[: len(self._hist) - self.HISTORY]
        self.next += len(data)
        self._deliver(data)

    def _check_dup(self, offset: int, data: Chunk) -> None:
        """Every copy of the same TCP bytes must carry the same ciphertext."""
        self.counts_dup_bytes += len(data)
        if not self._check:
            return
        h_start = self.next - len(self._hist)
        lo, hi = max(offset, h_start), min(offset + len(data), self.next)
        if lo < hi and (self._hist[lo - h_start : hi - h_start] != data[lo - offset : hi - offset]):
            raise ReassemblyError(
                f"duplicate at stream offset {lo} carries other bytes than the first copy"
            )

    @property
    def pending(self) -> int:
        return len(self._ooo)


@dataclass(order=True)
class _Held:
    """A segment the wire holds back: released in (due, order) order, a
    total order (``order`` is unique), so a heap pops exactly the sequence
    sorting the held list before every release gave."""

    due: int
    order: int
    offset: int = field(compare=False)
    segment: Segment = field(compare=False)
    redirect: bool = field(compare=False, default=False)
    lost: bool = field(compare=False, default=False)


class SegmentWire(ABC):
    """Segmenter -> faults -> device -> reassembly: what TX and RX share.

    A stream of bytes (``offset`` is the next stream offset to cut) is cut
    into segments of ``mss`` over ``space``; on a faulty wire each segment
    draws its faults from ``rng`` (seeded by ``faults.seed``) in a fixed
    order - split, then per piece redirect (only where a fallback device
    exists), drop, reorder, its delay, the retransmission's delay, dup, its
    delay - and is sent (``_xmit``) or held.  The draws live here once so
    both directions meet the same schedule for the same seed; ``_split``
    and ``_act`` are the pieces ``offload.rxwire.RxWire._send`` calls from
    its inlined loop.

    Wire time passes only as segments leave, so a wire holding most of them
    (``reorder`` near 1) would otherwise hold the whole stream until the
    drain; like a TCP sender at the end of its window, it releases held
    segments (earliest due first) whenever more than ``window`` bytes are
    unacknowledged.  The window (at most TCP's largest) keeps every
    sequence number the NIC may meet within 2^31 of the acknowledged byte
    the record store reads it next to.

    ``device_seconds`` is the CPU time spent inside the driver (what NIC
    hardware would do), kept apart from host time.  ``strict``: two copies
    of the same bytes must be equal (a driver bug on TX; on RX one copy may
    come decrypted and the other as on the wire, and TCP keeps either).
    """

    _redirects = False
    """Whether ``redirect`` is drawn: only with a second device to redirect
    to (TX's fallback device); RX never draws it."""

    def __init__(
        self,
        device: NetDevice,
        *,
        space: SeqSpace | None = None,
        mss: int | None = None,
        faults: FaultSpec | None = None,
        window: int = MAX_WINDOW,
        strict: bool = True,
    ) -> None:
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW} bytes")
        self.device = device
        self.window = window
        self.space = space or SeqSpace()
        self.segmenter = Segmenter(self.space, mss) if mss else Segmenter(self.space)
        self.faults = faults or FaultSpec()
        self.rng = random.Random(self.faults.seed)
        self.offset = 0  # next stream offset to segment
        # Only duplicates and retransmissions can deliver the same bytes twice.
        dups = strict and (self.faults.dup > 0 or self.faults.drop > 0)
        self.reasm = Reassembler(0, self._delivered, check_dups=dups, strict=strict)
        self._held: list[_Held] = []
        self._clock = 0  # segments processed: the wire's notion of time
        self._order = 0
        self.counts = FaultCounts()
        self.device_seconds = 0.0

    def report(self) -> DeviceReport:
        """The NIC's counters, its driver's CPU time and the faults injected."""
        return DeviceReport(
            name=self.device.name,
            driver=self.device.driver.name,
            stats=self.device.stats.snapshot(),
            device_seconds=self.device_seconds,
            faults=str(self.faults) if self.faults.any else "",
            faults_injected=self.counts.as_dict(),
            fallback_stats=None,
        )

    @abstractmethod
    def _xmit(self, off: int, seg: Segment, redirect: bool, lost: bool = False) -> None:
        """One segment reaches the NIC (``redirect``: the fallback device;
        ``lost``: it vanishes after the NIC, on TX, or before it, on RX)."""

    @abstractmethod
    def _delivered(self, data: Chunk) -> None:
        """The reassembler's next bytes, in TCP order."""

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Cut ``data`` (the stream's next bytes) into segments and put them
        on the wire: straight to the NIC without faults, else through them."""
        mv = memoryview(data)
        offset = self.offset
        self.offset += len(mv)
        if not self.faults.any:  # straight to the NIC
            for off, seg in self.segmenter.segments(offset, mv):
                self._xmit(off, seg, redirect=False)
            return
        for off, seg in self.segmenter.segments(offset, mv):
            self._faulty(off, seg)
            self._release(due_only=True)
            if off + len(seg) - self.reasm.next > self.window:
                self._release_window(off + len(seg))

    def _drain_held(self) -> None:
        """Send everything still held (reordered, pending retransmission):
        TCP's retransmission timer; the stream must then have no hole."""
        self._release(due_only=False)
        if self.reasm.pending:
            raise ReassemblyError("wire drained with a hole in the stream")

    # -- the fault schedule: the draws, in their one order -------------------

    def _faulty(self, off: int, seg: Segment) -> None:
        """One segment through the faults: a split drawn first, then each
        piece's own faults (``_piece``)."""
        rng = self.rng
        if len(seg) > 1 and rng.random() < self.faults.split:
            self._split(off, seg, rng.randrange(1, len(seg)))
        else:
            self._piece(off, seg)

    def _split(self, off: int, seg: Segment, cut: int) -> None:
        """A segment split at ``cut`` (drawn already): each piece's faults
        drawn and acted on in turn."""
        self.counts.split += 1
        self._piece(off, Segment(seg.seq, seg.payload[:cut]))
        self._piece(off + cut, Segment(self.space.seq(off + cut), seg.payload[cut:]))

    def _piece(self, off: int, seg: Segment) -> None:
        """One (piece of a) segment: its redirect, loss and reordering drawn."""
        f, rng = self.faults, self.rng
        redirect = self._redirects and rng.random() < f.redirect
        if redirect:
            self.counts.redirect += 1
        # A lost copy went through the NIC (TX: its state advanced) and then
        # vanished on the wire, or never reached it (RX); TCP sends the same
        # bytes again later.
        lost = rng.random() < f.drop
        self._act(off, seg, lost, rng.random() < f.reorder, redirect)

    def _act(
        self, off: int, seg: Segment, lost: bool, reorder: bool, redirect: bool = False
    ) -> None:
        """The rest of one piece's faults, its loss and reordering drawn:
        held or sent, its retransmission held, and a duplicate drawn."""
        c, rng = self.counts, self.rng
        if reorder:
            c.reorder += 1
            self._hold(off, seg, redirect, rng.randint(1, 4), lost=lost)
        else:
            self._xmit(off, seg, redirect, lost=lost)
        if lost:
            c.drop += 1
            c.retransmit += 1
            self._hold(off, seg, redirect=False, delay=rng.randint(1, 6))
        if rng.random() < self.faults.dup:
            c.dup += 1
            self._hold(off, seg, redirect=False, delay=rng.randint(0, 8))

    # -- the hold/release queue ----------------------------------------------

    def _hold(self, off: int, seg: Segment, redirect: bool, delay: int, lost: bool = False) -> None:
        self._order += 1
        held = _Held(self._clock + delay, self._order, off, seg, redirect, lost)
        heapq.heappush(self._held, held)

    def _release(self, due_only: bool) -> None:
        """Send held segments, earliest due first (all, or those due now).

        A heap: O(log n) per segment.  Sorting the whole held list for
        every release made ``reorder=1`` (everything held until the drain)
        quadratic: 1 MiB at ``--mss 100`` took 40 s."""
        held = self._held
        while held:
            if due_only and held[0].due > self._clock:
                return
            h = heapq.heappop(held)
            self._xmit(h.offset, h.segment, h.redirect, lost=h.lost)

    def _release_window(self, end: int) -> None:
        """The window is full: send held segments, due or not, until the
        bytes before ``end`` not yet acknowledged fit in it again."""
        held = self._held
        while held and end - self.reasm.next > self.window:
            h = heapq.heappop(held)
            self._xmit(h.offset, h.segment, h.redirect, lost=h.lost)


class TxPipeline(SegmentWire):
    """Segmenter -> faults -> device (or fallback) -> reassembly -> socket.

    ``transmit`` takes a framed buffer and returns the ciphertext now ready
    for the socket, in TCP order; the socket says which chunks it wrote
    (``written``) so ring slots and framing buffers are reused.
    Acknowledgements go to the device context as soon as bytes are
    delivered.  What is TX only lives here: the device context
    (``offload``/``attach``), ``redirect`` to ``fallback_device`` (software
    fallback, metered as ``fallback_seconds``), the TX ring, and the
    fault-free in-place path.
    """

    def __init__(
        self,
        device: NetDevice,
        *,
        space: SeqSpace | None = None,
        mss: int | None = None,
        faults: FaultSpec | None = None,
        fallback_device: NetDevice | None = None,
        window: int = MAX_WINDOW,
    ) -> None:
        super().__init__(device, space=space, mss=mss, faults=faults, window=window)
        self.fallback_device = fallback_device
        self._redirects = fallback_device is not None
        self.tx: DeviceTx | None = None
        self._out: list[Chunk] = []  # delivered in TCP order, for the socket
        # Drivers that may encrypt the framing buffer in place (fast path).
        self._in_place = bool(getattr(device.driver, "xmit_in_place", False))
        self._lent: dict[int, bytearray] = {}  # framing buffers given whole to the socket
        self._ring: list[bytearray] = []
        self.fallback_seconds = 0.0

    def attach(self, tx: DeviceTx) -> None:
        self.tx = tx

    # -- the TX path (offload.txpath.TxPath) ----------------------------------

    def offload(self, info: CryptoInfo, record_size: int = TLS_MAX_PAYLOAD_SIZE) -> DeviceTx:
        """``tls_set_device_offload``: the device context for TLS_TX, its
        start marker at the stream's current end (raises
        ``offload.netdev.OffloadRefused`` when the driver declines)."""
        tx = DeviceTx(info, self.device, self.space, self.offset, record_size)
        self.attach(tx)
        return tx

    def transmit(self, data: bytes | bytearray | memoryview) -> list[Chunk]:
        """Put a framed buffer (records, or plain pre-offload bytes) on the
        wire; returns the ciphertext delivered meanwhile, in TCP order."""
        self._send(data)
        out, self._out = self._out, []
        return out

    def drain(self) -> list[Chunk]:
        """Deliver everything still held (reordered, pending retransmission)."""
        self._drain_held()
        out, self._out = self._out, []
        return out

    def report(self) -> DeviceReport:
        """The NIC's counters, its driver's CPU time, the faults injected
        and the fallback device's counters."""
        report = super().report()
        fb = self.fallback_device
        return report if fb is None else replace(report, fallback_stats=fb.stats.snapshot())

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """The fault-free wire with an in-place driver takes the framing
        buffer whole (``_send_in_place``); anything else is segmented."""
        tx = self.tx
        offset = self.offset
        if (
            self._in_place
            and tx is not None
            and not self.faults.any
            and isinstance(data, bytearray)
            and offset >= tx.start_offset
            and offset == self.reasm.next
            and not self.reasm.pending
        ):
            self.offset += len(data)
            self._send_in_place(offset, data, tx)
            return
        super()._send(data)

    def _send_in_place(self, offset: int, buf: bytearray, tx: DeviceTx) -> None:
        """Fault-free wire, in-place driver: the NIC rewrites the framing buffer.

        Every segment reaches the NIC in order and nothing is held, so there
        is nothing to reassemble: the NIC writes ciphertext over the
        plaintext (``out`` is the segment's own view), the whole buffer goes
        to the socket as one piece and is acknowledged at once.  The
        buffer's segments go to the driver as one burst (``xmit_burst``,
        the kernel's ``xmit_more``; per-segment ``xmit`` for a driver
        without it), metered as device time as a whole.  A driver that
        drops a segment stops the burst there; the rest goes down the
        general path (its own TX ring slots), which then reports the hole
        at ``drain``.
        """
        mv = memoryview(buf)
        n = len(mv)
        mss = self.segmenter.mss
        driver = tx.device.driver
        burst = getattr(driver, "xmit_burst", None)  # looked up per buffer, as xmit is
        seq = self.space.seq(offset)
        t0 = time.thread_time()
        if burst is not None:
            sent: int = burst(tx.ctx, seq, mv, mss, tx)
        else:
            sent = xmit_each(driver, tx.ctx, seq, mv, mss, tx)
        self.device_seconds += time.thread_time() - t0
        self._clock += -(-min(sent + 1, n) // mss)  # segments reaching the NIC
        if sent < n:
            if sent:  # a copy: the buffer is still the record store
                self.reasm.receive(offset, bytes(mv[:sent]))
            rest = sent + mss
            for off, seg in self.segmenter.segments(offset + rest, mv[rest:]):
                self._xmit(off, seg, redirect=False)
            return
        if len(self._lent) >= 64:  # the consumer never recycles: stop tracking
            self._lent.clear()
        self._lent[id(buf)] = buf
        self.reasm.receive(offset, mv)

    # -- internals ----------------------------------------------------------

    def _xmit(self, off: int, seg: Segment, redirect: bool, lost: bool = False) -> None:
        self._clock += 1
        tx = self.tx
        n = len(seg)
        if tx is None or off + n <= tx.start_offset:
            self.reasm.receive(off, bytes(seg.payload)) if not lost else None
            return
        out = self._ring_slot(n)
        if redirect and self.fallback_device is not None:
            t0 = time.thread_time()
            ok = sw_fallback(tx.key_at, seg, tx, memoryview(out))
            self.fallback_seconds += time.thread_time() - t0
            if ok:
                st = self.fallback_device.stats
                st.inc("tx_tls_sw_fallback_packets")
                st.inc("tx_tls_sw_fallback_bytes", n)
        else:
            # CPU time, not wall time: with parallel streams a process may
            # wait for a core inside xmit, and that is not the device's work.
            t0 = time.thread_time()
            ok = tx.device.driver.xmit(tx.ctx, seg, tx, memoryview(out))
            self.device_seconds += time.thread_time() - t0
        if ok and not lost:
            self.reasm.receive(off, out)
        else:
            self.written(out)

    def _ring_slot(self, n: int) -> bytearray:
        """A TX ring buffer for an n-byte segment (reused: no zeroing per packet)."""
        if n == self.segmenter.mss and self._ring:
            return self._ring.pop()
        return bytearray(n)

    def written(self, buf: object) -> None:
        """The socket wrote ``buf``: its ring slot can carry another segment,
        or (a framing buffer sent in place) it goes back to the device
        context for the next batch."""
        if self._lent.pop(id(buf), None) is buf:
            if self.tx is not None and isinstance(buf, bytearray):
                self.tx.recycle(buf)
            return
        if isinstance(buf, bytearray) and len(buf) == self.segmenter.mss and len(self._ring) < 64:
            self._ring.append(buf)

    def _delivered(self, data: Chunk) -> None:
        self._out.append(data)
        if self.tx is not None:
            self.tx.clean_acked(self.reasm.next)
