"""The NIC process's receive direction: RX offload on the real wire.

Frames from the peer towards the host (the ``back`` direction of
``offload.netwire.nic``) of a flow with an RX context go through the
driver's RX engine (``Driver.rx``: the very ``offload.drivers.simnic_rx``
code the in-process wire uses) before the NIC writes them to the host's
TUN; where the engine decrypted, a ``MARK`` entry goes into the flow's mark
ring (``offload.netwire.rxring``) first, and the driver's resync calls on
the stack (``RxResyncHost``) go into the same ring.  The host's half is
``offload.netwire.rxpath.NetRxPath``.  Faults in this direction act
*before* the NIC (:func:`forward_rx`), so the peer kernel's
retransmissions reach the RX engine and drive resync.

Why marks by sequence range are sound here (the hard part).  On a real
wire the same TCP range can reach the NIC more than once - the peer's
retransmission after an RTO or a lost ACK, a duplicate, a retransmission
that coalesces old and new bytes - and the host's kernel, not the NIC,
decides which copy it keeps (the first copy of an equal range in its
out-of-order queue, a later larger one over smaller ones, none of them
after pruning under memory pressure).  A mark is only right if every copy
of a byte the host could keep says the same thing as the mark.  So the NIC
keeps every byte it forwarded *in one state*:

* each byte goes through the RX engine at most once - the first time a
  frame carries it past ``high``, the furthest byte the NIC has seen on
  the flow; the bytes of a frame before ``high`` (a duplicate, a
  retransmission, the old part of a coalesced one) never do, and the
  engine gets only the new part, at its own sequence number;
* what the engine decrypted is kept (its plaintext and generation) until
  the host has read past it; any later copy of such a range goes out as
  that same plaintext with a ``MARK`` entry of the same generation;
* what the engine passed as it came (out of sync, bad tag, no context)
  goes out as it came in every later copy, with no entry.

So every copy of a range carries the same bytes and the same mark, and the
host may take the ring's marks as a union keyed by sequence number,
whatever copy its kernel kept.  The alternative - an entry per copy with
its original ciphertext, the host deciding by comparing the bytes it got -
costs the host a comparison of every byte in the ring and puts ciphertext
through shared memory; this costs the NIC a copy of what it decrypted
(its memory, its CPU, as a NIC's on-board buffer would).

What the NIC kept goes when the host has *read* past it (the ring's
``copied``): the host's kernel has those bytes below ``rcv_nxt`` and
discards the old part of any later copy, so what that copy carries there
can no longer reach the host.  A frame the NIC cannot describe fully (the
ring too full for its entries) is dropped before the engine sees it, as a
NIC without RX completion room drops: the peer sends it again.

Bytes the NIC forwarded before the context was added are ``high`` too:
the context starts where the host's socket was read up to (Linux passes
``copied_seq``), and if the NIC had already forwarded more, those bytes
stay as they came and the engine starts behind a gap, out of sync, until a
resync - exactly as a NIC whose context arrives late.

Linux has no such process: it stands in for the ConnectX's RX path.
"""

from __future__ import annotations

import bisect
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offload.netdev import (
    TLS_OFFLOAD_CTX_DIR_RX,
    NetDevice,
    OffloadRefused,
    RxDriver,
    RxSyncType,
    Segment,
)
from offload.netwire.faults import FaultStage
from offload.netwire.forwarding import forward
from offload.netwire.frames import TCP_SYN, FlowKey, TcpFrame, make_partial, parse_tcp
from offload.netwire.rxring import RingKind, RingWriter
from offload.tcpseq import seq_diff
from offload.uapi import CryptoInfo

_MASK = 0xFFFFFFFF
_MARK = int(RingKind.MARK)
RING_MARGIN = 8
"""Ring entries kept free beyond a frame's marks: the driver's resync calls
(at most two per packet) never find the ring full."""

RESCAN_RECORDS = 512
"""Records a DRIVER_REQ candidate is followed unconfirmed on this wire (the
in-process NIC gives up after ``simnic_rx.RESCAN_RECORDS``): the stack's
confirmation comes when the host's record walk meets the header, which
here is when the host has *read* that far - behind the NIC by whatever
its socket queue holds - plus a control round trip."""

RX_NIC_COUNTERS = (
    "rx_frames",  # peer -> host frames of flows with an RX ring
    "rx_frames_decrypted",  # ... the engine decrypted (new bytes)
    "rx_frames_replayed",  # ... carrying bytes decrypted before, sent decrypted again
    "rx_bytes_replayed",
    "rx_ring_full",  # dropped before the engine: no room for their entries
)


class _RingHost:
    """``RxResyncHost`` across the process boundary: the driver's calls
    become ring entries of the context's generation."""

    def __init__(self, ring: RingWriter, gen: int) -> None:
        self.ring = ring
        self.gen = gen

    def resync_request(self, tcp_seq: int) -> None:
        self.ring.append(RingKind.RESYNC_REQUEST, self.gen, tcp_seq & _MASK, 0)

    def resync_async_start(self, tcp_seq: int, length: int) -> None:
        self.ring.append(RingKind.ASYNC_START, self.gen, tcp_seq & _MASK, length)

    def resync_async_end(self, tcp_seq: int) -> None:
        self.ring.append(RingKind.ASYNC_END, self.gen, tcp_seq & _MASK, 0)


@dataclass
class RxFlow:
    """What the NIC knows of one peer -> host direction."""

    isn: int | None = None
    high: int | None = None
    """Unwrapped sequence position just past the furthest byte seen."""
    ring: RingWriter | None = None
    ctx: object | None = None
    gen: int = 0
    host: _RingHost | None = None
    starts: list[int] = field(default_factory=list)
    """Unwrapped start of each kept decrypted range (sorted)."""
    kept: list[tuple[bytes, int]] = field(default_factory=list)
    """Each kept range's plaintext and generation."""
    owner: int = 0
    """The control connection that added the RX context."""

    def pos(self, seq: int) -> int:
        """The unwrapped position of ``seq``, near ``high`` (serial arithmetic)."""
        high = self.high if self.high is not None else seq
        return high + seq_diff(seq, high & _MASK)


class NicRx:
    """The RX offload engine of the NIC process (everything but the fds)."""

    def __init__(self, device: NetDevice) -> None:
        self.device = device
        self.flows: dict[FlowKey, RxFlow] = {}
        self.counters = dict.fromkeys(RX_NIC_COUNTERS, 0)
        self.lock = threading.Lock()
        """Held while a frame of a flow with a ring is processed and while
        a control request changes a flow's RX state."""

    # -- frames -------------------------------------------------------------------

    def ingress(self, frame: memoryview) -> bool:
        """A frame from the peer towards the host (writable); False drops it."""
        t = parse_tcp(frame)
        if t is None:
            return True
        fl = self.flows.get(t.key)
        if fl is None:
            fl = self.flows[t.key] = RxFlow()
        if t.flags & TCP_SYN:
            fl.isn = t.seq
            fl.high = t.seq + 1
            return True
        n = t.end - t.payload
        if not n:
            return True
        if fl.ring is None:
            end = fl.pos(t.seq) + n
            if fl.high is None or end > fl.high:
                fl.high = end
            return True
        with self.lock:
            return self._frame(fl, frame, t, n)

    def _frame(self, fl: RxFlow, frame: memoryview, t: TcpFrame, n: int) -> bool:
        ring = fl.ring
        if ring is None:  # closed since ``ingress`` looked
            return True
        c = self.counters
        c["rx_frames"] += 1
        self._forget(fl, ring)
        pos = fl.pos(t.seq)
        end = pos + n
        high = fl.high if fl.high is not None else pos
        old = min(n, max(0, high - pos))  # bytes of this frame the NIC saw before
        first, last = self._kept_span(fl, pos, pos + old) if old else (0, 0)
        if ring.room() < (last - first) + 1 + RING_MARGIN:
            c["rx_ring_full"] += 1
            return False
        payload = frame[t.payload : t.end]
        changed = False
        if last > first:
            changed = True
            self._replay(fl, ring, pos, payload[:old], first, last)
        if end > high:
            npos = pos + old
            new = payload[old:]
            if fl.ctx is not None and fl.host is not None:
                driver: Any = self.device.driver
                if driver.rx(fl.ctx, Segment(npos & _MASK, new), fl.host):
                    ring.append(_MARK, fl.gen, npos & _MASK, len(new))
                    fl.starts.append(npos)
                    fl.kept.append((bytes(new), fl.gen))
                    c["rx_frames_decrypted"] += 1
                    changed = True
            fl.high = end
        if changed:
            make_partial(frame, t)
        return True

    @staticmethod
    def _kept_span(fl: RxFlow, a: int, b: int) -> tuple[int, int]:
        """Indexes ``[first, last)`` of the kept ranges overlapping ``[a, b)``."""
        starts = fl.starts
        first = max(0, bisect.bisect_right(starts, a) - 1)
        if first < len(starts) and starts[first] + len(fl.kept[first][0]) <= a:
            first += 1
        last = bisect.bisect_left(starts, b, lo=first)
        return first, last

    def _replay(
        self, fl: RxFlow, ring: RingWriter, pos: int, data: memoryview, first: int, last: int
    ) -> None:
        """Bytes decrypted before go out decrypted again, with the same marks."""
        end = pos + len(data)
        replayed = 0
        for i in range(first, last):
            cs = fl.starts[i]
            plain, gen = fl.kept[i]
            a, b = max(cs, pos), min(cs + len(plain), end)
            if a < b:
                data[a - pos : b - pos] = plain[a - cs : b - cs]
                ring.append(_MARK, gen, a & _MASK, b - a)
                replayed += b - a
        self.counters["rx_frames_replayed"] += 1
        self.counters["rx_bytes_replayed"] += replayed

    @staticmethod
    def _forget(fl: RxFlow, ring: RingWriter) -> None:
        """Drop the kept ranges wholly before what the host has read."""
        copied = ring.copied()
        if copied is None or not fl.starts:
            return
        cpos = fl.pos(copied)
        i = 0
        starts, kept = fl.starts, fl.kept
        while i < len(starts) and starts[i] + len(kept[i][0]) <= cpos:
            i += 1
        if i:
            del starts[:i], kept[:i]

    # -- control requests (the caller holds the NIC's control lock) -------------------

    def handle(self, op: str, key: FlowKey, req: dict[str, Any], owner: int = 0) -> dict[str, Any]:
        if op == "flow":
            fl = self.flows.get(key)
            if fl is None:
                return {"isn": None, "rcv_nxt": None, "gen": 0, "ctx": False}
            return {
                "isn": fl.isn,
                "rcv_nxt": None if fl.high is None else fl.high & _MASK,
                "gen": fl.gen,
                "ctx": fl.ctx is not None,
            }
        with self.lock:
            if op == "add":
                return self._add(key, req, owner)
            if op == "del":
                return self._del(key)
            if op == "resync":
                return self._resync(key, req)
            if op == "close":
                return self._close(key)
        return {"error": "unknown RX request"}

    def _add(self, key: FlowKey, req: dict[str, Any], owner: int) -> dict[str, Any]:
        """``tls_dev_add`` for ``TLS_OFFLOAD_CTX_DIR_RX``: the context, the
        scheme, the generation its marks carry, the ring (first add only)."""
        fl = self.flows.get(key)
        if fl is None or fl.high is None:
            return {"error": "the NIC has not seen this flow"}
        if fl.ctx is not None:
            return {"error": "the flow already has an RX context"}
        driver = self.device.driver
        if not isinstance(driver, RxDriver):
            return {"error": f"offload refused: {driver.name} does not offload RX"}
        try:
            info = CryptoInfo.unpack(bytes.fromhex(str(req["crypto_info"])))
            start = int(req["start_seq"]) & _MASK
            sync = RxSyncType[str(req.get("sync", "DRIVER_REQ"))]
            gen = int(req["gen"])
            ring = fl.ring if fl.ring is not None else RingWriter(str(req["ring"]))
        except (KeyError, ValueError, OSError):
            return {"error": "bad RX add request (crypto_info, start_seq, sync, gen or ring)"}
        if hasattr(driver, "rx_resync"):
            driver.rx_resync = sync
        try:
            ctx = self.device.driver.dev_add(TLS_OFFLOAD_CTX_DIR_RX, info, start)
        except OffloadRefused as exc:
            if fl.ring is None:
                ring.close()
            return {"error": f"offload refused: {exc}"}
        if hasattr(ctx, "rescan_records"):
            ctx.rescan_records = RESCAN_RECORDS
        fl.ring, fl.ctx, fl.gen, fl.owner = ring, ctx, gen, owner
        fl.host = _RingHost(ring, gen)
        return {"driver": self.device.driver.name}

    def _del(self, key: FlowKey) -> dict[str, Any]:
        """``tls_dev_del``: the context goes; what it decrypted is still kept
        (a later copy of those bytes must go out as the first did)."""
        fl = self.flows.get(key)
        if fl is not None and fl.ctx is not None:
            ctx, fl.ctx, fl.host = fl.ctx, None, None
            self.device.driver.dev_del(ctx)
        return {}

    def _resync(self, key: FlowKey, req: dict[str, Any]) -> dict[str, Any]:
        """``tls_dev_resync`` (RX): the record at ``seq`` is number ``sn``;
        ignored for a generation no longer installed."""
        fl = self.flows.get(key)
        try:
            seq, sn, gen = int(req["seq"]) & _MASK, int(req["sn"]), int(req["gen"])
        except (KeyError, ValueError):
            return {"error": "bad RX resync request (seq, sn, gen)"}
        if fl is not None and fl.ctx is not None and fl.gen == gen:
            self.device.driver.dev_resync(fl.ctx, seq, sn)
        return {}

    def _close(self, key: FlowKey) -> dict[str, Any]:
        """The host's socket is closed: context, ring and kept bytes go."""
        self._del(key)
        fl = self.flows.pop(key, None)
        if fl is not None and fl.ring is not None:
            ring, fl.ring = fl.ring, None
            ring.close()
            fl.starts.clear()
            fl.kept.clear()
        return {}

    def disconnected(self, owner: int) -> None:
        """The host connection ``owner`` closed: the RX state it added goes."""
        with self.lock:
            for key in [
                k for k, fl in self.flows.items() if fl.ring is not None and fl.owner == owner
            ]:
                self._close(key)


def forward_rx(
    src: int, dst: int, process: Callable[[memoryview], bool], stage: FaultStage | None
) -> None:
    """Move frames from the peer's TUN to the host's: the faults first (what
    the wire does before the NIC), then the NIC (``process``), then the TUN.
    A frame the RX engine fails on is dropped (the peer sends it again),
    never the forwarding thread with it."""
    failed: list[Exception] = []

    def nic(frame: memoryview) -> bool:
        try:
            return process(frame)
        except Exception as exc:  # a NIC bug: say so once, keep forwarding
            if not failed:
                failed.append(exc)
                print(f"nic: RX engine failed on a frame: {exc!r}", file=sys.stderr, flush=True)
            return False

    forward(src, dst, nic, stage, faults_first=True)


__all__ = ["RX_NIC_COUNTERS", "NicRx", "RxFlow", "forward_rx"]
