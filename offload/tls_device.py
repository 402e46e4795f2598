"""TX conf DEVICE: the layer frames plaintext records and a NIC encrypts them.

The mirror of net/tls/tls_device.c on the transmit side.  At
``setsockopt(TLS_TX)`` the context is offered to the socket's device
(``tls_dev_add``); if the driver accepts, records are framed with their
plaintext and room for the tag, and every record is kept until TCP has
acknowledged all of it (``clean_acked_data``), so that a driver meeting a
retransmitted or reordered segment can look the record up
(``tls_get_record``) and rebuild its crypto state.  Data sent before offload
began lies before the *start marker* and is never encrypted.
"""

from __future__ import annotations

import bisect
import errno
from collections.abc import Iterator

from offload.batch import RecordBuf
from offload.errors import os_error
from offload.netdev import TLS_OFFLOAD_CTX_DIR_TX, NetDevice, OffloadRefused, RecordInfo
from offload.tcpseq import SeqSpace
from offload.tls_sw import SwTx
from offload.uapi import TLS_MAX_PAYLOAD_SIZE, ContentType, CryptoInfo

_DATA = int(ContentType.APPLICATION_DATA)


class DeviceTx(SwTx):
    """Frames records for a NIC and keeps them until acknowledged.

    Reuses :class:`SwTx`'s MSG_MORE/open-record logic; only the last step
    differs: records are framed in plaintext (``TxBatches.frame_plaintext``)
    and registered, instead of sealed.  Each yielded buffer covers stream
    offsets ``[next_offset - len(buf), next_offset)``.

    Raises :class:`offload.netdev.OffloadRefused` from the constructor when
    the driver declines the context (the caller falls back to software).
    """

    batch_records = 64
    """Records per framing buffer: 1 MiB, 16 TSO segments and a short tail.

    Fixed here rather than derived from the SW batch: bigger buffers mean
    fewer short tail segments, but past about 1 MiB the buffer no longer
    stays in cache between ``preadv``, the NIC's in-place pass and
    ``sendmsg`` (4 MiB batches measured 1.3-1.5x the host and device CPU
    per byte of 1 MiB ones in ``tlsctl bench``)."""
    pool_max = 2
    """A framing buffer is the record store until acknowledged: few come back."""

    def __init__(
        self,
        info: CryptoInfo,
        device: NetDevice,
        space: SeqSpace,
        start_offset: int,
        max_payload: int = TLS_MAX_PAYLOAD_SIZE,
    ) -> None:
        super().__init__(info, max_payload)
        self.device = device
        self.space = space
        self.start_offset = start_offset
        self.next_offset = start_offset
        self.acked = start_offset
        self.ctx = device.driver.dev_add(TLS_OFFLOAD_CTX_DIR_TX, info, space.seq(start_offset))
        # The record store, one entry per framing buffer (not per record):
        # a buffer holds records of one size except its last, so a record is
        # found by arithmetic and registering a batch costs O(1), not O(records).
        self._starts: list[int] = []  # stream offset of the buffer's first byte
        self._ends: list[int] = []
        self._sns: list[int] = []  # record number of its first record
        self._rsize: list[int] = []  # size of each record but the last
        self._nrec: list[int] = []
        self._views: list[memoryview] = []
        self._head = 0
        self._epochs: list[tuple[int, CryptoInfo]] = [(start_offset, info)]
        """Each key still needed and the stream offset of its first record:
        a retransmission of an old-key record needs the old key until TCP
        has acknowledged every record under it (the software fallback too)."""
        self._over = self.sealer.prot.prepend_size + self.sealer.tag_size

    # -- framing (overrides of SwTx's sealing steps) ----------------------

    def _emit(self, content_type: int, mv: memoryview) -> Iterator[bytearray]:
        n = len(mv)
        if n == 0 and content_type == _DATA:
            return
        step = self.max_payload * self.batch_records
        is13 = self.sealer.is13
        for off in range(0, max(n, 1), step):
            chunk = mv[off : off + step]
            nrec = max(1, -(-len(chunk) // self.max_payload))
            self._check_space(nrec)
            buf, slots = self.batches.take(len(chunk))
            p = 0
            for slot in slots:
                k = len(slot) - 1 if is13 else len(slot)
                slot[:k] = chunk[p : p + k]
                p += k
            self._register(buf, content_type, slots)
            yield buf

    def push_slots(self, buf: RecordBuf, slots: list[memoryview]) -> None:
        """sendfile: the slots hold file data; frame them (the NIC seals)."""
        self._register(buf, _DATA, slots)

    def recycle(self, buf: RecordBuf) -> None:
        """The wire delivered ``buf`` whole (in place) and the socket wrote it.

        Reused for the next batch only when no record in it is still held:
        a framing buffer is the record store until its records are
        acknowledged, and allocating (zeroing, faulting in) a fresh 1 MiB
        buffer per batch costs as much as copying it.
        """
        if not self.batches.wants(buf):
            return
        for view in self._views[self._head :]:
            if view.obj is buf:
                return
        self.batches.give_back(buf)

    def rekey(self, info: CryptoInfo) -> None:
        """TLS 1.3 KeyUpdate on a device context: records framed from now on
        (the open MSG_MORE record included) are sealed by the NIC under
        ``info``; those framed before keep the old key.

        Linux has no answer here: no upstream driver can rekey, and
        ``tls_set_device_offload`` refuses the update.  A driver without
        ``dev_rekey`` gets the same refusal (EOPNOTSUPP, nothing changed);
        sim-nic implements it (``offload.drivers.simnic``).
        """
        dev_rekey = getattr(self.device.driver, "dev_rekey", None)
        if dev_rekey is None:
            raise os_error(errno.EOPNOTSUPP, "rekey of a device-offloaded TX context")
        start = self.next_offset
        try:
            dev_rekey(self.ctx, info, self.space.seq(start))
        except OffloadRefused as exc:
            raise os_error(errno.EOPNOTSUPP, f"the device refused the rekey: {exc}") from None
        super().rekey(info)
        self._epochs.append((start, info))

    def key_at(self, tcp_seq: int) -> CryptoInfo:
        """The key of the record starting at ``tcp_seq`` (software fallback)."""
        off = self._stream_offset(tcp_seq)
        epochs = self._epochs
        for start, info in reversed(epochs):
            if start <= off:
                return info
        return epochs[0][1]

    def _register(self, buf: RecordBuf, content_type: int, slots: list[memoryview]) -> None:
        first_sn = self.sealer.seq
        self.batches.frame_plaintext(buf, content_type, slots)
        base = self.next_offset
        end = base + len(buf)
        self._starts.append(base)
        self._ends.append(end)
        self._sns.append(first_sn)
        self._rsize.append(self._over + len(slots[0]))
        self._nrec.append(len(slots))
        self._views.append(memoryview(buf).toreadonly())
        self.records += len(slots)
        self.next_offset = end

    # -- what drivers may ask (RecordLookup) --------------------------------

    def _stream_offset(self, tcp_seq: int) -> int:
        """The stream offset of ``tcp_seq``, read next to the oldest
        unacknowledged byte.

        Every segment TCP may still (re)send lies within its window of that
        byte (at most 2^30, RFC 7323), so serial-number arithmetic gives the
        right offset there; the start marker, the ISN or any other fixed
        point is left more than 2^31 behind after 2 GiB, and a sequence
        number read next to it lands 4 GiB off, on the wrong side.
        """
        return self.space.offset(tcp_seq, self.acked)

    def get_record(self, tcp_seq: int) -> RecordInfo | None:
        off = self._stream_offset(tcp_seq)
        if off < self.acked or off < self.start_offset or off >= self.next_offset:
            return None
        i = bisect.bisect_right(self._starts, off, self._head) - 1
        if i < self._head or off >= self._ends[i]:
            return None
        start, size = self._starts[i], self._rsize[i]
        k = min((off - start) // size, self._nrec[i] - 1)
        lo = k * size
        hi = min(lo + size, self._ends[i] - start)
        return RecordInfo(self.space.seq(start + lo), self._sns[i] + k, self._views[i][lo:hi])

    def before_start_marker(self, tcp_seq: int, length: int) -> bool:
        """The segment ends at or before the start marker (plain data).

        Read next to the acknowledged offset like ``get_record``: a segment
        from 2^31 bytes past the marker onwards used to be read next to the
        marker, found "before" it, and sent in plaintext.  Once the marker
        is more than 2^31 behind the window no segment can be from before
        it; such a stale sequence number then reads as a byte already
        acknowledged, which ``get_record`` refuses (the packet is dropped,
        as the kernel drops one whose start-marker record was freed).
        """
        off = self._stream_offset(tcp_seq)
        return off + length <= self.start_offset

    def clean_acked(self, offset: int) -> None:
        """TCP acknowledged everything before ``offset``: free what it covers.

        Bytes before ``offset`` are never handed out again (``get_record``
        refuses them), so a record is freed as soon as its last byte is
        acknowledged; the buffer's memory goes when its last record does.
        """
        if offset <= self.acked:
            return
        self.acked = offset
        epochs = self._epochs
        if len(epochs) > 1 and epochs[1][0] <= offset:
            while len(epochs) > 1 and epochs[1][0] <= offset:
                del epochs[0]
            done = getattr(self.device.driver, "dev_rekey_done", None)
            if done is not None:
                done(self.ctx, self.space.seq(epochs[0][0]))
        ends, views = self._ends, self._views
        h = self._head
        while h < len(ends) and ends[h] <= offset:
            views[h] = _FREED
            h += 1
        self._head = h
        if h > 1024 and h * 2 > len(ends):
            for lst in (self._starts, self._ends, self._sns, self._rsize, self._nrec, views):
                del lst[:h]
            self._head = 0

    @property
    def records_in_flight(self) -> int:
        """Records framed but not yet acknowledged."""
        h = self._head
        if h >= len(self._starts):
            return 0
        freed = min(max(0, (self.acked - self._starts[h]) // self._rsize[h]), self._nrec[h] - 1)
        return sum(self._nrec[h:]) - freed

    def close(self) -> None:
        self.device.driver.dev_del(self.ctx)


_FREED = memoryview(b"")
