"""The in-process RX wire: received bytes -> segments -> faults -> NIC -> host.

Linux has no such module: this is the test bench in front of receive
offload, the mirror of ``offload.wiremodel.TxPipeline``.  Both subclass
``offload.wiremodel.SegmentWire``, which holds what the two directions
share - the segmenter, the seeded fault schedule (so a seed draws the same
faults in the same order either way), the hold/release queue and window,
the reassembler and the device CPU meter; what is TX only (the TX device
context, the fallback device, the TX ring, ``transmit``) is out of this
class's reach.  The bytes the host's real socket received are given TCP
sequence numbers (by stream offset, wrapping at 2^32), cut into segments
and put through the faults - reorder, split, duplicate, and ``drop``: the
segment is lost *before* the NIC and reaches it only later, as TCP's
retransmission, out of order.  Each segment that arrives is copied into
its own RX buffer (the NIC writes plaintext over it, so a duplicate keeps
the wire's bytes) and handed to the driver's ``rx``; its mark (the device
context generation, 0 for "as on the wire") travels with the buffer
through reassembly, and the host (``offload.tls_device_rx.DeviceRx``)
gets the bytes in TCP order with the mark of the packet each came in -
TCP keeps the first copy of any byte, whichever it was.

``redirect`` has no meaning on RX here (there is no second device), so it
is never drawn (``SegmentWire._redirects`` stays False).  ``receive``
runs a buffer through and ``drain`` (the retransmission timer) delivers
whatever the faults still hold.

On that general path the NIC's work is batched (``_flush``): the segments
of one ``receive``/``drain`` go through the faults and the reassembler's
bookkeeping first, then through the NIC in their arrival order under one
CPU clock, and the host gets the reassembled bytes afterwards - unless the
stack listens for record headers, when each arrival's bytes reach it
before the NIC sees the next segment, as one arrival at a time would.
The outcome is exactly ``arrive`` per segment (see ``_flush``); what goes
is two ``thread_time`` calls per segment (about 2 of the ~9 us per MSS-1448
segment this path cost), and for a segment no fault touches the RX buffer
copy and the reassembler too (``_send``).
"""

from __future__ import annotations

import time
from typing import cast

from offload.netdev import NetDevice, RxDriver, RxSyncType, Segment
from offload.record import Buffer
from offload.stats import TlsStats
from offload.tcpseq import SeqSpace
from offload.tls_device_rx import DeviceRx
from offload.uapi import CryptoInfo
from offload.wiremodel import MAX_WINDOW, FaultSpec, SegmentWire


class _RxBuf(bytearray):
    """A received packet's buffer, with the mark the NIC gave it."""

    mark = 0


class _Arrival:
    """A segment queued for the NIC (``RxWire._flush``): where it starts and
    the bytes the NIC sees, what carries its mark (its own RX buffer, or
    itself when the NIC works in the received bytes), and the host
    deliveries (stream offset, bytes, what carries their mark) its arrival
    released."""

    __slots__ = ("deliveries", "holder", "mark", "offset", "payload")

    def __init__(self, offset: int, payload: memoryview, holder: _RxBuf | None) -> None:
        self.offset = offset
        self.payload = payload
        self.mark = 0
        self.holder: _RxBuf | _Arrival = holder if holder is not None else self
        self.deliveries: list[tuple[int, memoryview, _RxBuf | _Arrival]] = []


class RxWire(SegmentWire):
    """Socket bytes through faults and the NIC to the RX record layer (an
    ``offload.tls_device_rx.RxPath``)."""

    def __init__(
        self,
        device: NetDevice,
        *,
        space: SeqSpace | None = None,
        mss: int | None = None,
        faults: FaultSpec | None = None,
        window: int = MAX_WINDOW,
        sync_type: RxSyncType = RxSyncType.DRIVER_REQ,
    ) -> None:
        # Not strict: a duplicate may come decrypted and its first copy as
        # on the wire (or the other way round), and TCP keeps either.
        super().__init__(device, space=space, mss=mss, faults=faults, window=window, strict=False)
        self.sync_type = sync_type
        self.rx: DeviceRx | None = None
        self._started = False
        self._arrivals: list[_Arrival] = []  # through the reassembler, not yet the NIC
        self._batching: _Arrival | None = None  # the arrival being put in the reassembler
        self.batch_nic = True
        """``_flush`` (False: ``arrive`` per segment, the reference the batched
        path is tested against)."""

    def offload_rx(self, info: CryptoInfo, stats: TlsStats) -> DeviceRx:
        """``tls_set_device_offload_rx``: the RX device context for TLS_RX
        (raises ``offload.netdev.OffloadRefused`` when the driver declines)."""
        rx = DeviceRx(info, self.device, self.space, stats, self.sync_type)
        self.rx = rx
        return rx

    def receive(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes the socket received, in order, onto the wire."""
        rx = self.rx
        if rx is None:
            raise RuntimeError("RX wire without an RX context")
        if not self._started:
            # The first byte through the wire follows whatever was read
            # before (the handshake library's read-ahead, injected).
            self._started = True
            self.offset = self.reasm.next = rx.fed
        try:
            self._send(data)
        finally:
            self._flush()

    def drain(self) -> None:
        """Deliver everything still held (TCP's retransmission timer)."""
        try:
            self._drain_held()
        finally:
            self._flush()

    @property
    def in_place(self) -> bool:
        """A fault-free wire holding nothing: each segment reaches the NIC in
        order and then the host, so the NIC may work in the host's buffer."""
        return (
            not self.faults.any
            and self.rx is not None
            and (not self._started or self.reasm.next == self.rx.fed)
            and not self.reasm.pending
            and not self._held
        )

    def receive_in_place(self, data: memoryview) -> None:
        """``receive`` on the fault-free wire, in the host's buffer.

        ``data`` is what the socket just read into ``DeviceRx.read_space``.
        Segment by segment, as ``receive`` would send them, the NIC
        decrypts in place (it writes over a packet only when all of it went
        well, and there is no second copy to keep: no duplicates without
        faults) and the segment is handed to the host with its mark - the
        same NIC calls in the same order as the general path, without the
        copy into an RX buffer and the copy into the parser (the mirror of
        the TX wire's ``_send_in_place``).

        Consecutive segments with the same mark reach the host as one
        delivery (one mark range, one record walk call), and the NIC's CPU
        is metered per run of them, not per segment.  That is the general
        path's outcome exactly while the stack is not listening for record
        headers (``RxResync.listening``: no request open, no hint due): the
        host's walk then only follows headers, and a request the NIC opens
        names a sequence number in the segment it is looking at, never in
        one before it.  Once the stack listens, each segment reaches the
        host before the NIC sees the next, as on the general path."""
        rx = self.rx
        if rx is None:
            raise RuntimeError("RX wire without an RX context")
        if not self._started:
            self._started = True
            self.offset = self.reasm.next = rx.fed
        offset = self.offset
        n = len(data)
        self.offset += n
        self.reasm.next += n
        mss = self.segmenter.mss
        self._clock += -(-n // mss)
        ctx = rx.ctx
        if ctx is None:  # no context (refused after a KeyUpdate): nothing marks
            rx.delivered_in_place(data, 0)
            return
        driver = cast(RxDriver, self.device.driver)
        seq_of = self.space.seq
        resync = rx.resync
        gen = rx.generation
        clock = time.thread_time
        nic = 0.0
        start = 0  # data[start:i] went through the NIC with mark ``run``, not yet delivered
        run = -1
        t0 = clock()
        for i in range(0, n, mss):
            seg = data[i : i + mss]
            mark = gen if driver.rx(ctx, Segment(seq_of(offset + i), seg), resync) else 0
            if mark != run or resync.listening:
                if i > start:
                    t1 = clock()
                    nic += t1 - t0
                    rx.delivered_in_place(data[start:i], run)
                    t0 = clock()
                start, run = i, mark
                if resync.listening:
                    # The stack acts on record headers now: this segment
                    # reaches it before the NIC sees the next, as on the
                    # general path.
                    t1 = clock()
                    nic += t1 - t0
                    rx.delivered_in_place(seg, mark)
                    t0 = clock()
                    start, run = i + len(seg), -1
        t1 = clock()
        self.device_seconds += nic + (t1 - t0)
        if start < n:
            rx.delivered_in_place(data[start:], run)

    def arrive(self, offset: int, payload: Buffer, *, reaches_host: bool = True) -> bool:
        """One segment of the received stream (at stream ``offset``) reaches
        the NIC, then the host unless ``reaches_host`` is False (dropped
        after the NIC, a full RX ring: TCP gets it again later).  For tests
        that script the arrival order; returns the NIC's mark."""
        self._started = True
        buf = _RxBuf(payload)
        rx = self.rx
        if rx is not None and rx.ctx is not None:
            driver = cast(RxDriver, self.device.driver)
            t0 = time.thread_time()
            if driver.rx(rx.ctx, Segment(self.space.seq(offset), memoryview(buf)), rx.resync):
                buf.mark = rx.generation
            self.device_seconds += time.thread_time() - t0
        if reaches_host:
            self.reasm.receive(offset, memoryview(buf))
        return bool(buf.mark)

    def arrive_many(self, segments: list[tuple[int, Buffer]]) -> None:
        """The segments of one read (stream offset, payload) reach the NIC in
        this order, and then the host: what ``arrive`` for each in turn
        does, with the NIC's work batched as the faulty wire batches it
        (``_flush``).  For tests that script the arrival order."""
        try:
            for off, payload in segments:
                self._queue(off, payload)
        finally:
            self._flush()

    def _xmit(self, off: int, seg: Segment, redirect: bool, lost: bool = False) -> None:
        self._clock += 1
        if not lost:  # a lost copy never reached the NIC: its retransmission is held
            self._queue(off, seg.payload)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """``SegmentWire._send`` on a faulty wire, with a short way for the
        common segment: one the faults leave alone (drawn as
        ``SegmentWire._faulty`` draws, in the same order: no split, not lost,
        not held, no copy), in order with nothing waiting in the
        reassembler, in a writable buffer (the socket's).  It is the one copy
        of its bytes on the wire, so the NIC may work in the received bytes
        themselves (as on the in-place path) and the host gets them straight
        after: no RX buffer, no reassembly - what the reassembler would do
        with it (deliver it at once) done directly.  The loop is
        ``SegmentWire._send``'s and ``_faulty``'s, inlined (a split segment
        and a faulty piece go to its ``_split`` and ``_act``): at MSS 1448
        the per-segment Python is most of the host's cost under loss."""
        mv = memoryview(data)
        rx = self.rx
        if not self.faults.any or not self.batch_nic or rx is None or rx.ctx is None or mv.readonly:
            super()._send(data)
            return
        offset = self.offset
        n = len(mv)
        self.offset += n
        self._started = True
        mss = self.segmenter.mss
        seq_of = self.space.seq
        f = self.faults
        p_split, p_drop, p_reorder, p_dup = f.split, f.drop, f.reorder, f.dup
        rnd = self.rng.random
        reasm = self.reasm
        held = self._held
        arrivals = self._arrivals
        window = self.window
        for i in range(0, n, mss):
            off = offset + i
            payload = mv[i : i + mss]
            ln = len(payload)
            if ln > 1 and rnd() < p_split:
                self._split(off, Segment(seq_of(off), payload), self.rng.randrange(1, ln))
            else:
                lost = rnd() < p_drop
                reorder = rnd() < p_reorder
                if lost or reorder or off != reasm.next or reasm.pending:
                    self._act(off, Segment(seq_of(off), payload), lost, reorder)
                elif rnd() < p_dup:  # sent, and a second copy held
                    seg = Segment(seq_of(off), payload)
                    self._xmit(off, seg, False)
                    self.counts.dup += 1
                    self._hold(off, seg, redirect=False, delay=self.rng.randint(0, 8))
                else:
                    self._clock += 1
                    reasm.next += ln
                    arrival = _Arrival(off, payload, None)
                    arrival.deliveries.append((off, payload, arrival))
                    arrivals.append(arrival)
            if held and held[0].due <= self._clock:
                self._release(due_only=True)
            if off + ln - reasm.next > window:
                self._release_window(off + ln)

    def _queue(self, off: int, payload: Buffer) -> None:
        """A segment reaches the reassembler now and the NIC at the next
        ``_flush`` (``arrive`` at once without batching or a context)."""
        rx = self.rx
        if not self.batch_nic or rx is None or rx.ctx is None:
            self.arrive(off, payload)
            return
        self._started = True
        buf = _RxBuf(payload)
        arrival = _Arrival(off, memoryview(buf), buf)
        self._arrivals.append(arrival)
        self._batching = arrival
        try:
            self.reasm.receive(off, memoryview(buf))
        finally:
            self._batching = None

    def _flush(self) -> None:
        """The queued arrivals through the NIC, in order, and their bytes to
        the host: the outcome of ``arrive`` for each in turn, exactly.

        The host's side of a delivery reaches the NIC only through the
        stack's resync state, and only while it listens for record headers
        (``RxResync.listening``); otherwise it is bookkeeping the NIC never
        sees (parser, marks).  So while the stack does not listen, the NIC
        runs on one arrival after another under one clock, and the
        deliveries wait.  When a segment makes the stack listen (the NIC
        asked for resync), the deliveries that waited are made *unheard*
        (``DeviceRx.deliver_unheard``: as they were made, when nobody
        listened), then that segment's own, listened to; while the stack
        listens each arrival's deliveries follow its NIC call at once.  The
        reassembler's bookkeeping ran as each segment came (its next byte
        drives the window), so the faults' schedule is unchanged too."""
        arrivals = self._arrivals
        if not arrivals:
            return
        self._arrivals = []
        rx = self.rx
        if rx is None:
            return
        ctx = rx.ctx
        driver = cast(RxDriver, self.device.driver)
        resync = rx.resync
        gen = rx.generation
        clock = time.thread_time
        waiting: list[tuple[memoryview, _RxBuf | _Arrival]] = []  # made unheard, not yet given
        at = rx.fed  # where the waiting bytes start
        listening = resync.listening
        nic = 0.0
        t0 = clock()
        seq_of = self.space.seq
        for a in arrivals:
            if ctx is not None and driver.rx(ctx, Segment(seq_of(a.offset), a.payload), resync):
                a.holder.mark = gen
            if not (listening or resync.listening):
                for _off, mv, holder in a.deliveries:
                    waiting.append((mv, holder))
                continue
            t1 = clock()
            nic += t1 - t0
            if waiting:
                rx.deliver_unheard(at, [(mv, h.mark) for mv, h in waiting])
                waiting = []
            for off, mv, holder in a.deliveries:
                rx.deliver(off, mv, holder.mark)
            at = rx.fed
            listening = resync.listening
            t0 = clock()
        self.device_seconds += nic + (clock() - t0)
        if waiting:
            rx.deliver_unheard(at, [(mv, h.mark) for mv, h in waiting])

    def _delivered(self, data: bytes | bytearray | memoryview) -> None:
        rx = self.rx
        if rx is None:
            return
        mv = memoryview(data)
        offset = self.reasm.next - len(mv)
        owner = mv.obj
        if self._batching is not None:
            self._batching.deliveries.append((offset, mv, cast(_RxBuf, owner)))
            return
        mark = owner.mark if isinstance(owner, _RxBuf) else 0
        rx.deliver(offset, mv, mark)


__all__ = ["RxWire"]
