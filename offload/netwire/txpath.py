"""The host side of the real wire: a TX path into a real kernel TCP socket.

:class:`NetTxPath` is an ``offload.txpath.TxPath`` like the in-process
``offload.wiremodel.TxPipeline``, but what it hands the socket goes into
the kernel's own TCP, which segments (TSO), retransmits and ACKs; the NIC
in its own process (``offload.netwire.nic``) encrypts the frames.

At ``setsockopt(TLS_TX)`` (``offload``), as ``tls_set_device_offload``
does:

1. the socket is quiesced: everything written before is acknowledged
   (``SIOCOUTQ`` 0), so the sequence number of the first offloaded byte is
   the one after the last byte the NIC forwarded, which the NIC tracked
   from the flow's SYN on - the kernel reads ``tcp_sk(sk)->write_seq``;
   from user space the NIC's view is the honest equivalent;
2. a record store is created in shared memory and the context is offered
   to the NIC over the control channel (``tls_dev_add``: 4-tuple,
   crypto_info, start sequence number, the store); a refusal is
   ``OffloadRefused`` and the layer falls back to software TX.

Framed records (plaintext, tag space reserved) are then laid in the
store's ring - sendfile reads the file straight into it and frames there,
other sends are copied in once - and TCP is fed from the ring itself:
``sendfile`` from the ring's file (``offload.filechunk``), so TCP's skbs
hold the ring's pages and no byte is copied on the way to the socket
(``sendmsg`` when the kernel refuses; the report counts both,
``host_tx_sendfile_bytes`` and ``host_tx_copied_bytes``).

Why TCP may hold the ring's pages.  TCP keeps its references to the pages
until it has their bytes acknowledged, and the ring reuses space only after
``tcpi_bytes_acked`` passed it, so whatever TCP itself sends or retransmits
is the records' plaintext (a partly acknowledged skb is trimmed first).
Copies TCP no longer owns can outlive the acknowledgement, though: a
retransmitted clone still queued at the TUN device (or read by the NIC and
not yet handled) when the ACK of the original arrives; its pages may be
rewritten with later records' plaintext before the NIC looks at it.  Such
a frame is a retransmission to the NIC - its bytes were acknowledged, so
the NIC forwarded them before - that starts at an acknowledged byte, and
the NIC drops it, counted (``tx_tls_drop_no_sync_data``), before the
driver sees it (``offload.netwire.nic``; ``StoreReader.acked``).  The
driver alone would not do: a resync of the frame before it sets the
context's expected sequence number to where the stale copy starts, and
the in-order fast path would encrypt whatever the pages hold under the old
records' nonces.  The check runs after the frame was read from the TUN, and
entries are freed in stream order, so a first byte not yet acknowledged
then means every record in the frame was live when its bytes were read:
they were the records' own plaintext.  (``tun_net_xmit`` does not copy the
ring's pages: ``skb_orphan_frags_rx`` copies only zerocopy fragments, and
these are plain page references; the NIC's ``read`` of the TUN is the one
copy, its DMA.)

Records are freed when ``TCP_INFO.tcpi_bytes_acked`` (the userspace view of
the kernel's ``clean_acked``) says TCP has them acknowledged; the store
waits for that when full.  At close the context stays until everything is
acknowledged (a retransmission may still need it), then goes
(``tls_dev_del``).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable, Sequence

from offload.batch import RecordBuf
from offload.filechunk import FileChunk
from offload.netdev import DeviceStats, NetDevice, OffloadRefused, RecordLookup, Segment
from offload.netwire.control import ControlClient, ControlError, flow_of, flow_to_json
from offload.netwire.frames import FlowKey
from offload.netwire.recstore import DEFAULT_RING, StoreWriter
from offload.state import DeviceReport
from offload.tcpseq import SeqSpace
from offload.tls_device import DeviceTx
from offload.txpath import TxChunk
from offload.uapi import TLS_MAX_PAYLOAD_SIZE, CryptoInfo

TCP_INFO_LEN = 232
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
"""``tcpi_bytes_acked`` in ``struct tcp_info`` (include/uapi/linux/tcp.h):
8 bytes of u8 fields, 24 u32 fields, then pacing_rate and max_pacing_rate."""
_OUTQ = struct.Struct("i")
TCP_CLOSE = 7
"""``tcpi_state`` (the first byte of ``struct tcp_info``) of a connection
that is gone (reset): nothing it sent will be acknowledged any more."""
QUIESCE_TIMEOUT = 10.0
CLOSE_LINGER = 10.0
_POLL = 0.0005
_RECORD_ROOM = TLS_MAX_PAYLOAD_SIZE + 256
"""Ring bytes a full record takes at most (payload, header, nonce, tag)."""
MAX_BATCH_RECORDS = 256
"""The largest framing batch on the real wire: 4 MiB of payload."""


def bytes_acked(sock: socket.socket) -> int:
    """``TCP_INFO.tcpi_bytes_acked``: bytes TCP has seen acknowledged."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])


def tcp_state(sock: socket.socket) -> int:
    """``TCP_INFO.tcpi_state`` (``TCP_ESTABLISHED`` 1 ... ``TCP_CLOSE`` 7)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)[0]


def outq(sock: socket.socket) -> int:
    """``SIOCOUTQ``: bytes written but not yet acknowledged."""
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * _OUTQ.size)
    return int(_OUTQ.unpack(buf)[0])


class RemoteNic:
    """The driver ops as the host calls them: forwarded to the NIC process.

    ``xmit`` never runs here: frames reach the NIC through the kernel.
    """

    def __init__(self, control: ControlClient, flow: FlowKey, store: StoreWriter) -> None:
        self.control = control
        self.flow = flow
        self.store = store
        self.stats = DeviceStats()
        self.name = "netwire"

    def dev_add(self, direction: int, info: CryptoInfo, start_tcp_seq: int) -> object:
        try:
            answer = self.control.call(
                "add",
                flow=flow_to_json(self.flow),
                crypto_info=info.pack().hex(),
                start_seq=start_tcp_seq,
                store=self.store.path,
            )
        except ControlError as exc:
            raise OffloadRefused(str(exc)) from None
        finally:
            self.store.unlink()  # mapped by the NIC (or refused): no name left behind
        self.name = str(answer.get("driver", self.name))
        return self.flow

    def dev_del(self, ctx: object) -> None:
        self.control.call("del", flow=flow_to_json(self.flow))

    def dev_resync(self, ctx: object, tcp_seq: int, record_sn: int) -> None:
        """TX resync is the NIC's own business here (it reads the store)."""

    def dev_rekey(self, ctx: object, info: CryptoInfo, start_tcp_seq: int) -> None:
        """The NIC's next key (``SimNic.dev_rekey``); answered before the
        host writes any record under it, so no frame can overtake it."""
        try:
            self.control.call(
                "rekey",
                flow=flow_to_json(self.flow),
                crypto_info=info.pack().hex(),
                start_seq=start_tcp_seq,
            )
        except ControlError as exc:
            raise OffloadRefused(str(exc)) from None

    def dev_rekey_done(self, ctx: object, start_tcp_seq: int) -> None:
        self.control.call("rekey_done", flow=flow_to_json(self.flow), start_seq=start_tcp_seq)

    def xmit(self, ctx: object, segment: Segment, lookup: RecordLookup, out: memoryview) -> bool:
        raise RuntimeError("the NIC runs in its own process: frames reach it through TCP")


class ShmDeviceTx(DeviceTx):
    """``DeviceTx`` whose record store is the shared ring.

    Framing is DeviceTx's own.  sendfile's batches are laid out and framed
    in ring space (``lay_out``); any other framed buffer is copied into the
    ring.  Either way the store's view replaces the buffer in DeviceTx's
    record list, so a framing buffer of ours is free for the next batch at
    once.
    """

    def __init__(
        self,
        info: CryptoInfo,
        device: NetDevice,
        space: SeqSpace,
        start_offset: int,
        max_payload: int,
        store: StoreWriter,
        batch_records: int = DeviceTx.batch_records,
    ) -> None:
        self.batch_records = batch_records
        self.store = store
        self.last: tuple[RecordBuf, memoryview, int] | None = None
        """The buffer framed last, its place in the ring, and its offset in
        the ring's file."""
        self.linger: Callable[[], None] = lambda: None
        """Waits for the last acknowledgement (set by the TX path)."""
        super().__init__(info, device, space, start_offset, max_payload)

    def lay_out(self, total: int) -> tuple[RecordBuf, list[memoryview]]:
        """sendfile's batch laid out in the shared ring itself: the file is
        read into the ring and framed there, so the record store costs no
        copy (the NIC reads the records where TCP sends them from)."""
        nrec = max(1, -(-total // self.max_payload))
        self._check_space(nrec)
        region = self.store.reserve(self.batches.buffer_size(total))
        return region, self.batches.lay_out_in(total, region)

    def _register(self, buf: RecordBuf, content_type: int, slots: list[memoryview]) -> None:
        super()._register(buf, content_type, slots)
        view = self.store.append(
            buf, self._starts[-1], self._sns[-1], self._rsize[-1], self._nrec[-1]
        )
        self._views[-1] = view.toreadonly()
        self.last = (buf, view, self.store.appended_at)

    def clean_acked(self, offset: int) -> None:
        super().clean_acked(offset)
        self.store.free(offset)

    def close(self) -> None:
        """``tls_dev_del`` once TCP acknowledged everything (``linger``,
        bounded): until then a retransmission may still need the context."""
        try:
            self.linger()
            super().close()
        except OSError:  # the control channel or the socket is gone
            pass
        finally:
            self.store.close()
            control = getattr(self.device.driver, "control", None)
            if isinstance(control, ControlClient):
                control.close()


class NetTxPath:
    """Framed records into a real TCP socket; the NIC process encrypts them."""

    def __init__(
        self,
        sock: socket.socket,
        control_path: str,
        *,
        ring_size: int = DEFAULT_RING,
        sendfile: bool = True,
    ) -> None:
        """``ring_size``: the shared record ring; at least two framing
        batches (``DeviceTx.batch_records`` full records), so one can be
        framed while TCP still holds the other unacknowledged.  ``sendfile``:
        TCP takes the ring's pages (False: ``sendmsg`` copies them, as
        when the kernel refuses ``sendfile``)."""
        least = 2 * DeviceTx.batch_records * _RECORD_ROOM
        if ring_size < least:
            raise ValueError(f"ring_size must be at least {least} bytes")
        batch = DeviceTx.batch_records
        while batch < MAX_BATCH_RECORDS and 4 * 2 * batch * _RECORD_ROOM <= ring_size:
            batch *= 2
        self.batch_records = batch
        """Records per framing batch: the largest power of two times
        ``DeviceTx.batch_records`` (at most ``MAX_BATCH_RECORDS``) of which
        four fit the ring, so the ring holds what TCP has not acknowledged
        (up to its 4 MiB send buffer), the batch being framed and the room
        lost when a batch does not fit before the ring's end.  A power of
        two, so the channel's 4 MiB send steps cut into whole batches (a
        short batch would also move every later batch off the ring places
        whose framing is kept).

        Bigger than ``DeviceTx.batch_records``: on this wire a batch costs
        the host a fixed amount of Python (layout, framing bookkeeping, the
        record store entry, an acknowledgement poll, the socket queue) on
        top of its copies, and nothing here re-reads the batch after
        ``sendmsg`` (the NIC encrypts the frames TCP cut from it, in its
        own process), so the in-process wire's reason to stop at 1 MiB
        (cache) does not hold.  Measured with ``tlsctl bench --wire
        netns``: 4 MiB batches cost the host about 0.1 s/GB less than 1 MiB
        ones."""
        self.sock = sock
        self.control_path = control_path
        self.ring_size = ring_size
        self.sendfile = sendfile
        self.offset = 0  # stream bytes handed to TCP through this path
        self.tx: ShmDeviceTx | None = None
        self._control: ControlClient | None = None
        self._acked0 = 0
        self._flow: FlowKey | None = None

    # -- TxPath -----------------------------------------------------------------

    def offload(self, info: CryptoInfo, record_size: int = TLS_MAX_PAYLOAD_SIZE) -> DeviceTx:
        deadline = time.monotonic() + QUIESCE_TIMEOUT
        while outq(self.sock):
            if time.monotonic() > deadline:
                raise OffloadRefused("data written before TLS_TX is never acknowledged")
            time.sleep(_POLL)
        try:
            control = ControlClient(self.control_path)
        except ControlError as exc:
            raise OffloadRefused(str(exc)) from None
        flow = flow_of(self.sock)
        try:
            seen = control.call("flow", flow=flow_to_json(flow))
        except ControlError as exc:
            control.close()
            raise OffloadRefused(str(exc)) from None
        if seen.get("snd_nxt") is None:
            control.close()
            raise OffloadRefused("the NIC has not seen this connection")
        write_seq = int(seen["snd_nxt"])
        space = SeqSpace(write_seq - self.offset)
        store = StoreWriter(space.isn, self.offset, self.ring_size)
        if not self.sendfile:
            store.source.refuse("off")
        store.wait_room = self._wait_room
        self._acked0 = bytes_acked(self.sock)
        device = NetDevice("nic0", RemoteNic(control, flow, store))
        try:
            tx = ShmDeviceTx(
                info, device, space, self.offset, record_size, store, self.batch_records
            )
        except BaseException:
            store.close()
            control.close()
            raise
        self.tx, self._control, self._flow = tx, control, flow
        tx.linger = self._linger
        return tx

    def transmit(self, buf: RecordBuf) -> Sequence[TxChunk]:
        self.offset += len(buf)
        tx = self.tx
        if tx is None or tx.last is None or tx.last[0] is not buf:
            return (buf,)  # before offload: plain bytes, as they are
        _, view, at = tx.last
        tx.last = None
        tx.recycle(buf)  # the ring holds the records now
        self.poll_acks()
        return (FileChunk(view, tx.store.source, at),)

    def drain(self) -> Sequence[TxChunk]:
        return ()

    def written(self, buf: RecordBuf) -> None:
        """Nothing to reuse: TCP is fed from the shared ring."""

    def report(self) -> DeviceReport | None:
        """The NIC's counters and its process's CPU time: NIC-wide, as
        ``ethtool -S`` is (every flow through this NIC counts)."""
        if self._control is None:
            return None
        try:
            s = self._control.call("stats")
        except ControlError:
            return None
        stats = {str(k): int(v) for k, v in s["device"].items()}
        if self.tx is not None:  # the host's side of the ring: sent from its pages or copied
            source = self.tx.store.source
            stats["host_tx_sendfile_bytes"] = source.sent
            stats["host_tx_copied_bytes"] = source.copied
        return DeviceReport(
            name="nic0",
            driver=str(s.get("driver", "")),
            stats=stats,
            device_seconds=float(s.get("cpu_seconds", 0.0)),
        )

    # -- acknowledgements ---------------------------------------------------------

    def poll_acks(self) -> int:
        """Free what TCP says is acknowledged; the acknowledged stream offset."""
        tx = self.tx
        if tx is None:
            return 0
        try:
            acked = tx.start_offset + bytes_acked(self.sock) - self._acked0
        except OSError:
            return tx.acked
        acked = min(acked, tx.next_offset)  # a FIN counts in bytes_acked too
        tx.clean_acked(acked)
        return acked

    def _linger(self) -> None:
        """Until TCP acknowledged everything, at most ``CLOSE_LINGER`` s; at
        once when the connection is gone (the peer reset it: a client that
        closed before our close_notify reached it, which then never is)."""
        tx = self.tx
        deadline = time.monotonic() + CLOSE_LINGER
        while tx is not None and self.poll_acks() < tx.next_offset:
            try:
                if tcp_state(self.sock) == TCP_CLOSE:
                    return
            except OSError:
                return
            if time.monotonic() > deadline:
                return
            time.sleep(_POLL * 4)

    def _wait_room(self) -> bool:
        """The ring is full: wait a little for acknowledgements."""
        before = self.tx.acked if self.tx is not None else 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.poll_acks() > before:
                return True
            time.sleep(_POLL)
        return False


__all__ = ["NetTxPath", "RemoteNic", "ShmDeviceTx", "bytes_acked", "outq", "tcp_state"]
