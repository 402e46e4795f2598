"""The host's record store in shared memory: what the NIC "DMAs" on resync.

The kernel keeps every record of an offloaded connection until TCP has
acknowledged all of it, and a driver meeting a retransmitted frame reads the
record's earlier bytes straight from host memory (mlx5 posts them as DUMP
work).  Here the host and the NIC are two processes, so the store lives in a
shared memory file (``/dev/shm``, created ``O_EXCL|O_NOFOLLOW`` mode 0600 and
unlinked as soon as the NIC has mapped it): sendfile reads file data
straight into ring space (``reserve``) and frames it there, other sends
copy their framed buffer in once, TCP is fed from that very ring (``sendfile``
from the file: TCP holds the ring's pages, see ``offload.filechunk``), and the
NIC maps the file read-only and reads a record's bytes only when it
resyncs.  It keeps no copy.  A full batch keeps coming back to the same
few ring places, so ``reserve`` hands out the same view for the same place
and the host's framing leaves the headers it wrote there in place.

Layout (little-endian, offsets in bytes)::

    0   magic "TLSCTLRS"     8  ring size          16 entry capacity
    24  isn: TCP sequence number of stream offset 0 (u32)
    32  start offset (the start marker)            40 head: oldest live entry
    48  tail: entries published                     56 acked stream offset
    64  entries[capacity], 40 bytes each: start, end, first record number,
        record size (all but the last), record count, ring position
    ... ring (page aligned)

One entry per framing buffer, as ``offload.tls_device.DeviceTx`` keeps its
own store: a buffer's records have one size except the last, so a record is
found by arithmetic.  A buffer sits contiguously in the ring (never split by
the ring's end) so TCP gets it as one chunk.

Concurrency: one writer (the host), one reader (the NIC).  The writer fills
an entry and its ring bytes before publishing ``tail``, and publishes
``acked`` before ``head`` when it frees; a buffer's ring space is reused
only after ``head`` passed its entry.  The reader copies a record and then
re-reads ``head``: if the entry was freed meanwhile the copy may be torn and
is thrown away (the record counts as freed, the frame is dropped), so the
NIC never sends bytes it read from reused memory.  That argument needs
``head``, ``tail`` and ``acked`` loaded and stored whole
(``offload.netwire.shmwords``): a ``head`` torn to 0 would pass a record
freed and overwritten under the read as still held.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import secrets
import struct
from collections.abc import Callable

from offload.filechunk import FileSource
from offload.netdev import RecordInfo
from offload.netwire.shmwords import shared_words
from offload.tcpseq import SEQ_MOD, seq_diff

MAGIC = b"TLSCTLRS"
_HDR = struct.Struct("<8sQQIIQQQQ")
HEADER_SIZE = 64
ENTRY = struct.Struct("<QQQIIQ")
_HEAD, _TAIL, _ACKED = 5, 6, 7
"""The shared words' indexes (byte offsets 40, 48, 56), loaded and stored
whole through ``offload.netwire.shmwords``: never ``struct.pack_into``."""
DEFAULT_RING = 17 << 20
"""Four framing batches of 4 MiB of payload (``NetTxPath.batch_records``,
records with their headers and tags: a little over 16 MiB): the ring holds
what TCP has not acknowledged (its send buffer autotunes to 4 MiB here,
tcp_wmem max), plus the batch being framed, plus the room lost when a
batch does not fit before the ring's end."""
DEFAULT_ENTRIES = 8192
_HALF = SEQ_MOD // 2
_CLOSED = memoryview(bytes(8)).cast("Q")
_CLOSED.release()
"""A closed reader's words: any load raises ValueError, as a closed mapping does."""
SHM_DIR = "/dev/shm"


def _layout(ring_size: int, entries: int) -> tuple[int, int]:
    ring_at = -(-(HEADER_SIZE + entries * ENTRY.size) // mmap.PAGESIZE) * mmap.PAGESIZE
    return ring_at, ring_at + ring_size


class StoreFull(OSError):
    """The ring or the entry table stays full: TCP acknowledges nothing."""


class StoreWriter:
    """The host side: publishes framing buffers, frees acknowledged ones."""

    def __init__(
        self,
        isn: int,
        start_offset: int,
        ring_size: int = DEFAULT_RING,
        entries: int = DEFAULT_ENTRIES,
    ) -> None:
        self.ring_size = ring_size
        self.capacity = entries
        self._ring_at, total = _layout(ring_size, entries)
        self.path = os.path.join(SHM_DIR, f"tlsctl-rs-{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(
            self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            os.ftruncate(fd, total)
            self._map = mmap.mmap(fd, total)
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise
        self.source = FileSource(fd)
        """The ring's file, for TCP to take its pages from (sendfile); its
        descriptor closes when the last chunk queued from it is gone."""
        self.appended_at = 0
        """File offset of the buffer ``append`` published last."""
        self._mv = memoryview(self._map)
        self._words = shared_words(self._map, HEADER_SIZE)
        _HDR.pack_into(
            self._map,
            0,
            MAGIC,
            ring_size,
            entries,
            isn % SEQ_MOD,
            0,
            start_offset,
            0,
            0,
            start_offset,
        )
        self.acked = start_offset
        # The writer's own copy of what it published (never read back from
        # the shared memory): end offset and ring span of each live entry.
        self._ends: list[int] = []
        self._spans: list[tuple[int, int]] = []
        self._head = 0  # index into the lists of the oldest live entry
        self._base = 0  # entry number of list index 0
        self._pos = 0  # where the next buffer goes in the ring
        self._reserved: tuple[int, memoryview] | None = None  # (position, view)
        self._regions: dict[int, memoryview] = {}
        """One view per ring position handed out by ``reserve``: the same
        object for the same place and size, so the host's framing can tell
        a region whose headers it already wrote (``TxBatches.lay_out_in``).
        A view is dropped (a new one made next time) once other bytes are
        written over any part of it."""
        self.wait_room: Callable[[], bool] | None = None
        """Called while the store is full: polls TCP for acknowledgements
        (frees via ``free``); returns False once waiting is pointless."""

    def unlink(self) -> None:
        """Remove the file name (the mappings stay): nothing left in /dev/shm."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        """Unmap now, or (chunks still queued for TCP point into the ring)
        when the last view goes."""
        self.unlink()
        self._regions.clear()
        self._reserved = None
        with contextlib.suppress(BufferError):
            self._words.release()
            self._mv.release()
            self._map.close()

    # -- writing --------------------------------------------------------------

    def _place(self, n: int) -> int | None:
        """Ring position for ``n`` contiguous bytes, or None if no room."""
        live = len(self._ends) - self._head
        if live >= self.capacity:
            return None
        if live == 0:
            self._pos = 0
            return 0 if n <= self.ring_size else None
        lo = self._spans[self._head][0]  # oldest live byte
        pos = self._pos
        if pos > lo:  # live region is [lo, pos): free at the end, then the start
            if pos + n <= self.ring_size:
                return pos
            return 0 if n <= lo else None
        # Wrapped: live is [lo, end) and [0, pos); pos == lo is a ring full
        # all the way round (no free byte), not an empty one.
        return pos if pos < lo and pos + n <= lo else None

    def reserve(self, n: int) -> memoryview:
        """Ring space for the next ``n``-byte buffer, writable, not yet
        published: the host frames its records straight into it (no copy
        into the ring afterwards), then ``append``s it.  Waits for
        acknowledgements while the ring is full.  A reservation that is
        never appended is simply reused by the next one."""
        pos = self._room(n)
        view = self._regions.get(pos)
        if view is None or len(view) != n:
            self._overwritten(pos, n)
            ring = self._ring_at + pos
            view = self._regions[pos] = self._mv[ring : ring + n]
        self._reserved = (pos, view)
        return view

    def _overwritten(self, pos: int, n: int) -> None:
        """Ring bytes ``[pos, pos + n)`` get other contents: forget the
        region views over any of them."""
        for p in [p for p, v in self._regions.items() if p < pos + n and pos < p + len(v)]:
            del self._regions[p]

    def append(
        self, buf: bytearray | memoryview, start: int, first_sn: int, rsize: int, nrec: int
    ) -> memoryview:
        """Publish a framed buffer covering stream offsets ``[start, start +
        len(buf))``; returns its place in the ring (what TCP should send).
        ``buf`` is either the last ``reserve``d view (framed in place) or
        a buffer of the host's, copied in (waiting for room if need be)."""
        n = len(buf)
        reserved, self._reserved = self._reserved, None
        ring_view: memoryview | None = None
        if reserved is not None and buf is reserved[1]:
            pos = reserved[0]
            ring_view = reserved[1]
        else:
            pos = self._room(n)
        ring = self._ring_at + pos
        if ring_view is None:
            self._overwritten(pos, n)
            self._mv[ring : ring + n] = buf
        number = self._base + len(self._ends)
        slot = HEADER_SIZE + (number % self.capacity) * ENTRY.size
        ENTRY.pack_into(self._map, slot, start, start + n, first_sn, rsize, nrec, pos)
        self._ends.append(start + n)
        self._spans.append((pos, pos + n))
        self._pos = pos + n
        self.appended_at = ring
        self._words[_TAIL] = number + 1  # publish last
        return ring_view if ring_view is not None else self._mv[ring : ring + n]

    def _room(self, n: int) -> int:
        """A ring position for ``n`` contiguous bytes, waiting for room."""
        if n > self.ring_size:
            raise StoreFull(
                errno.ENOBUFS, f"a {n}-byte buffer cannot fit a {self.ring_size}-byte record ring"
            )
        pos = self._place(n)
        while pos is None:
            if self.wait_room is None or not self.wait_room():
                raise StoreFull(errno.ENOBUFS, "record store full: TCP acknowledges nothing")
            pos = self._place(n)
        return pos

    def free(self, acked: int) -> None:
        """TCP acknowledged every byte before stream offset ``acked``:
        entries wholly before it are freed (their ring space reusable)."""
        if acked <= self.acked:
            return
        self.acked = acked
        self._words[_ACKED] = acked
        ends, h = self._ends, self._head
        while h < len(ends) and ends[h] <= acked:
            h += 1
        if h != self._head:
            self._head = h
            self._words[_HEAD] = self._base + h
        if h > 1024 and h * 2 > len(ends):
            del self._ends[:h], self._spans[:h]
            self._base += h
            self._head = 0


class StoreReader:
    """The NIC side: ``tls_get_record`` over the mapped store (RecordLookup)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError("record store too small")
            self._map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, ring, cap, isn, _, start, _, _, _ = _HDR.unpack_from(self._map, 0)
        if magic != MAGIC or _layout(ring, cap)[1] > size:
            self._map.close()
            raise ValueError("not a record store")
        self.capacity = cap
        self.isn = isn
        self.start_offset = start
        self._ring_at = _layout(ring, cap)[0]
        self.freed_during_copy = 0
        self._mv = memoryview(self._map)
        self._words = shared_words(self._map, HEADER_SIZE)
        self._cur: tuple[int, int, int, int, int, int] | None = None
        """The entry ``read_record`` found last: number, start, end, record
        size, record count, ring address (the next cut record is nearly
        always in it: no search)."""

    def close(self) -> None:
        """Unmap; a ``read_record`` in flight on the NIC's egress thread (the
        context deleted under it by the control thread) keeps the mapping
        until its view goes, and later reads answer False."""
        self._cur = None
        # Not released: a read in flight holds the words (and the mapping)
        # until it returns; dropping our reference frees them otherwise.
        self._words = _CLOSED
        self._mv.release()
        with contextlib.suppress(BufferError):
            self._map.close()

    def _u64(self, index: int) -> int:
        """Shared word ``index`` (``_HEAD``, ``_TAIL``, ``_ACKED``), loaded whole."""
        return int(self._words[index])

    def _offset(self, tcp_seq: int, acked: int) -> int:
        """Stream offset of ``tcp_seq`` read next to the acknowledged offset
        (serial-number arithmetic inside the TCP window, as DeviceTx does)."""
        return acked + seq_diff(tcp_seq, (self.isn + acked) % SEQ_MOD)

    def _entry(self, number: int) -> tuple[int, int, int, int, int, int]:
        slot = HEADER_SIZE + (number % self.capacity) * ENTRY.size
        start, end, sn, rsize, nrec, pos = ENTRY.unpack_from(self._map, slot)
        return start, end, sn, rsize, nrec, pos

    def _find(self, off: int, head: int, tail: int) -> int:
        """The live entry starting at or before stream offset ``off`` (the
        last such; whether it holds ``off`` is the caller's check)."""
        lo_i, hi_i = head, tail
        while hi_i - lo_i > 1:
            mid = (lo_i + hi_i) // 2
            if self._entry(mid)[0] <= off:
                lo_i = mid
            else:
                hi_i = mid
        return lo_i

    def get_record(self, tcp_seq: int) -> RecordInfo | None:
        acked = self._u64(_ACKED)
        head, tail = self._u64(_HEAD), self._u64(_TAIL)
        off = self._offset(tcp_seq, acked)
        if off < acked or off < self.start_offset or head >= tail:
            return None
        i = self._find(off, head, tail)
        start, end, first_sn, rsize, nrec, pos = self._entry(i)
        if not start <= off < end:
            return None
        k = min((off - start) // rsize, nrec - 1)
        lo = k * rsize
        hi = min(lo + rsize, end - start)
        at = self._ring_at + pos
        data = self._map[at + lo : at + hi]  # the DMA read: a transient copy
        if self._u64(_HEAD) > i:  # freed (maybe reused) while copying
            self.freed_during_copy += 1
            return None
        return RecordInfo((self.isn + start + lo) % SEQ_MOD, first_sn + k, memoryview(data))

    def read_record(self, tcp_seq: int, length: int, use: Callable[[memoryview], bool]) -> bool:
        """``use`` the record that starts at ``tcp_seq`` and is ``length``
        bytes long where it lies in host memory (a DMA read, no copy).

        The in-order fast path's read (``offload.netdev.RecordReader``):
        sim-nic seals a record cut by a frame's edge in one call from here
        instead of streaming it across frames.  True when such a record is
        held, ``use`` returned True, and the record was still held after
        ``use`` returned; False otherwise (not a record edge, not held, or
        freed while ``use`` ran: whatever ``use`` made of the bytes may be
        torn and must be thrown away).  ``use`` must not keep the view.
        """
        try:
            words = self._words
            acked = words[_ACKED]
            d = (tcp_seq - self.isn - acked) % SEQ_MOD  # _offset, inlined (once per frame)
            off = acked + (d - SEQ_MOD if d >= _HALF else d)
            cur = self._cur
            if cur is None or not cur[1] <= off < cur[2]:
                head, tail = words[_HEAD], words[_TAIL]
                if off < acked or off < self.start_offset or head >= tail:
                    return False
                i = self._find(off, head, tail)
                start, end, _, rsize, nrec, pos = self._entry(i)
                if not start <= off < end:
                    return False
                cur = self._cur = (i, start, end, rsize, nrec, self._ring_at + pos)
            number, start, end, rsize, nrec, at = cur
            lo = off - start
            k = lo // rsize
            if k >= nrec or k * rsize != lo:  # not where one of its records starts
                return False
            hi = lo + rsize if k < nrec - 1 else end - start
            if hi - lo != length or words[_HEAD] > number:
                return False
            ok = use(self._mv[at + lo : at + hi])
            if words[_HEAD] > number:  # freed (maybe reused) meanwhile
                self.freed_during_copy += 1
                return False
            return ok
        except ValueError:  # closed (the context deleted meanwhile): nothing to read
            return False

    def acked(self, tcp_seq: int) -> bool:
        """The byte at ``tcp_seq`` (at or after the start marker) is
        acknowledged: the host may have freed its entry and written other
        records' plaintext over its ring bytes.

        A frame that starts there is a stale copy - a retransmission cloned
        before the ACK and still queued when it came, whose pages TCP took
        from the ring (``offload.filechunk``) - and its bytes may no longer
        be its records'.  Checked after the frame was read from the TUN:
        a byte not yet acknowledged then was not when the frame was read,
        and neither were the bytes after it (entries are freed in stream
        order), so the frame holds its records' own plaintext.
        """
        try:
            acked = self._words[_ACKED]
        except ValueError:  # closed (the context deleted meanwhile): the driver decides
            return False
        d = (tcp_seq - self.isn - acked) % SEQ_MOD
        return bool(d >= _HALF and acked + d - SEQ_MOD >= self.start_offset)

    def before_start_marker(self, tcp_seq: int, length: int) -> bool:
        off = self._offset(tcp_seq, self._u64(_ACKED))
        return bool(off + length <= self.start_offset)


__all__ = ["StoreFull", "StoreReader", "StoreWriter"]
