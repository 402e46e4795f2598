"""Chunks TCP may take from a file's pages without a copy: splice.

``sendmsg`` copies every byte it sends into the socket's buffers.  When the
bytes of a chunk also lie in a file - the real wire's record ring is a
``/dev/shm`` file mapped by the host, see ``offload.netwire.recstore`` -
the write queue can instead ``splice`` them: ``splice(file -> pipe)`` links
the file's pages into a pipe (shmem's ``splice_read`` takes a page
reference, no copy) and ``splice(pipe -> socket)`` hands those references to
TCP (``MSG_SPLICE_PAGES``: the pages become the skb's fragments).  It is
``sendfile`` done in two steps, so the source can be any range of the file
and the write queue keeps its own bookkeeping.

What TCP then holds are references to the file's pages, not a copy: until
it has the bytes acknowledged, retransmissions read whatever the pages hold
*then*.  A chunk's owner must therefore not rewrite a page before TCP has
acknowledged every byte sent from it - which the record ring already
guarantees (it reuses space only after ``TCP_INFO.tcpi_bytes_acked`` passed
it, ``offload.netwire.txpath.NetTxPath.poll_acks``).  The copies TCP does
not own any more - a retransmitted clone still queued at a device when the
ACK arrives - may carry the new bytes; see ``NetTxPath``'s docstring for
why the NIC never sends those.

:class:`FileChunk` is such a chunk (the bytes in memory, and where they lie
in the file), :class:`FileSource` the file with its counters, and
:class:`SplicePipe` the pipe in front of one socket.  The kernel may refuse
the splice (a file without ``splice_read``, a pipe that cannot be made):
then the chunk's bytes go by ``sendmsg`` as before, and the source counts
them (``copied``) and says why (``refused``).
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import socket
import termios
import weakref

PIPE_SIZE = 1 << 20
"""Bytes the pipe holds (``F_SETPIPE_SZ``, capped by
``/proc/sys/fs/pipe-max-size``): one splice each way moves up to this much."""

REFUSED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE, errno.EBADF})
"""Errors that mean splice cannot be used here (not that the socket
failed): the bytes go by ``sendmsg`` instead."""


class FileSource:
    """A file whose pages chunks may be spliced from; closes its descriptor
    when the last chunk (and its owner) let it go, so a chunk still queued
    after its owner closed never splices from a reused descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.spliced = 0
        """Bytes moved from the file into a pipe towards TCP (no copy)."""
        self.copied = 0
        """Bytes of this file's chunks sent by ``sendmsg`` (splice refused)."""
        self.refused = ""
        """Why splice was refused (the first error), empty while it works."""
        self._finalizer = weakref.finalize(self, os.close, fd)

    def refuse(self, reason: str) -> None:
        """Splice does not work for this file: every later chunk is copied."""
        self.refused = self.refused or reason


class FileChunk:
    """Bytes for TCP that are ``view`` in memory and ``source``'s file at
    ``offset``: the write queue splices them unless the source refused."""

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


class SplicePipe:
    """A pipe in front of one socket: file pages pass through it to TCP.

    Bytes spliced into the pipe are the socket's from then on (the write
    queue counts them taken); the pipe is emptied into the socket before
    anything else is written to it, so the stream keeps its order.  What it
    holds is read from the kernel (``FIONREAD``), never counted in Python,
    so an exception between two system calls loses no byte.
    """

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._finalizer = weakref.finalize(self, _close_pair, self.r, self.w)
        # Over the user's pipe quota the default size works too, in more calls.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, min(PIPE_SIZE, _pipe_max()))
        self.size = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)
        self._count = array.array("i", [0])

    def held(self) -> int:
        """Bytes in the pipe, not yet in the socket."""
        fcntl.ioctl(self.r, termios.FIONREAD, self._count)
        return self._count[0]

    def push(self, sock: socket.socket) -> None:
        """Move everything held into the socket; ``BlockingIOError`` when
        the socket (non-blocking) is full, the rest staying held."""
        fd = sock.fileno()
        n = self.held()
        while n:
            os.splice(self.r, fd, n)
            n = self.held()

    def take_back(self) -> bytes:
        """Read out (copy) what the pipe holds: the socket refused splice."""
        out = bytearray()
        while n := self.held():
            out += os.read(self.r, n)
        return bytes(out)

    def close(self) -> None:
        self._finalizer()


def _pipe_max() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return PIPE_SIZE


def _close_pair(r: int, w: int) -> None:
    os.close(r)
    os.close(w)


__all__ = ["PIPE_SIZE", "REFUSED", "FileChunk", "FileSource", "SplicePipe"]
