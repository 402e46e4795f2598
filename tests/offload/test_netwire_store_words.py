"""The TX record store across two processes: its control words are never torn.

The host (writer) and the NIC (reader) share the store's ``head``,
``tail`` and ``acked`` words (``offload.netwire.recstore``) with no lock.
The NIC's rule "a record whose entry ``head`` passed during my read was
freed, and what I read may be torn" holds only if every load of ``head``
sees a whole value: a ``head`` torn to 0 passes a record freed and
overwritten under the read as still held.  ``struct.pack_into`` (what the
store used) zero-fills then writes, so another process could load 0 or
half a value; ``offload.netwire.shmwords`` stores each word whole.

A forked child appends and frees in a loop, so every word only grows; this
process loads the words millions of times and checks that none ever goes
back.  A correct store can show nothing else, so the test cannot pass by
luck the other way.
"""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from offload.netwire.recstore import _ACKED, _HEAD, _TAIL, StoreReader, StoreWriter

pytestmark = pytest.mark.timeout(120)
READS = 1_000_000
BIG = 0x0101_0101_0101
"""Offsets start here: every byte of the words is non-zero once written, so
a zero-filled or half-written word reads as a smaller value."""


def test_nic_loads_only_whole_store_words_while_the_host_appends_and_frees() -> None:
    st = StoreWriter(0, BIG, ring_size=1 << 16, entries=64)
    rd = StoreReader(st.path)
    buf = bytearray(64)

    def work() -> None:
        off = BIG
        while True:
            st.append(buf, off, 0, 64, 1)
            off += 64
            st.free(off)

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child process
        try:
            work()
        finally:
            os._exit(1)
    try:
        last = {w: rd._u64(w) for w in (_HEAD, _TAIL, _ACKED)}
        went_back = 0
        for _ in range(READS // 3):
            for w in (_HEAD, _TAIL, _ACKED):
                v = rd._u64(w)
                went_back += v < last[w]
                last[w] = v
        assert last[_ACKED] > BIG, "the writer never ran"
        assert went_back == 0, f"{went_back} torn loads of the store's words"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        rd.close()
        st.close()
