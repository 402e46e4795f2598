"""Control words two processes share through a mapping, read and written whole.

The real wire's shared structures (the TX record store,
``offload.netwire.recstore``, and the RX mark ring,
``offload.netwire.rxring``) publish progress through a few u64 words -
head, tail, acknowledged or copied offsets - with no lock: one process
stores, the other loads.  That is sound only if each store reaches the
other process whole.

``struct.pack_into`` does not give that: CPython's packer zero-fills the
field and then writes it (byte by byte for an explicit byte order), so the
other process can load 0 or half a value.  A torn RX ``tail`` read as 0
once rewound the host's reader and lost every mark after it (about one
256 MiB real-wire transfer in three failed with EBADMSG); a torn TX
``head`` read as 0 would tell the NIC that a record freed and overwritten
under its read was still held.

A native ``Q`` memoryview over the words does: its item load and store are
one aligned 8-byte ``memcpy``, a single instruction on x86-64 and arm64.
Native order is little-endian on every platform this runs on, which is the
order the structures' layouts give.
"""

from __future__ import annotations

import mmap
import sys

if sys.byteorder != "little":  # pragma: no cover - the layouts say little-endian
    raise ImportError("the real wire's shared structures are little-endian")


def shared_words(mapping: mmap.mmap, nbytes: int) -> memoryview:
    """The first ``nbytes`` (a multiple of 8) of ``mapping`` as u64 words,
    word ``i`` at byte offset ``8 * i``: index it to load or store a word
    whole.  Release the view before closing the mapping."""
    return memoryview(mapping)[:nbytes].cast("Q")


__all__ = ["shared_words"]
