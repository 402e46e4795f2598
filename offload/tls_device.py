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

from offload.errors import os_error
from offload.netdev import TLS_OFFLOAD_CTX_DIR_TX, NetDevice, RecordInfo
from offload.tcpseq import SeqSpace
from offload.tls_sw import BATCH_RECORDS, SwTx
from offload.uapi import TLS_MAX_PAYLOAD_SIZE, CryptoInfo


class DeviceTx(SwTx):
    """Frames records for a NIC and keeps them until acknowledged.

    Reuses :class:`SwTx`'s MSG_MORE/open-record logic; only the last step
    differs: records are framed in plaintext (``RecordSealer.frame_slots``)
    and registered, instead of sealed.  Each yielded buffer covers stream
    offsets ``[next_offset - len(buf), next_offset)``.

    Raises :class:`offload.netdev.OffloadRefused` from the constructor when
    the driver declines the context (the caller falls back to software).
    """

    batch_records = 4 * BATCH_RECORDS
    """Bigger than SW batches: fewer short tail segments per framing buffer."""

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
        self._starts: list[int] = []
        self._sns: list[int] = []
        self._views: list[memoryview] = []
        self._head = 0

    # -- framing (overrides of SwTx's sealing steps) ----------------------

    def _emit(self, content_type: int, mv: memoryview) -> Iterator[bytearray]:
        n = len(mv)
        if n == 0 and content_type == 23:
            return
        step = self.max_payload * self.batch_records
        is13 = self.sealer.is13
        for off in range(0, max(n, 1), step):
            chunk = mv[off : off + step]
            nrec = max(1, -(-len(chunk) // self.max_payload))
            self._check_space(nrec)
            buf, slots = self.sealer.layout(len(chunk), self.max_payload)
            p = 0
            for slot in slots:
                k = len(slot) - 1 if is13 else len(slot)
                slot[:k] = chunk[p : p + k]
                p += k
            self._register(buf, content_type, slots)
            yield buf

    def seal_slots(self, buf: bytearray, slots: list[memoryview]) -> None:
        """sendfile: the slots hold file data; frame them (the NIC seals)."""
        self._register(buf, 23, slots)

    def frame_slots(self, total: int) -> tuple[bytearray, list[memoryview]]:
        nrec = max(1, -(-total // self.max_payload))
        self._check_space(nrec)
        return self.sealer.layout(total, self.max_payload)

    def recycle(self, buf: bytearray) -> None:
        """Framed buffers belong to the record store until acknowledged."""

    def rekey(self, info: CryptoInfo) -> None:
        raise os_error(errno.EOPNOTSUPP, "rekey of a device-offloaded TX context")

    def _register(self, buf: bytearray, content_type: int, slots: list[memoryview]) -> None:
        first_sn = self.sealer.seq
        self.sealer.frame_slots(buf, content_type, slots)
        view = memoryview(buf).toreadonly()
        o = 0
        base = self.next_offset
        over = self.sealer.sealed_size(0) - int(self.sealer.is13)
        for i, slot in enumerate(slots):
            size = over + len(slot)
            self._starts.append(base + o)
            self._sns.append(first_sn + i)
            self._views.append(view[o : o + size])
            o += size
        self.records += len(slots)
        self.next_offset = base + len(buf)

    # -- what drivers may ask (RecordLookup) --------------------------------

    def get_record(self, tcp_seq: int) -> RecordInfo | None:
        off = self.space.offset(tcp_seq, self.acked)
        if off < self.acked or off < self.start_offset or off >= self.next_offset:
            return None
        i = bisect.bisect_right(self._starts, off, self._head) - 1
        if i < self._head:
            return None
        view = self._views[i]
        if off >= self._starts[i] + len(view):
            return None
        return RecordInfo(self.space.seq(self._starts[i]), self._sns[i], view)

    def before_start_marker(self, tcp_seq: int, length: int) -> bool:
        off = self.space.offset(tcp_seq, self.start_offset)
        return off + length <= self.start_offset

    def clean_acked(self, offset: int) -> None:
        """TCP acknowledged everything before ``offset``: free whole records."""
        if offset <= self.acked:
            return
        self.acked = offset
        starts, views = self._starts, self._views
        h = self._head
        while h < len(starts) and starts[h] + len(views[h]) <= offset:
            views[h] = memoryview(b"")
            h += 1
        self._head = h
        if h > 4096 and h * 2 > len(starts):
            del self._starts[:h], self._sns[:h], self._views[:h]
            self._head = 0

    @property
    def records_in_flight(self) -> int:
        """Records framed but not yet acknowledged."""
        return len(self._starts) - self._head

    def close(self) -> None:
        self.device.driver.dev_del(self.ctx)
