"""RX conf DEVICE: a NIC decrypts received records, the host checks its marks.

The receive side of net/tls/tls_device.c.  At ``setsockopt(TLS_RX)`` the
context is offered to the device (``tls_dev_add`` with
``TLS_OFFLOAD_CTX_DIR_RX`` and the sequence number of the first record,
as Linux passes ``copied_seq``).  Received bytes reach the record layer
in TCP order with the NIC's per-packet ``decrypted`` mark carried beside
them, keyed by stream range, as ``skb->decrypted`` travels with the data
(:meth:`DeviceRx.deliver`).  Each record is then looked at as
``tls_device_decrypted`` does:

* every byte of it came in packets marked decrypted: the plaintext is
  taken as it is, the tag was checked by the NIC;
* none did: the software path decrypts it (``SwRx``, unchanged);
* some did: the decrypted parts are re-encrypted (``offload.rx_reencrypt``,
  ``tls_device_reencrypt``) and the whole record is decrypted in software,
  once - a bad tag then fails there, EBADMSG as without a device.

Everything else - recvmsg's rules, sticky errors, EKEYEXPIRED after a
KeyUpdate, TLS_GET_RECORD_TYPE - is the software receive path's, which
calls ``decrypt_next`` here exactly as it does on ``SwRx``.  Each record
is counted once: ``records_device``, ``records_partial`` or ``records_sw``.

TLS 1.3 KeyUpdate (Linux has no device RX for 1.3, so this is this
package's answer): the NIC stops by itself after any handshake record it
decrypted; when the host reads one that is not a KeyUpdate it hints the
NIC on (``RxResync.resume``); when it is a KeyUpdate the device context is
deleted at once and a new one is added with the next key when user space
installs it (``rekey``), starting at the record after the KeyUpdate.  Each
context is a *generation*: a packet's mark is the generation that
decrypted it, and a partly decrypted record is re-encrypted with that
generation's key and numbering, so even packets an old context decrypted
past the key change (it cannot see the change when it was out of sync) are
put back exactly.
"""

from __future__ import annotations

import contextlib
import errno
from dataclasses import dataclass
from typing import Protocol

from offload.errors import os_error
from offload.netdev import TLS_OFFLOAD_CTX_DIR_RX, NetDevice, OffloadRefused, RxSyncType
from offload.record import Buffer
from offload.rx_reencrypt import reencrypt
from offload.rx_resync import RecordWalk, RxResync
from offload.state import DeviceReport
from offload.stats import TlsStats
from offload.tcpseq import SeqSpace
from offload.tls_sw import RxRecord, SwRx
from offload.uapi import TLS_HEADER_SIZE, ContentType, CryptoInfo

_HANDSHAKE = int(ContentType.HANDSHAKE)


@dataclass(frozen=True)
class _Generation:
    """One device context: its key, and the record index its numbering starts at."""

    info: CryptoInfo
    first_index: int

    def number_of(self, index: int) -> int:
        return self.info.seq + index - self.first_index


class DeviceRx(SwRx):
    """One connection's RX with a NIC decrypting (see the module docstring).

    Raises ``offload.netdev.OffloadRefused`` from the constructor when the
    driver declines the context (the caller then uses ``SwRx``).
    """

    def __init__(
        self,
        info: CryptoInfo,
        device: NetDevice,
        space: SeqSpace,
        stats: TlsStats,
        sync_type: RxSyncType = RxSyncType.DRIVER_REQ,
    ) -> None:
        super().__init__(info)
        self.device = device
        self.space = space
        self.stats = stats
        self.sync_type = sync_type
        self.fed = 0  # stream offset after the last byte given to the parser
        self.index = 0  # record index of the next record the parser gives
        self.records_device = 0
        self.records_partial = 0
        self.records_sw = 0
        self.reencrypted_bytes = 0
        self._marks: list[tuple[int, int, int]] = []  # (start, end, generation)
        self._gens: dict[int, _Generation] = {}
        self._gen = 0
        self.ctx: object | None = None
        self.resync = RxResync(sync_type, self._dev_resync)
        self.walk = RecordWalk(self.parser.max_len, self._on_record)
        self._walked = 0  # stream offset up to which the walk has seen the bytes
        self._rekey_at: tuple[int, int] | None = None  # (offset, index) after a KeyUpdate
        self._add_context(info, 0, 0)

    # -- device contexts ------------------------------------------------------------

    def _add_context(self, info: CryptoInfo, offset: int, index: int) -> None:
        driver = self.device.driver
        setter = getattr(driver, "rx_resync", None)
        if setter is not None:
            driver.rx_resync = self.sync_type  # type: ignore[attr-defined]
        self.ctx = driver.dev_add(TLS_OFFLOAD_CTX_DIR_RX, info, self.space.seq(offset))
        self._gen += 1
        self._gens[self._gen] = _Generation(info, index)
        self.resync = RxResync(self.sync_type, self._dev_resync)

    def _del_context(self) -> None:
        if self.ctx is not None:
            self.device.driver.dev_del(self.ctx)
            self.ctx = None

    @property
    def generation(self) -> int:
        """The mark a packet the current context decrypts carries (0: none)."""
        return self._gen if self.ctx is not None else 0

    def _dev_resync(self, tcp_seq: int, record_sn: int) -> None:
        """``tls_device_resync_rx``: tell the NIC, count TlsRxDeviceResync."""
        if self.ctx is None:
            return
        self.stats.inc("TlsRxDeviceResync")
        self.device.driver.dev_resync(self.ctx, tcp_seq, record_sn)

    def _on_record(self, offset: int, rec_len: int, index: int, next_in: bool) -> None:
        """A record header arrived (strparser time): resync bookkeeping."""
        if not self.resync.listening:
            return
        gen = self._gens.get(self._gen)
        if self.ctx is None or gen is None or index < gen.first_index:
            return
        self.resync.new_record(self.space.seq(offset), rec_len, gen.number_of(index), next_in)

    def close(self) -> None:
        self._del_context()

    def report(self) -> dict[str, int | str]:
        """Per-connection RX offload facts (names are this package's own)."""
        return {
            "rx_resync": self.sync_type.name,
            "rx_records_device": self.records_device,
            "rx_records_partial": self.records_partial,
            "rx_records_sw": self.records_sw,
            "rx_reencrypted_bytes": self.reencrypted_bytes,
            "rx_device_contexts": self._gen,
        }

    def rekey(self, info: CryptoInfo) -> None:
        """The next RX key after a KeyUpdate: software and a new device context."""
        super().rekey(info)
        if self._rekey_at is not None:
            offset, index = self._rekey_at
            self._rekey_at = None
            # A refusal leaves the rest of the connection to software RX.
            with contextlib.suppress(OffloadRefused):
                self._add_context(info, offset, index)

    # -- bytes arriving ---------------------------------------------------------------

    def feed(self, data: Buffer) -> None:
        """Bytes that never went through the NIC (read before TLS_RX)."""
        self.deliver(self.fed, memoryview(data), 0)

    def deliver(self, offset: int, data: memoryview, mark: int) -> None:
        """In-order bytes at stream ``offset`` with their packet's mark (a
        generation, 0 for a packet that came as it was on the wire)."""
        if offset != self.fed:
            raise ValueError(f"RX bytes out of order: {offset} after {self.fed}")
        n = len(data)
        if not n:
            return
        self.parser.feed(data)
        self._arrived(offset, data, mark)

    def deliver_unheard(self, offset: int, pieces: list[tuple[memoryview, int]]) -> None:
        """``deliver`` for a run of in-order pieces (each with its packet's
        mark) starting at stream ``offset`` that reached the host while the
        stack did not listen for record headers, handed over late by a wire
        that batches its NIC work (``offload.rxwire.RxWire._flush``): one
        copy into the parser per piece, one mark range per run of equal
        marks, and no record walk, even if the stack listens by now (it did
        not when they came; the walk catches up silently when it next
        looks, as after any bytes nobody listened for)."""
        if offset != self.fed:
            raise ValueError(f"RX bytes out of order: {offset} after {self.fed}")
        total = 0
        for piece, _mark in pieces:
            total += len(piece)
        if not total:
            return
        space = self.parser.write_space(total)
        pos = 0
        for piece, mark in pieces:
            n = len(piece)
            if not n:
                continue
            space[pos : pos + n] = piece
            if mark:
                self._add_mark(offset + pos, offset + pos + n, mark)
            pos += n
        self.parser.commit(total)
        self.fed = offset + total

    def _arrived(self, offset: int, data: memoryview, mark: int) -> None:
        """Bytes now in the parser at ``offset``: extend or add their mark
        range, advance ``fed``, and let the record walk see them."""
        end = offset + len(data)
        if mark:
            self._add_mark(offset, end, mark)
        self.fed = end
        if self.resync.listening:
            if self._walked < offset:
                self._catch_up(offset)
            self.walk.delivered(offset, data)
            self._walked = end

    def _add_mark(self, start: int, end: int, mark: int) -> None:
        """Stream bytes ``start``..``end`` came under ``mark``: the last
        range grows when it ends there under the same mark, else a new one."""
        marks = self._marks
        if marks and marks[-1][1] == start and marks[-1][2] == mark:
            marks[-1] = (marks[-1][0], end, mark)
        else:
            marks.append((start, end, mark))

    def _catch_up(self, upto: int) -> None:
        """The walk skipped bytes delivered while nobody listened for record
        headers (``_on_record`` would have ignored every one of them): follow
        their headers now, silently, up to ``upto`` - from where the reader
        is when it took records the walk never saw.  The bytes not yet read
        are all still in the parser."""
        walk = self.walk
        start = self.fed - self.parser.buffered  # the reader's next record starts here
        walk.jump(start, self.index)
        frm = max(self._walked, start)
        if frm < upto:
            pending = self.parser.pending()
            walk.delivered(frm, pending[frm - start : upto - start], announce=False)
        self._walked = upto

    def read_space(self, want: int) -> memoryview:
        """Room for ``want`` bytes straight in the record parser's buffer, for
        an RX path that lets the NIC work there in place (``delivered_in_place``)."""
        return self.parser.write_space(want)

    def delivered_in_place(self, data: memoryview, mark: int) -> None:
        """The next ``len(data)`` bytes of the last ``read_space`` view reached
        the host in order, with their packet's mark: ``deliver`` without the
        copy into the parser (they are there already)."""
        n = len(data)
        if not n:
            return
        self.parser.commit(n)
        self._arrived(self.fed, data, mark)

    # -- records --------------------------------------------------------------------

    def decrypt_next(self, dst: memoryview | None = None) -> RxRecord | int | None:
        """One record: taken as decrypted, repaired, or decrypted in software.

        With ``dst`` (a reader's buffer, nothing queued ahead of it) a run
        of whole data records the current context decrypted is copied
        straight into it and the bytes written are returned
        (``_take_decrypted``); anything else goes one record at a time (the
        software path's bulk run would not see the marks)."""
        if self.key_update_pending or self.opener.exhausted:
            return super().decrypt_next(None)
        if dst is not None and self._marks and self.ctx is not None:
            taken = self._take_decrypted(dst)
            if taken is not None:
                return taken
        head = self.parser.peek_header()
        if head is None:
            return None
        start = self.fed - self.parser.buffered
        end = start + TLS_HEADER_SIZE + head[2]
        if end > self.fed:
            return None
        covered = self._covered(start, end)
        index = self.index
        self.index += 1
        gen = self._gens.get(self._gen)
        encrypted = not covered
        decrypted = covered is not None and sum(b - a for a, b, _ in covered) == end - start
        if self.ctx is not None and gen is not None:
            next_in = self.fed > end
            self.resync.record_read(
                decrypted,
                encrypted,
                self.space.seq(end),
                gen.number_of(index + 1),
                next_in,
            )
        if encrypted:
            self.records_sw += 1
            rec = super().decrypt_next(None)
        else:
            raw = self.parser.next_record()
            if raw is None:  # cannot happen: the whole record is buffered
                raise os_error(errno.EIO, "record vanished from the parser")
            if decrypted:
                self.records_device += 1
                ctype, plain = self.opener.accept_decrypted(raw)
            else:
                self.records_partial += 1
                self._repair(raw, start, index, covered or [])
                ctype, plain = self.opener.open(raw)
            rec = RxRecord(ctype, memoryview(bytes(plain)))
            if self.opener.is13:
                self._note13(ctype, plain, self.opener.inner_len(raw))
            self.ready.append(rec)
        self._prune(end)
        if isinstance(rec, RxRecord) and self.opener.is13 and rec.content_type == _HANDSHAKE:
            if self.key_update_pending:
                # The NIC's context ends here; a new one comes with the next key.
                self._del_context()
                self._rekey_at = (end, index + 1)
            else:
                self.resync.resume()
        return rec

    def _take_decrypted(self, dst: memoryview) -> int | None:
        """The fast path: whole data records inside the first marked range,
        when the current context decrypted it, copied into ``dst``.

        Per record this is exactly what the one-record path does for a
        record whose every byte was marked (``records_device``, the state
        advanced, ``record_read(decrypted)`` - which only sets the
        CORE_NEXT_HINT reset, so once per run is the same); None when no
        such record is at the front."""
        start = self.fed - self.parser.buffered
        a, b, g = self._marks[0]
        if g != self._gen or not a <= start < b:
            return None
        nrec, written = self.opener.take_decrypted_into(self.parser, dst, b - start)
        if not nrec:
            return None
        self.index += nrec
        self.records_device += nrec
        self.resync.record_read(True, False, 0, 0, True)
        self._prune(self.fed - self.parser.buffered)
        return written

    def _covered(self, start: int, end: int) -> list[tuple[int, int, int]] | None:
        """The marked parts of ``[start, end)`` (record offsets), or None when
        there are none."""
        out = []
        for a, b, g in self._marks:
            if b <= start:
                continue
            if a >= end:
                break
            out.append((max(a, start) - start, min(b, end) - start, g))
        return out or None

    def _repair(
        self, raw: memoryview, start: int, index: int, covered: list[tuple[int, int, int]]
    ) -> None:
        """Re-encrypt each marked part with the key and record number of the
        context that decrypted it."""
        for a, b, g in covered:
            gen = self._gens[g]
            self.reencrypted_bytes += reencrypt(raw, gen.info, gen.number_of(index), [(a, b)])

    def _prune(self, upto: int) -> None:
        marks = self._marks
        i = 0
        while i < len(marks) and marks[i][1] <= upto:
            i += 1
        if i:
            del marks[:i]


class RxPath(Protocol):
    """Where received bytes go on their way to the RX record layer (the
    mirror of ``offload.txpath.TxPath``): the in-process RX wire
    (``offload.rxwire.RxWire``) is one; the socket never imports it."""

    def offload_rx(self, info: CryptoInfo, stats: TlsStats) -> DeviceRx:
        """``tls_set_device_offload_rx``; raises ``OffloadRefused``."""
        ...

    def receive(self, data: memoryview) -> None:
        """Bytes the TCP socket received, in order."""
        ...

    @property
    def in_place(self) -> bool:
        """Whether the next read may go straight into the record layer's
        buffer and through the NIC there (``receive_in_place``)."""
        ...

    def receive_in_place(self, data: memoryview) -> None:
        """``receive`` for bytes read into ``DeviceRx.read_space``."""
        ...

    def drain(self) -> object:
        """Deliver whatever the path still holds."""
        ...

    def report(self) -> DeviceReport | None:
        """The device's counters and the faults injected."""
        ...


__all__ = ["DeviceRx", "RxPath"]
