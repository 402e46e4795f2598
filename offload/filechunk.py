"""Chunks TCP may take from a file's pages without a copy.

``sendmsg`` copies every byte it sends into the socket's buffers.  When the
bytes of a chunk also lie in a file - the real wire's record ring is a
``/dev/shm`` file mapped by the host, see ``offload.netwire.recstore`` -
the write queue can instead ``sendfile`` that range of the file: the
kernel splices it through its internal pipe (shmem's ``splice_read`` takes
a page reference, no copy) into TCP (``MSG_SPLICE_PAGES``: the pages become
the skb's fragments).  Like ``sendmsg`` it returns what TCP took, so the
queue's bookkeeping is the same for both.  (A pipe of our own with
``splice(file -> pipe)``, ``splice(pipe -> socket)`` does the same in two
calls and leaves bytes in the pipe when the socket is full, to be tracked
apart; ``sendfile`` leaves none.)

What TCP then holds are references to the file's pages, not a copy: until
it has the bytes acknowledged, retransmissions read whatever the pages hold
*then*.  A chunk's owner must therefore not rewrite a page before TCP has
acknowledged every byte sent from it - which the record ring already
guarantees (it reuses space only after ``TCP_INFO.tcpi_bytes_acked`` passed
it, ``offload.netwire.txpath.NetTxPath.poll_acks``).  The copies TCP does
not own any more - a retransmitted clone still queued at a device when the
ACK arrives - may carry the new bytes; ``offload.netwire.txpath``'s
docstring says why the NIC never sends those.

:class:`FileChunk` is such a chunk (the bytes in memory, and where they lie
in the file), :class:`FileSource` the file with its counters.  The kernel
may refuse (a file without ``splice_read``: EINVAL): then the chunk's bytes
go by ``sendmsg`` as before, and the source counts them (``copied``) and
says why (``refused``).
"""

from __future__ import annotations

import errno
import os
import weakref

REFUSED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE})
"""``sendfile`` errors that mean the file cannot be sent from (not that the
socket failed): the bytes go by ``sendmsg`` instead."""


class FileSource:
    """A file whose pages chunks may be sent from; closes its descriptor
    when the last chunk (and its owner) let it go, so a chunk still queued
    after its owner closed never reads a reused descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sent = 0
        """Bytes TCP took from the file's pages (no copy)."""
        self.copied = 0
        """Bytes of this file's chunks sent by ``sendmsg`` (refused)."""
        self.refused = ""
        """Why the file cannot be sent from (the first error), empty while it can."""
        self._finalizer = weakref.finalize(self, os.close, fd)

    def refuse(self, reason: str) -> None:
        """The file cannot be sent from: every later chunk is copied."""
        self.refused = self.refused or reason


class FileChunk:
    """Bytes for TCP that are ``view`` in memory and ``source``'s file at
    ``offset``: the write queue sends them from the file unless the source
    refused."""

    __slots__ = ("offset", "source", "view")

    def __init__(self, view: memoryview, source: FileSource, offset: int) -> None:
        self.view = view
        self.source = source
        self.offset = offset

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: slice) -> FileChunk:
        """The chunk from ``index.start`` on (what TCP has not taken yet)."""
        start = index.start or 0
        return FileChunk(self.view[start:], self.source, self.offset + start)

    @property
    def obj(self) -> object:
        """The memory the chunk's bytes lie in (the file's mapping)."""
        return self.view.obj


__all__ = ["REFUSED", "FileChunk", "FileSource"]
