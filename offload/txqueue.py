"""The kTLS socket's write queue: sealed records waiting for TCP.

Linux keeps records the socket could not send yet on ``ctx->tx_list`` and
a worker (``tx_work_handler``) pushes them when TCP has room, so a
non-blocking sender may return before its records are on the wire and the
peer still gets every record whole.  :class:`TxQueue` is that list and that
worker for the layer in this process:

* :meth:`TxQueue.push_all` is the one way bytes leave the record layer:
  each framed buffer goes through the TX path (``offload.txpath``), the
  chunks it returns are queued and written;
* :meth:`TxQueue.flush` writes what is queued, never leaving part of a
  record written *and* forgotten: what TCP did not take stays queued;
* the worker thread finishes the queue in the background.

Exception safety.  ``sendmsg`` may write part of the queue and an
exception may land right after it returns - a signal handler raising
KeyboardInterrupt runs at the next bytecode boundary, and one follows the
call before its result is stored.  If the count were lost, the queue would
still hold bytes TCP already took, and the next flush (``close()``'s)
would write them again, tearing a record on the wire.  So:

* the count is recorded by C code (``deque.extend(map(sendmsg, ...))``):
  no bytecode runs between the write and its record;
* the queue and the count not yet applied to it are one value
  (``_state``), replaced by a single assignment once the written bytes are
  cut off: an exception anywhere before it leaves the old queue and the
  count, which the next flush applies first; after it, the new queue.

Whatever exception arrives, and wherever, the queue holds exactly the bytes
TCP has not taken.  (``sendmsg`` interrupted before writing anything fails
with EINTR inside CPython, which then runs the handler: nothing to apply.)

A chunk whose bytes lie in a file (``offload.filechunk.FileChunk``: the
real wire's record ring) is sent from the file's pages, not copied:
``sendfile``, which returns what TCP took just as ``sendmsg`` does, its count
recorded the same way (``map(os.sendfile, ...)``).

What the queue cannot protect is a buffer between the sealer and the queue:
an exception while a batch is sealed loses that batch with its sequence
numbers, so a later record fails its tag at the peer (detected, never a
torn or repeated record).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import TypeAlias, cast

from offload.batch import RecordBuf
from offload.filechunk import REFUSED, FileChunk
from offload.sockwait import ready
from offload.txpath import TxChunk, TxPath

Queued: TypeAlias = memoryview | FileChunk

IOV_MAX = 512
"""Chunks per ``sendmsg`` (Linux's UIO_MAXIOV is 1024)."""


class TxQueue:
    """Chunks for TCP, oldest first, with the TX lock that guards them.

    ``lock`` is the socket's TX lock: whoever frames records holds it
    while it pushes them, so records enter the queue in sequence-number
    order.  ``error`` is the sticky TX error (a write that failed in the
    background, or the sequence space spent): every later send raises it.
    """

    def __init__(self, sock: socket.socket, path: TxPath) -> None:
        self._sock = sock
        self.path = path
        self.lock = threading.RLock()
        self.error: OSError | None = None
        self.closed = False
        # (queued chunks, bytes of them TCP took that are not cut off yet):
        # one value, so that it changes in one step (see the module's doc).
        self._state: tuple[deque[Queued], deque[int]] = (deque(), deque(maxlen=1))
        self._worker: threading.Thread | None = None
        self._files = False
        """File chunks were queued (``sendmsg`` must stop short of them)."""

    @property
    def pending_bytes(self) -> int:
        """Bytes queued and not yet accepted by TCP.

        Safe from any thread without the lock: the sum runs in C, and no
        other Python thread runs in the middle of it."""
        pending, taken = self._state
        return sum(map(len, pending)) - sum(taken)

    def __bool__(self) -> bool:
        return self.pending_bytes > 0

    def check(self) -> None:
        """Raise the sticky TX error, if any."""
        if self.error is not None:
            raise self.error

    def push_all(
        self,
        bufs: Iterable[RecordBuf],
        block: bool,
        *,
        drain: bool = True,
        timeout: float | None = None,
    ) -> bool:
        """Send framed buffers through the TX path and write them.

        With ``block``, each buffer is written before the next is taken
        (``bufs`` may be a generator sealing batch by batch: memory stays
        at one batch).  ``drain`` then empties the path (segments a faulty
        wire still holds).  Returns True when the queue is empty; without
        ``block`` or past ``timeout`` seconds, what TCP did not take stays
        queued (False).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        path = self.path
        for buf in bufs:
            self._append(path.transmit(buf))
            if block:
                self._flush(True, deadline)
        if drain:
            self._append(path.drain())
        return self._flush(block, deadline)

    def flush(self, block: bool, timeout: float | None = None) -> bool:
        """Write queued chunks; True when nothing is left."""
        return self._flush(block, None if timeout is None else time.monotonic() + timeout)

    def try_flush(self) -> None:
        """Push queued bytes if no sender holds the TX side right now.

        A reader must never wait for a writer blocked on a full socket (one
        thread may read while another sends); the sender flushes anyway.
        """
        if self and self.lock.acquire(blocking=False):
            try:
                self._flush(False, None)
            except OSError as exc:
                # A dead TX side must not hide what the peer sent before it
                # hung up (its alert): keep the error for the next send.
                self.error = self.error or exc
            finally:
                self.lock.release()

    def kick(self) -> None:
        """Finish writing queued records in the background (tx_work_handler).

        A non-blocking sender may return before its records are on the wire;
        the kernel pushes them when TCP has room.  This thread does the same
        so the peer always gets whole records even if the caller stops
        sending.
        """
        if not self or (self._worker and self._worker.is_alive()):
            return
        self._worker = threading.Thread(target=self._work, name="ktls-tx-work", daemon=True)
        self._worker.start()

    # -- internals ------------------------------------------------------------

    def _work(self) -> None:
        while not self.closed:
            try:
                select.select([], [self._sock], [], 0.5)
            except (OSError, ValueError):
                return
            with self.lock:
                try:
                    if self._flush(False, None):
                        return
                except OSError as exc:
                    self.error = exc
                    return

    def _append(self, chunks: Iterable[TxChunk]) -> None:
        pending = self._state[0]
        for chunk in chunks:
            if not chunk:
                continue
            if isinstance(chunk, FileChunk):
                if chunk.source.refused:
                    chunk.source.copied += len(chunk)
                    pending.append(chunk.view)
                else:
                    self._files = True
                    pending.append(chunk)
            else:
                pending.append(memoryview(chunk))

    def _flush(self, block: bool, deadline: float | None) -> bool:
        sock = self._sock
        self._settle()
        while self._state[0]:
            pending, taken = self._state
            try:
                if not block and not ready(sock, select.POLLOUT):
                    return False
                try:
                    head = pending[0]
                    if type(head) is FileChunk:
                        self._sendfile(head, taken)
                    else:
                        taken.extend(map(sock.sendmsg, (_iov(pending, self._files),)))
                finally:
                    self._settle()
            except BlockingIOError:
                if not block:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                select.select([], [sock], [], left)
            except InterruptedError:
                continue
        return True

    def _sendfile(self, head: FileChunk, taken: deque[int]) -> None:
        """Send the head chunk from its file's pages; where the kernel
        refuses, every queued chunk of that file becomes its view (copied by
        ``sendmsg``), in one assignment."""
        src = head.source
        try:
            taken.extend(
                map(os.sendfile, (self._sock.fileno(),), (src.fd,), (head.offset,), (len(head),))
            )
            if not taken[0]:  # the file is shorter than the chunk says
                raise OSError(errno.EINVAL, "nothing to send at that offset")
        except OSError as exc:
            if isinstance(exc, BlockingIOError) or exc.errno not in REFUSED:
                raise
            src.refuse(f"sendfile: {exc.strerror}")
            self._settle()
            pending, taken = self._state
            left: deque[Queued] = deque()
            for chunk in pending:
                if type(chunk) is FileChunk and chunk.source is src:
                    src.copied += len(chunk)
                    left.append(chunk.view)
                else:
                    left.append(chunk)
            self._state = (left, taken)
            return
        src.sent += taken[0]

    def _settle(self) -> None:
        """Cut off the bytes TCP took, in one assignment; then give every
        chunk written whole back to the path (its memory may be reused)."""
        pending, taken = self._state
        if not taken:
            return
        rest = taken[0]
        whole = 0
        for chunk in pending:
            if rest < len(chunk):
                break
            rest -= len(chunk)
            whole += 1
        done = list(islice(pending, whole))
        left = deque(islice(pending, whole, None))
        if rest:
            left[0] = left[0][rest:]
        self._state = (left, deque(maxlen=1))  # the commit
        written = self.path.written
        for chunk in done:
            if isinstance(chunk.obj, bytearray):
                written(chunk.obj)


def _iov(pending: deque[Queued], files: bool) -> list[memoryview]:
    """The memory chunks ``sendmsg`` writes next: up to ``IOV_MAX``, and
    (``files``: file chunks may be queued) none from the first file chunk on."""
    if not files:
        return cast("list[memoryview]", list(islice(pending, IOV_MAX)))
    iov: list[memoryview] = []
    for chunk in islice(pending, IOV_MAX):
        if isinstance(chunk, FileChunk):
            break
        iov.append(chunk)
    return iov


__all__ = ["IOV_MAX", "TxQueue"]
