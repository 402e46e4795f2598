"""The host side of RX offload on the real wire: an ``RxPath`` fed by a real socket.

:class:`NetRxPath` is an ``offload.tls_device_rx.RxPath`` like the
in-process ``offload.rxwire.RxWire``, but the bytes it is given are what
the host's real kernel TCP received, after the NIC process
(``offload.netwire.nic_rx``) decrypted what it could on the way in; the
``decrypted`` marks come beside them through the flow's mark ring
(``offload.netwire.rxring``), keyed by TCP sequence range, and are handed
to ``DeviceRx`` by stream range exactly as the in-process wire hands them
(``deliver`` / ``delivered_in_place``).  The NIC keeps every range in one
state (see ``offload.netwire.nic_rx``), so whichever copy of a range the
kernel kept, the ring's mark for it is the truth; two entries that
disagree about a byte would be a NIC bug and stop the read with EIO rather
than take ciphertext as plaintext or the reverse.

At ``setsockopt(TLS_RX)`` (``offload_rx``), as ``tls_set_device_offload_rx``
does, the context goes to the NIC (``tls_dev_add`` over the control
channel: the peer -> host 4-tuple, crypto_info, the sequence number of the
first byte TLS_RX covers, the resync scheme, the ring).  Linux passes
``copied_seq``; from user space it is the peer's ISN (the NIC saw the SYN)
+ 1 + ``TCP_INFO.tcpi_bytes_received`` - ``SIOCINQ``.  Ciphertext the
handshake library read ahead is given to the layer only after TLS_RX
(``inject_rx``), so the first byte TLS_RX covers lies that far *before*
``copied_seq``: as it is fed the path learns how much (``NetDeviceRx``)
and moves the context back to it (``del`` + ``add`` at the right sequence
number, same generation: the context before it could not have decrypted
anything, its record numbers were off).

The driver's calls on the stack (DRIVER_REQ's request, ASYNC start/end)
come through the ring and go to ``DeviceRx.resync`` before the bytes read
with them are delivered; the stack's answers (``tls_dev_resync``: the
confirmed record number, CORE_NEXT_HINT's hint) go back as control
requests.  The path publishes how far the socket has been read in the ring
(``copied``), which lets the NIC forget what it kept for earlier bytes.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import select
import socket
import struct
import termios
from collections.abc import Callable

from offload.errors import os_error
from offload.netdev import (
    TLS_OFFLOAD_CTX_DIR_RX,
    DeviceStats,
    NetDevice,
    OffloadRefused,
    RecordLookup,
    RxResyncHost,
    RxSyncType,
    Segment,
)
from offload.netwire.control import ControlClient, ControlError, flow_of, flow_to_json
from offload.netwire.frames import FlowKey
from offload.netwire.rxring import RingKind, RingReader
from offload.netwire.txpath import TCP_INFO_LEN
from offload.record import Buffer
from offload.sockwait import ready
from offload.state import DeviceReport
from offload.stats import TlsStats
from offload.sw_recv import READ_CHUNK
from offload.tcpseq import SEQ_MOD, SeqSpace
from offload.tls_device_rx import DeviceRx
from offload.uapi import CryptoInfo

_BYTES_RECEIVED = struct.Struct("=Q")
_BYTES_RECEIVED_AT = 128
"""``tcpi_bytes_received`` in ``struct tcp_info``: right after ``tcpi_bytes_acked``."""
_INQ = struct.Struct("i")
_MARK = int(RingKind.MARK)
CATCH_UP_LIMIT = 16 << 20
"""Bytes read ahead of the reader at most while the stack owes the NIC an answer."""
COALESCE_MIN = 64 << 10
"""A read at least this large means the peer is streaming: the next wake-up waits for more."""
COALESCE_LOWAT = 512 << 10
"""Bytes queued that end the wait at once (``SO_RCVLOWAT`` while waiting)."""
COALESCE_WAIT_MS = 5
"""The longest the wait lasts: the added latency, once per large read."""


def bytes_received(sock: socket.socket) -> int:
    """``TCP_INFO.tcpi_bytes_received``: payload bytes received in order."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    return int(_BYTES_RECEIVED.unpack_from(info, _BYTES_RECEIVED_AT)[0])


def inq(sock: socket.socket) -> int:
    """``SIOCINQ``: bytes received and not yet read."""
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * _INQ.size)
    return int(_INQ.unpack(buf)[0])


def copied_seq(sock: socket.socket, peer_isn: int) -> int:
    """The sequence number of the next byte ``recv`` returns (``copied_seq``),
    from counters read twice around ``SIOCINQ`` until they agree."""
    while True:
        before = bytes_received(sock)
        queued = inq(sock)
        if bytes_received(sock) == before:
            return (peer_isn + 1 + before - queued) % SEQ_MOD


def incoming_flow(sock: socket.socket) -> FlowKey:
    """The 4-tuple of a connected socket's incoming direction (peer -> us)."""
    out = flow_of(sock)
    return FlowKey(out.dst, out.dport, out.src, out.sport)


class RemoteRxNic:
    """The RX driver ops as the host calls them: forwarded to the NIC process.

    ``rx`` never runs here: frames reach the NIC before they reach us."""

    def __init__(self, control: ControlClient, flow: FlowKey, ring: RingReader) -> None:
        self.control = control
        self.flow = flow
        self.ring = ring
        self.stats = DeviceStats()
        self.name = "netwire"
        self.rx_resync = RxSyncType.DRIVER_REQ
        """The scheme of the next context (``DeviceRx`` sets it)."""
        self.gen = 0
        """Contexts the NIC accepted: the generation the current one's marks carry."""
        self.closing: Callable[[], bool] = lambda: True
        """Whether a ``dev_del`` ends the connection's offload (else a
        KeyUpdate's: another context follows)."""
        self._last: tuple[CryptoInfo, RxSyncType] | None = None

    def _call(self, op: str, **fields: object) -> dict[str, object]:
        return self.control.call(op, direction="rx", flow=flow_to_json(self.flow), **fields)

    def _add(self, info: CryptoInfo, start: int, sync: RxSyncType, gen: int) -> None:
        try:
            answer = self._call(
                "add",
                crypto_info=info.pack().hex(),
                start_seq=start,
                sync=sync.name,
                gen=gen,
                ring=self.ring.path,
            )
        except ControlError as exc:
            raise OffloadRefused(str(exc)) from None
        self.ring.unlink()  # mapped by the NIC: no name left behind
        self.name = str(answer.get("driver", self.name))

    def dev_add(self, direction: int, info: CryptoInfo, start_tcp_seq: int) -> object:
        if direction != TLS_OFFLOAD_CTX_DIR_RX:
            raise OffloadRefused("the real wire's RX path adds RX contexts only")
        self._add(info, start_tcp_seq, self.rx_resync, self.gen + 1)
        self.gen += 1
        self._last = (info, self.rx_resync)
        return self.flow

    def restart(self, start_tcp_seq: int) -> None:
        """The current context again, from another sequence number (same
        generation): the read-ahead correction of ``NetRxPath``."""
        if self._last is None:
            return
        info, sync = self._last
        self._call("del")
        self._add(info, start_tcp_seq, sync, self.gen)

    def dev_del(self, ctx: object) -> None:
        try:
            if self.closing():
                self._call("close")  # context, ring and what the NIC kept
                self.control.close()
                self.ring.close()
            else:
                self._call("del")
        except ControlError:
            pass  # the NIC is gone: nothing to delete

    def dev_resync(self, ctx: object, tcp_seq: int, record_sn: int) -> None:
        """``tls_dev_resync`` (RX) across the boundary; the answer may find
        the NIC moved on (it counts a retry or a skip, as a late answer)."""
        with contextlib.suppress(ControlError):
            self._call("resync", seq=tcp_seq, sn=record_sn, gen=self.gen)

    def rx(self, ctx: object, segment: Segment, host: RxResyncHost) -> bool:
        raise RuntimeError("the NIC runs in its own process: frames reach it before the host")

    def rx_sync_type(self, ctx: object) -> RxSyncType:
        return self.rx_resync

    def xmit(self, ctx: object, segment: Segment, lookup: RecordLookup, out: memoryview) -> bool:
        raise RuntimeError("an RX-only device")


class NetDeviceRx(DeviceRx):
    """``DeviceRx`` that tells its path about ciphertext fed before the
    first read (``inject_rx``), which lies before ``copied_seq``."""

    path: NetRxPath | None = None

    def feed(self, data: Buffer) -> None:
        super().feed(data)
        if self.path is not None:
            self.path.reanchor(self)


class NetRxPath:
    """Bytes from a real TCP socket, with the NIC's marks from the ring."""

    def __init__(
        self,
        sock: socket.socket,
        control_path: str,
        sync_type: RxSyncType = RxSyncType.DRIVER_REQ,
    ) -> None:
        self.sock = sock
        self.control_path = control_path
        self.sync_type = sync_type
        self.rx: DeviceRx | None = None
        self.nic: RemoteRxNic | None = None
        self._ring: RingReader | None = None
        self._armed = False
        self._anchored = 0
        """Bytes fed ahead that offset 0 was already moved back for."""
        self._marks: list[tuple[int, int, int]] = []
        """(start, end, generation) by stream offset, sorted by start."""
        self.coalesced = 0
        """Reads after which the path waited for more bytes (``_coalesce``)."""
        self._poll: select.poll | None = None
        self._paused = False
        """The last wait found the peer paused: no waits until it streams again."""
        self._large = 0
        """Reads of ``COALESCE_MIN`` bytes or more in a row."""
        self._all_marked = True
        """The NIC decrypted every byte of the last read (``_marked``)."""

    # -- RxPath ---------------------------------------------------------------------

    def offload_rx(self, info: CryptoInfo, stats: TlsStats) -> DeviceRx:
        try:
            control = ControlClient(self.control_path)
        except ControlError as exc:
            raise OffloadRefused(str(exc)) from None
        flow = incoming_flow(self.sock)
        ring: RingReader | None = None
        try:
            seen = control.call("flow", direction="rx", flow=flow_to_json(flow))
            if seen.get("isn") is None:
                raise OffloadRefused("the NIC has not seen this connection's SYN")
            space = SeqSpace(copied_seq(self.sock, int(str(seen["isn"]))))
            ring = RingReader()
            nic = RemoteRxNic(control, flow, ring)
            rx = NetDeviceRx(info, NetDevice("nic0", nic), space, stats, self.sync_type)
            rx.path = self
        except ControlError as exc:
            self._cleanup(control, ring)
            raise OffloadRefused(str(exc)) from None
        except BaseException:
            self._cleanup(control, ring)
            raise
        nic.closing = lambda: not rx.key_update_pending
        self.rx, self.nic, self._ring = rx, nic, ring
        return rx

    @staticmethod
    def _cleanup(control: ControlClient, ring: RingReader | None) -> None:
        control.close()
        if ring is not None:
            ring.close()

    def receive(self, data: memoryview) -> None:
        self._deliver(data, False)
        self._coalesce(len(data))

    @property
    def in_place(self) -> bool:
        """Always: the NIC already did its work before the kernel had the
        bytes, so the socket reads straight into the record parser."""
        return self.rx is not None

    def receive_in_place(self, data: memoryview) -> None:
        self._deliver(data, True)
        self._coalesce(len(data))

    def _coalesce(self, n: int) -> None:
        """After a large read (the peer streams), wait up to
        ``COALESCE_WAIT_MS`` for ``COALESCE_LOWAT`` bytes to queue before the
        reader goes on, so that its next reads find them together: one
        wake-up and one pass of the receive path per half MiB instead of one
        per frame the NIC forwards (the NIC, slower than the host, forwards
        a 64 KiB frame at a time).  A real NIC does this by coalescing
        interrupts (``ethtool -C rx-usecs``); Linux's TLS reader has no such
        wait, and a wake-up costs it far less than this process's Python.

        It can never hang a peer, and costs a request/response peer at most
        one wait:

        * only after a read of ``COALESCE_MIN`` bytes or more (a small
          request goes to the reader at once), never on a non-blocking
          socket, and only when the NIC decrypted every byte of the read:
          a NIC out of sync is about to ask the stack to confirm a record
          (or waits for a hint), and the answer must come before another
          loss drops its candidate, so the host reads on at once (the ring
          entry that asks is seen only at the next read);
        * bounded by the timeout; a FIN or an error ends the ``poll`` at
          once, whatever the low-water mark;
        * ``SO_RCVLOWAT`` is set only for the ``poll`` and is back to 1
          before the reader reads again;
        * a wait that ends with less than ``COALESCE_MIN`` bytes queued means
          the peer has paused (a request sent, an answer awaited): no more
          waits until the peer streams again - three large reads in a row,
          or one that fills the whole ``READ_CHUNK`` (the socket held more
          than the reader takes at once)."""
        sock = self.sock
        if n < COALESCE_MIN:
            self._large = 0
            return
        if not self._all_marked:
            return  # the NIC is out of sync: read on at once (see above)
        self._large += 1
        if self._paused and (self._large > 2 or n >= READ_CHUNK):
            self._paused = False  # large reads back to back again: the peer streams
        if self._paused or not sock.getblocking():
            return
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(sock, select.POLLIN)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, COALESCE_LOWAT)
            try:
                woke = self._poll.poll(COALESCE_WAIT_MS)
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
            if not woke and inq(sock) < COALESCE_MIN:
                self._paused = True
        except OSError:
            return  # the reader's own next read reports what is wrong
        self.coalesced += 1

    def drain(self) -> object:
        return None

    def report(self) -> DeviceReport | None:
        """None: the real wire's counters and faults are the NIC's, read
        over the control channel (``tlsctl.realwire.WireMeter``, the TX
        path's report)."""
        return None

    # -- marks --------------------------------------------------------------------

    def reanchor(self, rx: DeviceRx) -> None:
        """Bytes fed before the first read (read ahead by the handshake) lie
        before ``copied_seq``: move offset 0, and the NIC's context, back by
        as many.  Called as they are fed (``NetDeviceRx.feed``), so the
        context is right within moments of TLS_RX, and at the first read."""
        if self._armed:
            return
        ahead = rx.fed - self._anchored
        if ahead and self.nic is not None:
            self._anchored = rx.fed
            rx.space.isn = (rx.space.isn - ahead) % SEQ_MOD
            if rx.ctx is not None:
                # Refused: no context on the NIC, the records go through software.
                with contextlib.suppress(ControlError, OffloadRefused):
                    self.nic.restart(rx.space.seq(0))

    def _arm(self, rx: DeviceRx) -> None:
        self.reanchor(rx)
        self._armed = True

    def _take_ring(self, rx: DeviceRx) -> None:
        """Entries the NIC wrote: marks kept by stream range, resync calls
        handed to the stack's resync state now (before the bytes read with
        them are delivered, as the driver made them before the host had
        those bytes)."""
        ring = self._ring
        if ring is None:
            return
        entries = ring.take()
        if not entries:
            return
        fed = rx.fed
        near = rx.space.offset
        gen_now = rx.generation
        marks = self._marks
        for kind, gen, seq, length in entries:
            if kind == _MARK:
                a = near(seq, fed)
                b = a + length
                if b > fed:
                    bisect.insort(marks, (max(a, fed), b, gen))
            elif gen == gen_now:
                res = rx.resync
                if kind == RingKind.RESYNC_REQUEST:
                    res.resync_request(seq)
                elif kind == RingKind.ASYNC_START:
                    res.resync_async_start(seq, length)
                elif kind == RingKind.ASYNC_END:
                    res.resync_async_end(seq)

    def _deliver(self, data: memoryview, in_place: bool) -> None:
        rx = self.rx
        if rx is None:
            raise RuntimeError("RX path without an RX context")
        if not self._armed:
            self._arm(rx)
        self._marked(rx, data, in_place)
        if rx.resync.listening and rx.ctx is not None:
            self._catch_up(rx)

    def _catch_up(self, rx: DeviceRx) -> None:
        """The stack owes the NIC an answer (a request open, a hint due):
        read what the socket holds *now* into the record parser, so the
        record walk meets the headers as they arrive - Linux's strparser
        parses them when data reaches the socket (softirq), not when the
        reader asks, and the NIC's candidate or hint is only good that long.
        No extra copy: those bytes are read into the parser's buffer, where
        the next reads find them.  Bounded by ``CATCH_UP_LIMIT``."""
        total = 0
        while rx.resync.listening and total < CATCH_UP_LIMIT:
            try:
                if not ready(self.sock, select.POLLIN):
                    return
                view = rx.read_space(READ_CHUNK)
                n = self.sock.recv_into(view, READ_CHUNK)
            except OSError:
                return  # the reader's own next read reports it
            if not n:
                return  # EOF: the reader's next read sees it too
            self._marked(rx, view[:n], True)
            total += n

    def _marked(self, rx: DeviceRx, data: memoryview, in_place: bool) -> None:
        """Deliver ``data`` (the next bytes of the stream) in pieces by mark."""
        self._take_ring(rx)
        start = rx.fed
        end = start + len(data)
        pieces: list[tuple[int, int, int]] = []
        cur = start
        marks = self._marks
        i = 0
        while i < len(marks) and marks[i][0] < end:
            a, b, g = marks[i]
            i += 1
            a, b = max(a, start), min(b, end)
            if a < cur:  # another copy's entry for bytes already placed: must agree
                for pa, pb, pg in reversed(pieces):
                    if pb <= a:
                        break
                    if pg != g and pa < b:
                        self._disagree()
            if b <= cur:
                continue
            a = max(a, cur)
            if a > cur:
                pieces.append((cur, a, 0))
            if pieces and pieces[-1][1] == a and pieces[-1][2] == g:
                # the next frame under the same mark: one delivery for the run
                # (as the in-process wire delivers same-mark segments)
                pieces[-1] = (pieces[-1][0], b, g)
            else:
                pieces.append((a, b, g))
            cur = b
        if cur < end:
            pieces.append((cur, end, 0))
        keep = 0
        while keep < len(marks) and marks[keep][1] <= end:
            keep += 1
        if keep:
            del marks[:keep]
        self._all_marked = all(g for _, _, g in pieces)
        for a, b, g in pieces:
            piece = data[a - start : b - start]
            if in_place:
                rx.delivered_in_place(piece, g)
            else:
                rx.deliver(a, piece, g)
        if self._ring is not None:
            self._ring.copied(rx.space.seq(end))

    @staticmethod
    def _disagree() -> None:
        raise os_error(errno.EIO, "RX offload: the NIC's marks for one byte range disagree")


__all__ = ["NetRxPath", "RemoteRxNic", "copied_seq", "incoming_flow"]
