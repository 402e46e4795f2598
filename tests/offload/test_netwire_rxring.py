"""The RX mark ring across two processes: its control words are never torn.

The NIC process and the host's reader share the ring's head, tail and
``copied`` words (``offload.netwire.rxring``) with no lock, so each store
must reach the other process whole.  ``struct.pack_into`` does not do
that: CPython zero-fills the field and then writes it byte by byte, so a
reader in the other process can see 0 or a partial value.  A ``tail``
read as 0 made the host's reader move its ``head`` back to 0, so the
marks that followed were never taken: the host then got NIC-decrypted
bytes with no mark and failed the record with EBADMSG (one 256 MiB
transfer in three on the real wire).  A partial ``copied`` could make the
NIC forget decrypted ranges the host had not read yet.

These tests run a writer in a forked child and read in this process,
checking every value read.  They cannot pass by luck the other way: a
whole store is the only thing a correct ring can show.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

import pytest

from offload.netwire.rxring import RingKind, RingReader, RingWriter

pytestmark = pytest.mark.timeout(120)
ENTRIES = 300_000
READS = 2_000_000
COPIED = (0x89ABCDEE, 0x12345677)
"""Two sequence numbers with no zero byte in ``1 + seq`` (the stored form)."""


def _child(work: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        code = 0
        try:
            work()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _reap(pid: int) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    return status


def test_reader_takes_every_entry_once_in_order_while_the_nic_appends() -> None:
    """The NIC appends entries numbered 0, 1, 2 ...; the host takes them all,
    each once, in order (a torn ``tail`` rewound the host's head)."""
    ring = RingReader(entries=1024)

    def write() -> None:
        w = RingWriter(ring.path)
        for i in range(ENTRIES):
            while not w.room():
                pass
            w.append(RingKind.MARK, 1, i, 0)

    pid = _child(write)
    try:
        expected = 0
        while expected < ENTRIES:
            for _kind, _gen, seq, _length in ring.take():
                assert seq == expected, f"entry {seq} taken where {expected} was due"
                expected += 1
    finally:
        _reap(pid)
        ring.close()


def test_nic_reads_only_whole_copied_values() -> None:
    """The host publishes ``copied`` over and over; every value the NIC reads
    is one the host wrote (never 0 once written, never half of one)."""
    ring = RingReader(entries=16)
    w = RingWriter(ring.path)

    def publish() -> None:
        while True:
            for seq in COPIED:
                ring.copied(seq)

    pid = _child(publish)
    try:
        seen: set[int | None] = set()
        while not seen & set(COPIED):
            seen.add(w.copied())
        torn = 0
        for _ in range(READS):
            if w.copied() not in COPIED:
                torn += 1
        assert torn == 0, f"{torn} torn reads of copied"
    finally:
        _reap(pid)
        w.close()
        ring.close()
