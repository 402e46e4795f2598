"""The RX mark ring: what the NIC says about received bytes, beside the bytes.

On Linux a received skb carries its ``decrypted`` bit with it into the
socket; here the NIC process writes the TCP payload into the host's TUN and
the host's kernel hands user space bare bytes, so the mark travels out of
band, keyed by TCP sequence range: the NIC appends a ``MARK`` entry (``seq``,
``length``, generation) to this ring *before* it writes the frame to the
TUN, so the entry is there by the time the host's ``recv`` returns those
bytes.  The driver's calls on the stack (``RxResyncHost``: DRIVER_REQ's
``resync_request``, DRIVER_REQ_ASYNC's start/end) travel in the same ring,
in order with the marks, as completion entries do on a NIC's RX queue.

A shared memory file (``/dev/shm``, created by the host ``O_EXCL|
O_NOFOLLOW`` mode 0600 and unlinked once the NIC mapped it), one producer
(the NIC's back thread) and one consumer (the host's reader).

Layout (little-endian)::

    0   magic "TLSCTLRX"    8  capacity (entries)
    16  head: entries the host consumed (u64, written by the host)
    24  tail: entries published (u64, written by the NIC)
    32  copied: 1 + TCP sequence number the host has read up to (u64, 0 =
        none yet; written by the host: the NIC may forget what it kept for
        bytes before it, see ``offload.netwire.nic_rx``)
    64  entries[capacity], 16 bytes each: kind, generation, seq, length

The producer fills an entry, then publishes ``tail``; the consumer reads up
to ``tail``, then publishes ``head``.  The three words two processes share
(head, tail, copied) are read and written whole
(``offload.netwire.shmwords``), never with ``struct.pack_into``: CPython's
``pack_into`` zero-fills the field and then writes it byte by byte, so the
other process could read 0 or half a value (a ``tail`` read as 0 once
rewound the host's head and lost every mark after it).  Entries need no
such care: the consumer reads only those below a published ``tail``.

A full ring is the NIC's problem (``offload.netwire.nic_rx`` drops the
frame before looking at it, as a NIC with no RX completion room does; TCP
sends it again).

Linux has no such structure: it is the process boundary's stand-in for the
skb's bit and for the driver calling the stack directly.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import struct
from enum import IntEnum

from offload.netwire.shmwords import shared_words

MAGIC = b"TLSCTLRX"
_HDR = struct.Struct("<8sQ")
ENTRY = struct.Struct("<IIII")
HEADER_SIZE = 64
_OFF_HEAD, _OFF_TAIL, _OFF_COPIED = 16, 24, 32
_HEAD, _TAIL, _COPIED = _OFF_HEAD // 8, _OFF_TAIL // 8, _OFF_COPIED // 8
"""The shared words' indexes in the header as native u64 (little-endian on
every platform this runs on, as the layout says)."""
DEFAULT_ENTRIES = 1 << 16
"""64 Ki entries (1 MiB): about one per received frame, far more than a
receive window's worth of frames."""
SHM_DIR = "/dev/shm"


class RingKind(IntEnum):
    """What one ring entry says."""

    MARK = 1
    """``[seq, seq + length)`` reaches the host decrypted by generation ``gen``."""
    RESYNC_REQUEST = 2
    """``tls_offload_rx_resync_request``: a record seems to start at ``seq``."""
    ASYNC_START = 3
    """``..._async_request_start``: a header lies in ``[seq, seq + length)``."""
    ASYNC_END = 4
    """``..._async_request_end``: it is the one at ``seq``."""


Entry = tuple[int, int, int, int]
"""(kind, generation, seq, length)."""


class _Mapped:
    def __init__(self, mapping: mmap.mmap) -> None:
        self._map = mapping
        magic, cap = _HDR.unpack_from(mapping, 0)
        if magic != MAGIC or HEADER_SIZE + cap * ENTRY.size > len(mapping):
            mapping.close()
            raise ValueError("not an RX mark ring")
        self.capacity = int(cap)
        self._words = shared_words(mapping, HEADER_SIZE)
        """The header as u64 words: every shared word read or written whole."""

    def close(self) -> None:
        self._words.release()
        with contextlib.suppress(BufferError):
            self._map.close()


class RingReader(_Mapped):
    """The host side: creates the ring, consumes entries, publishes what it read."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        self.path = os.path.join(SHM_DIR, f"tlsctl-rx-{os.getpid()}-{secrets.token_hex(8)}")
        total = HEADER_SIZE + entries * ENTRY.size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, total)
            mapping = mmap.mmap(fd, total)
        except BaseException:
            os.unlink(self.path)
            raise
        finally:
            os.close(fd)
        _HDR.pack_into(mapping, 0, MAGIC, entries)
        super().__init__(mapping)
        self._head = 0

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close(self) -> None:
        self.unlink()
        super().close()

    def take(self) -> list[Entry]:
        """Every entry published since the last call, oldest first."""
        tail = int(self._words[_TAIL])
        head = self._head
        if tail <= head:  # nothing new (never less: the words are whole)
            return []
        cap, m, unpack = self.capacity, self._map, ENTRY.unpack_from
        out = [unpack(m, HEADER_SIZE + (i % cap) * ENTRY.size) for i in range(head, tail)]
        self._head = tail
        self._words[_HEAD] = tail
        return out

    def copied(self, tcp_seq: int) -> None:
        """The host's socket has returned every byte before ``tcp_seq``."""
        self._words[_COPIED] = 1 + (tcp_seq & 0xFFFFFFFF)


class RingWriter(_Mapped):
    """The NIC side: maps the host's ring read-write and appends entries."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ValueError("RX mark ring too small")
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        super().__init__(mapping)
        self._tail = int(self._words[_TAIL])

    def room(self) -> int:
        """Entries that can be appended now."""
        return self.capacity - (self._tail - int(self._words[_HEAD]))

    def append(self, kind: int, gen: int, seq: int, length: int) -> None:
        """Append one entry (the caller checked ``room``) and publish it."""
        t = self._tail
        ENTRY.pack_into(
            self._map, HEADER_SIZE + (t % self.capacity) * ENTRY.size, kind, gen, seq, length
        )
        self._tail = t + 1
        self._words[_TAIL] = t + 1

    def copied(self) -> int | None:
        """The TCP sequence number the host has read up to (None: nothing yet)."""
        v = int(self._words[_COPIED])
        return None if v == 0 else (v - 1) & 0xFFFFFFFF


__all__ = ["DEFAULT_ENTRIES", "Entry", "RingKind", "RingReader", "RingWriter"]
