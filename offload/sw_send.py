"""The transmit side of the software backend (``tls_sw_sendmsg``, ``tls_sw_splice``).

:class:`SwSender` owns one connection's TX: before TLS_TX bytes pass in the
clear (TLS_CONF BASE); ``install`` offers the context to the TX path's
device (``tls_set_device_offload``) and falls back to software records
(``tls_set_sw_offload``).  Each send frames its records with the TX context
(``offload.tls_sw`` / ``offload.tls_device``) and hands them to the queue
(``offload.txqueue``), which writes them through the TX path.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from offload.batch import RecordBuf
from offload.errors import os_error
from offload.netdev import OffloadRefused
from offload.record import Buffer
from offload.sockopt import DATA, decode_max_payload, decode_send
from offload.sockwait import may_block
from offload.state import DeviceState, TlsConf
from offload.stats import TlsStats
from offload.tls_device import DeviceTx
from offload.tls_sw import SwTx
from offload.txpath import DirectPath, TxPath
from offload.txqueue import TxQueue
from offload.uapi import CryptoInfo

NONBLOCK_ACCEPT = 256 * 1024
"""Bytes one non-blocking send may queue (like sk_sndbuf)."""


class SwSender:
    """One connection's TX in this process: the configuration, the TX
    context, the write queue and its path."""

    def __init__(
        self,
        sock: socket.socket,
        stats: TlsStats,
        path: TxPath | None,
        record_size: int,
        oob_records: bool,
    ) -> None:
        self._sock = sock
        self._stats = stats
        self._direct: DirectPath | None = None
        if path is None:
            path = self._direct = DirectPath()
        self.path = path
        self.queue = TxQueue(sock, self.path)
        self.record_size = record_size
        self.oob_records = oob_records
        self.conf = TlsConf.BASE
        self.tx: SwTx | None = None
        self.zerocopy_ro = 0
        self.offload_refused = ""  # why the device declined TLS_TX, if it did
        self.bytes_sent = 0

    # -- configuration ----------------------------------------------------------

    @property
    def info(self) -> CryptoInfo | None:
        """The installed crypto_info (None before TLS_TX)."""
        return self.tx.info if self.tx is not None else None

    def live_info(self, locked: bool = True) -> CryptoInfo | None:
        """The crypto_info as getsockopt shows it: live rec_seq and iv.

        ``locked=False`` reads without the TX lock (a state snapshot must
        never wait for a sender blocked on a full socket)."""
        if not locked:
            tx = self.tx
            return tx.live_info() if tx is not None else None
        with self.queue.lock:
            return self.tx.live_info() if self.tx is not None else None

    def set_key(self, info: CryptoInfo) -> None:
        """TLS_TX, checked by the option codec: install, or rekey (TLS 1.3).

        A rekey never waits for the peer (Linux 6.14+): records already
        sealed stay queued under the old key and the worker finishes them;
        the open MSG_MORE record and everything later use the new key.  A
        device context cannot rekey (EOPNOTSUPP, nothing changed).
        """
        with self.queue.lock:
            if self.tx is None:
                self._install(info)
                return
            self.tx.rekey(info)

    def set_max_payload(self, data: bytes, version: int | None) -> None:
        """``TLS_TX_MAX_PAYLOAD_LEN`` (Linux 6.19+): later records carry at
        most this much plaintext, control records too.  EBUSY while a
        MSG_MORE record is open (Linux checks that first: the open record
        was sized under the old limit); allowed before TLS_TX, which then
        starts with it.  Records already sealed keep their size.
        """
        with self.queue.lock:
            if self.tx is not None and self.tx.open_record:
                raise os_error(errno.EBUSY, "a MSG_MORE record is open")
            value = decode_max_payload(data, version)
            self.record_size = value
            if self.tx is not None:
                self.tx.set_max_payload(value)

    def _install(self, info: CryptoInfo) -> None:
        """Offer the context to the device (tls_set_device_offload), else SW."""
        try:
            dev_tx = self.path.offload(info, self.record_size)
        except OffloadRefused as exc:
            self.offload_refused = str(exc)
        else:
            if dev_tx is not None:
                self.tx = dev_tx
                self.conf = TlsConf.DEVICE
                self._stats.inc("TlsTxDevice")
                self._stats.inc("TlsCurrTxDevice")
                return
        self.tx = SwTx(info, self.record_size)
        if self._direct is not None:
            self._direct.tx = self.tx
        self.conf = TlsConf.SW
        self._stats.inc("TlsTxSw")
        self._stats.inc("TlsCurrTxSw")

    def device_state(self) -> DeviceState | None:
        """The device TX context and its NIC's report (TLS_CONF DEVICE only)."""
        tx = self.tx
        report = self.path.report()
        if not isinstance(tx, DeviceTx) or report is None:
            return None
        return DeviceState(
            expected_tcp_seq=getattr(tx.ctx, "expected", None),
            records_in_flight=tx.records_in_flight,
            start_marker_tcp_seq=tx.space.seq(tx.start_offset),
            report=report,
        )

    # -- sending ----------------------------------------------------------------

    def sendmsg(
        self, bufs: Sequence[memoryview], ancdata: Sequence[tuple[int, int, Buffer]], flags: int
    ) -> int:
        """One message; returns the plaintext bytes accepted.

        One record per call (split at 2^14) unless MSG_MORE; a record type
        from a TLS_SET_RECORD_TYPE cmsg or, with MSG_OOB, the first data byte.
        """
        tx = self.tx
        if tx is None:
            return self._send_plain(bufs, ancdata, flags)
        data = bufs[0] if len(bufs) == 1 else memoryview(b"".join(bufs))
        record_type, data, prefix = decode_send(data, ancdata, flags, self.oob_records)
        more = bool(flags & socket.MSG_MORE)
        block = may_block(self._sock, flags)
        queue = self.queue
        with queue.lock:
            queue.check()
            if not queue.flush(block) and not block:
                raise os_error(errno.EAGAIN, "TLS send queue full")
            if not block and len(data) > NONBLOCK_ACCEPT and record_type == DATA:
                data = data[:NONBLOCK_ACCEPT]
            frames = self._frame(tx, record_type, data, more)
            try:
                queue.push_all(frames, block)
            finally:
                self._note_exhausted(tx)
            self.bytes_sent += len(data)
            queue.kick()
        return len(data) + prefix

    def _send_plain(
        self, bufs: Sequence[memoryview], ancdata: Sequence[tuple[int, int, Buffer]], flags: int
    ) -> int:
        """TLS_CONF BASE: bytes in the clear (the handshake runs here).  With
        a device they travel its path too, so its stream offsets count them."""
        if flags & socket.MSG_OOB:
            raise os_error(errno.EOPNOTSUPP, "MSG_OOB before TLS_TX")
        if self._direct is not None:
            return self._sock.sendmsg(bufs, list(ancdata), flags)
        plain = b"".join(bufs)
        with self.queue.lock:
            self.queue.push_all((bytearray(plain),), True)
        return len(plain)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """A file's bytes as data records; the bytes sent.

        Each chunk is read straight into the record buffer (``os.preadv``
        into the plaintext slots) and sealed in place, so file data is
        copied once, by the AEAD.  After ``send(..., MSG_MORE)`` the file's
        first bytes complete the open record.  Before TLS_TX: the socket's
        own sendfile.
        """
        tx = self.tx
        if tx is None:
            sent = self._sock.sendfile(file, offset, count)
            self.bytes_sent += sent
            return sent
        fd = file.fileno()
        total = 0
        chunk_max = tx.batch_records * tx.max_payload
        queue = self.queue
        with queue.lock:
            if tx.open_record:
                total = self._fill_open_record(tx, fd, offset, count)
            while count is None or total < count:
                queue.check()
                want = chunk_max if count is None else min(chunk_max, count - total)
                try:
                    buf, slots = tx.lay_out(want)
                except OSError as exc:
                    self._sticky_wrap(exc)
                    raise
                got = os.preadv(fd, _slot_payloads(slots, tx.sealer.is13), offset + total)
                if got == 0:
                    break
                if got < want:
                    buf, slots = _shrink(tx, buf, slots, got)
                tx.push_slots(buf, slots)
                self._note_exhausted(tx)
                queue.push_all((buf,), True, drain=False)
                total += got
                if got < want:
                    break
            queue.push_all((), True)
            self.bytes_sent += total
        if hasattr(file, "seek"):
            file.seek(offset + total)
        return total

    def _fill_open_record(self, tx: SwTx, fd: int, offset: int, count: int | None) -> int:
        """sendfile after ``send(..., MSG_MORE)``: the file's first bytes
        complete the open record, which is then pushed; returns the bytes
        taken from the file.

        Linux does the same (splice appends to the open record and
        ``tls_sw_splice_eof`` pushes it), so an HTTP header sent with
        MSG_MORE and a small file share one record, and the header never
        goes out after the body.
        """
        room = tx.max_payload - len(tx.open_record)
        head = os.pread(fd, room if count is None else min(room, count), offset)
        self.queue.check()
        try:
            self.queue.push_all(self._frame(tx, DATA, head, False), True, drain=False)
        finally:
            self._note_exhausted(tx)
        return len(head)

    def push_open_record(self, timeout: float) -> None:
        """Close the open record and write everything queued (bounded wait):
        what ``shutdown(SHUT_WR)`` and ``close`` do before TCP's FIN."""
        tx = self.tx
        if tx is None:
            return
        with self.queue.lock:
            self.queue.push_all(tx.push(), True, timeout=timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Push queued ciphertext to the socket; True when nothing is left."""
        with self.queue.lock:
            return self.queue.flush(True, timeout)

    def close(self) -> None:
        """Counters drop, the device context goes (tls_dev_del), the worker stops."""
        self.queue.closed = True
        tx = self.tx
        if self.conf is TlsConf.SW:
            self._stats.inc("TlsCurrTxSw", -1)
        if isinstance(tx, DeviceTx):
            self._stats.inc("TlsCurrTxDevice", -1)
            tx.close()
        self.conf = TlsConf.BASE

    # -- sequence space -----------------------------------------------------------

    def _frame(self, tx: SwTx, record_type: int, data: Buffer, more: bool) -> Iterator[bytearray]:
        """The records for one send; the sequence space is checked up front
        (EBADMSG, sticky: the record numbered 2^64-1 is never sent)."""
        try:
            return tx.frame(record_type, data, more)
        except OSError as exc:
            self._sticky_wrap(exc)
            raise

    def _sticky_wrap(self, exc: OSError) -> None:
        if exc.errno == errno.EBADMSG:  # sequence space spent: sticky
            self.queue.error = exc

    def _note_exhausted(self, tx: SwTx) -> None:
        if tx.sealer.exhausted:
            self.queue.error = os_error(errno.EBADMSG, "record sequence number wrapped")


def _slot_payloads(slots: Sequence[memoryview], is13: bool) -> list[memoryview]:
    """The plaintext part of each slot (TLS 1.3 slots end with the type byte)."""
    return [s[:-1] for s in slots] if is13 else list(slots)


def _shrink(
    tx: SwTx, buf: RecordBuf, slots: list[memoryview], got: int
) -> tuple[bytearray, list[memoryview]]:
    """Re-lay a short read (EOF inside the chunk) into a right-sized buffer."""
    new_buf, new_slots = tx.batches.lay_out(got)
    payloads = _slot_payloads(slots, tx.sealer.is13)
    pos = 0
    flat = b"".join(bytes(p) for p in payloads)[:got]
    for dst in _slot_payloads(new_slots, tx.sealer.is13):
        n = len(dst)
        dst[:] = flat[pos : pos + n]
        pos += n
    del buf, slots
    return new_buf, new_slots


__all__ = ["NONBLOCK_ACCEPT", "SwSender"]
