"""The receive side of the software backend (``tls_sw_recvmsg``).

:class:`SwReceiver` reads ciphertext from the socket into the record
parser, has the RX context (``offload.tls_sw.SwRx``) decrypt it, and serves
``recvmsg`` with Linux's rules: records of one type per call, the type in a
``TLS_GET_RECORD_TYPE`` cmsg, a control record never read without room for
it (EIO, kept), records decrypted before an error delivered first, a bad
tag sticky, a framing error reported once and then only EOF
(``offload.state.RxState``).
"""

from __future__ import annotations

import errno
import select
import socket
import threading

from offload.errors import StreamAbort, os_error
from offload.netdev import OffloadRefused
from offload.record import Buffer
from offload.sockopt import DATA
from offload.sockwait import may_block, ready
from offload.state import RxState, TlsConf
from offload.stats import TlsStats
from offload.tls_device_rx import DeviceRx, RxPath
from offload.tls_sw import RxRecord, SwRx
from offload.uapi import SOL_TLS, TLS_GET_RECORD_TYPE, ContentType, CryptoInfo

AncData = list[tuple[int, int, bytes]]

READ_CHUNK = 256 * 1024
"""Bytes asked of the socket per read (straight into the parser's buffer)."""

CMSG_TYPE_LEN = socket.CMSG_LEN(1)
_HANDSHAKE = int(ContentType.HANDSHAKE)


class SwReceiver:
    """One connection's RX in this process."""

    def __init__(self, sock: socket.socket, stats: TlsStats, rxpath: RxPath | None = None) -> None:
        self._sock = sock
        self._stats = stats
        self.rxpath = rxpath
        """A simulated NIC in front of RX (``offload.tls_device_rx``), or None."""
        self.offload_refused = ""
        """Why the device declined TLS_RX (empty if it did not)."""
        self.lock = threading.RLock()
        self.rx: SwRx | None = None
        self.conf = TlsConf.BASE
        self.bytes_received = 0
        self.eof = False  # the peer's FIN was read
        self._state = RxState.OK  # OK, ERROR, ABORTED or DEAD (the rest is derived)
        self._error: OSError | None = None
        self._readbuf: bytearray | None = None  # reused by reads through a faulty RX wire

    # -- configuration ----------------------------------------------------------

    @property
    def info(self) -> CryptoInfo | None:
        return self.rx.info if self.rx is not None else None

    def live_info(self, locked: bool = True) -> CryptoInfo | None:
        """The crypto_info as getsockopt shows it; ``locked=False`` reads
        without the RX lock (a snapshot never waits for a blocked reader)."""
        if not locked:
            rx = self.rx
            return rx.live_info() if rx is not None else None
        with self.lock:
            return self.rx.live_info() if self.rx is not None else None

    def set_key(self, info: CryptoInfo) -> None:
        """TLS_RX, checked by the option codec: install, or the next key
        after a KeyUpdate (ends the EKEYEXPIRED pause)."""
        with self.lock:
            if self.rx is not None:
                self.rx.rekey(info)
                return
            if self.rxpath is not None:
                try:
                    self.rx = self.rxpath.offload_rx(info, self._stats)
                except OffloadRefused as exc:
                    self.offload_refused = str(exc)
                else:
                    # tls_set_device_offload_rx: TLS_HW, counted as a device context.
                    self.conf = TlsConf.DEVICE
                    self._stats.inc("TlsRxDevice")
                    self._stats.inc("TlsCurrRxDevice")
                    return
            self.rx = SwRx(info)
            self.conf = TlsConf.SW
            self._stats.inc("TlsRxSw")
            self._stats.inc("TlsCurrRxSw")

    @property
    def no_pad(self) -> bool:
        return self.rx is not None and self.rx.no_pad

    def set_no_pad(self, value: bool) -> None:
        if self.rx is not None:
            self.rx.no_pad = value

    @property
    def state(self) -> RxState:
        """What the next read meets once queued records are delivered."""
        st = self._state
        if st is RxState.DEAD:
            return RxState.EOF if self.eof else st
        if st is not RxState.OK:
            return st
        if self.rx is not None and self.rx.key_update_pending:
            return RxState.PAUSED
        return RxState.EOF if self.eof else st

    @property
    def truncated(self) -> bool:
        """True when the peer closed in the middle of a record."""
        return self.eof and self.rx is not None and self.rx.parser.buffered > 0

    def close(self) -> None:
        if self.conf is TlsConf.SW:
            self._stats.inc("TlsCurrRxSw", -1)
        elif self.conf is TlsConf.DEVICE:
            self._stats.inc("TlsCurrRxDevice", -1)
            if isinstance(self.rx, DeviceRx):
                self.rx.close()
        self.conf = TlsConf.BASE

    def inject_plaintext(self, data: Buffer, content_type: int) -> None:
        """Plaintext the handshake library already decrypted, delivered first."""
        if self.rx is None:
            raise os_error(errno.EBUSY, "TLS_RX not set")
        with self.lock:
            self.rx.ready.appendleft(RxRecord(content_type, memoryview(bytes(data))))

    def inject(self, ciphertext: Buffer) -> None:
        """Ciphertext read from the socket before TLS_RX was set."""
        if self.rx is None:
            raise os_error(errno.EBUSY, "TLS_RX not set")
        self.rx.feed(ciphertext)

    # -- reading ----------------------------------------------------------------

    def receive(
        self,
        out: list[bytes] | None,
        dst: memoryview | None,
        bufsize: int,
        ancbufsize: int,
        flags: int,
    ) -> tuple[int, AncData, int]:
        """The recvmsg loop, delivering into ``dst`` or appending to ``out``
        (``flags`` checked by the caller: ``sockopt.check_recv_flags``).

        Data records are concatenated up to ``bufsize`` (without blocking for
        more once something was read unless MSG_WAITALL); a control record
        is returned alone.  The flags returned are Linux's (6.1 and 7.3):
        MSG_EOR when the read delivered the end of a record, MSG_CTRUNC when
        the record type's cmsg found no room (no ancillary buffer at all, or
        one shorter than CMSG_LEN(1): a data read goes on, a control record
        is refused with EIO).
        """
        block = may_block(self._sock, flags)
        peek = bool(flags & socket.MSG_PEEK)
        waitall = bool(flags & socket.MSG_WAITALL)
        with self.lock:
            rx = self.rx
            if rx is None:
                raise os_error(errno.EBUSY, "TLS_RX not set")
            # Records decrypted before an error (e.g. by MSG_PEEK) are still
            # delivered first, as Linux serves its rx_list before sk_err.
            if not any(r.remaining for r in rx.ready):
                st = self._state
                if st is RxState.ERROR:
                    raise self._stopped_by()
                if st is RxState.ABORTED:
                    self._state = RxState.DEAD
                    raise self._stopped_by()
                if st is RxState.DEAD:
                    self._dead_recv(block)
                    return 0, [], 0
            copied = 0
            record_type: int | None = None
            anc: AncData = []
            msg_flags = 0
            ended = False  # the end of a record was delivered (MSG_EOR)
            idx = 0  # index into rx.ready (advances only when peeking)
            direct = dst if not peek else None
            while copied < bufsize:
                try:
                    rec = self._record_at(
                        rx,
                        idx,
                        block and (copied == 0 or waitall),
                        None
                        if direct is None or record_type not in (None, DATA)
                        else direct[copied:bufsize],
                    )
                except OSError:
                    if record_type is None:
                        if self._state is RxState.ABORTED:
                            self._state = RxState.DEAD
                        raise
                    break  # deliver what was read; the error comes with the next call
                if rec is None:
                    if record_type is None:
                        if rx.key_update_pending and idx >= len(rx.ready):
                            raise os_error(errno.EKEYEXPIRED, "waiting for the next RX key")
                        if self.eof:
                            return 0, [], msg_flags
                        raise os_error(errno.EAGAIN, "no complete record yet")
                    break
                if isinstance(rec, int):  # whole data records decrypted into dst
                    ctype, take, whole = DATA, rec, True
                else:
                    ctype = rec.content_type
                    take = min(bufsize - copied, rec.remaining)
                    whole = take == rec.remaining
                if ctype == DATA and take == 0:
                    # An empty data record carries nothing to deliver.
                    if isinstance(rec, RxRecord):
                        if peek:
                            idx += 1
                        else:
                            rx.consume(rec, 0)
                    continue
                if record_type is None:
                    if ancbufsize >= CMSG_TYPE_LEN:
                        anc.append((SOL_TLS, TLS_GET_RECORD_TYPE, bytes([ctype])))
                    elif ctype != DATA:
                        raise os_error(errno.EIO, "control record and no room for its cmsg")
                    else:  # put_cmsg found no room: the data still comes
                        msg_flags |= socket.MSG_CTRUNC
                    record_type = ctype
                elif ctype != record_type:
                    break
                if isinstance(rec, RxRecord):
                    piece = rec.data[rec.offset : rec.offset + take]
                    if dst is not None:
                        dst[copied : copied + take] = piece
                    elif out is not None:
                        out.append(bytes(piece))
                    if peek:
                        idx += 1
                    else:
                        rx.consume(rec, take)
                copied += take
                ended = ended or whole
                if ctype != DATA:
                    break
            if not peek:
                self.bytes_received += copied
            if ended:
                msg_flags |= socket.MSG_EOR
            return copied, anc, msg_flags

    def _record_at(
        self, rx: SwRx, idx: int, block: bool, dst: memoryview | None = None
    ) -> RxRecord | int | None:
        """The ready record at ``idx``, decrypting and reading as needed.

        With ``dst`` and nothing queued, a data record may be decrypted
        straight into it: its length is returned instead of a record.
        """
        while idx >= len(rx.ready):
            st = self._state
            if st is RxState.DEAD:
                raise os_error(errno.EAGAIN, "receive path stopped")
            if st is not RxState.OK:
                raise self._stopped_by()
            try:
                rec = rx.decrypt_next(dst if not rx.ready else None)
            except OSError as exc:
                self._fail(exc)
                raise
            if isinstance(rec, int):
                return rec
            if rec is not None:
                if rx.key_update_pending and rec is rx.ready[-1] and rec.content_type == _HANDSHAKE:
                    self._stats.inc("TlsRxRekeyReceived")
                continue
            if rx.key_update_pending or self.eof:
                return None
            if not self._fill(rx, block) and not block:
                return None
        return rx.ready[idx]

    def _fail(self, exc: OSError) -> None:
        """A decrypt failed: a framing error or wrap aborts (reported once),
        anything else (a bad tag) is sticky."""
        self._error = exc
        if isinstance(exc, StreamAbort):
            self._state = RxState.ABORTED
            return
        if exc.errno == errno.EBADMSG:
            self._stats.inc("TlsDecryptError")
        self._state = RxState.ERROR

    def _stopped_by(self) -> OSError:
        """The error that stopped the receive path (ERROR or ABORTED)."""
        return self._error or os_error(errno.EIO, "receive path stopped")

    def _dead_recv(self, block: bool) -> None:
        """After an abort the parser is stopped: no data, only EOF or waiting
        (Python raises TimeoutError when the socket's timeout expires)."""
        while not self.eof:
            if not block:
                raise os_error(errno.EAGAIN, "receive path stopped after an error")
            if not self._sock.recv(READ_CHUNK):
                self.eof = True

    def _fill(self, rx: SwRx, block: bool) -> bool:
        """Read more ciphertext, straight into the parser's buffer; False
        when nothing could be read now."""
        if self.conf is TlsConf.DEVICE and self.rxpath is not None:
            return self._fill_device(self.rxpath, rx, block)
        try:
            if not block and not ready(self._sock, select.POLLIN):
                return False
            n = self._sock.recv_into(rx.parser.write_space(READ_CHUNK))
        except (BlockingIOError, InterruptedError):
            return False
        if not n:
            self.eof = True
            return False
        rx.parser.commit(n)
        return True

    def _fill_device(self, path: RxPath, rx: SwRx, block: bool) -> bool:
        """Read ciphertext and put it through the NIC's RX path, which
        delivers it (marked where the NIC decrypted) to the record layer.

        Each read is drained through the path at once (its retransmission
        timer fires before the next read): faults reorder within a read,
        and the reader never waits on bytes the wire holds back.  When the
        path can (a fault-free wire, nothing held) the socket reads
        straight into the record parser's buffer and the NIC works there
        in place, as the software path reads: no copy, no fresh buffer."""
        drx = rx if isinstance(rx, DeviceRx) and path.in_place else None
        try:
            if not block and not ready(self._sock, select.POLLIN):
                return False
            if drx is not None:
                view = drx.read_space(READ_CHUNK)
            else:
                if self._readbuf is None:
                    self._readbuf = bytearray(READ_CHUNK)
                view = memoryview(self._readbuf)
            n = self._sock.recv_into(view)
        except (BlockingIOError, InterruptedError):
            return False
        if not n:
            self.eof = True
            return False
        if drx is not None:
            path.receive_in_place(view[:n])
        else:
            path.receive(view[:n])  # the wire copies what it keeps
        path.drain()
        return True


__all__ = ["READ_CHUNK", "AncData", "SwReceiver"]
