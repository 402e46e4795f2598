"""SHA-256 of the file being sent, computed beside the transfer.

``send`` reports the SHA-256 of what it sent.  Hashing after the transfer
read the whole file a second time on the critical path: about 1 s per GiB
here, more than the transfer itself.  A thread now hashes while the
transfer runs: ``os.pread`` (no shared file offset, so the sending loop's
reads are untouched) and ``hashlib``'s update both release the GIL for
large buffers, so on two cores the hash runs beside the sealing instead of
after it, and the file's pages are read while they are still in the cache.

The hash must cover exactly the bytes that went out: the thread hashes the
file's first ``size`` bytes; if fewer were sent (the file shrank, the
transfer stopped), :meth:`FileHasher.digest` hashes that prefix again.

``tlsctl send`` starts the thread as soon as its options are parsed, before
it loads the TLS stack and connects (:func:`start_early`): the start-up
(imports, the TLS context, the handshake; about 0.3-0.4 s here) runs on one
core and leaves the other idle, so part of the file is hashed before the
first record is sealed and less of the hash competes with the sealing loop
and the receiver during the transfer.  While the main thread runs Python
(imports) the thread gets the GIL back only every switch interval (5 ms),
so it reads ``_CHUNK`` = 4 MiB per call rather than 1 MiB (here: about 150
MiB hashed during the start-up instead of 75).  Each read is a fresh
``os.pread``: reading into one reused ``bytearray`` (``preadv`` or
``readinto``) measured three times the system time per GiB on this machine
(0.5 s against 0.15 s; a kernel copy into a destination at that offset in
its page), more than the allocation saves.  This module imports only the
standard library, so starting it costs nothing before the heavy imports.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from typing import BinaryIO

_CHUNK = 4 << 20


class FileHasher:
    """Hashes ``size`` bytes of ``fd`` from offset 0 on a daemon thread."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._size = fd, size
        self._hash = hashlib.sha256()
        self._done = 0  # bytes hashed by the thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlsctl-hash", daemon=True)
        self._thread.start()

    @property
    def fd(self) -> int:
        """The file descriptor being hashed."""
        return self._fd

    def _run(self) -> None:
        try:
            while self._done < self._size and not self._stop.is_set():
                chunk = os.pread(self._fd, min(_CHUNK, self._size - self._done), self._done)
                if not chunk:
                    return  # the file shrank: digest() hashes what was sent
                self._hash.update(chunk)
                self._done += len(chunk)
        except OSError:
            return  # digest() reads again and reports the error there

    def stop(self) -> None:
        """Give up (the transfer failed or was interrupted): no digest wanted."""
        self._stop.set()
        self._thread.join()

    def digest(self, sent: int) -> str:
        """The SHA-256 hex digest of the first ``sent`` bytes of the file."""
        self._thread.join()
        if self._done == sent:
            return self._hash.hexdigest()
        return prefix_digest(self._fd, sent)


def start_early(path: str) -> tuple[BinaryIO, FileHasher] | None:
    """Open ``path`` and start hashing it, if it is a regular file.

    None when it cannot be opened (the sender opens it again and reports
    why, as without this) or is not a regular file: a FIFO or a device is
    left alone, never opened (opening a FIFO would wait for, and closing it
    would cut off, its writer; the sender reads those as a stream).  The
    caller owns both: ``stop()`` the hasher and close the file.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        # O_NONBLOCK: should the path become a FIFO after the stat, the
        # open does not wait for a writer (no effect on a regular file).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        return None
    f = os.fdopen(fd, "rb")
    return f, FileHasher(fd, st.st_size)


def prefix_digest(fd: int, count: int) -> str:
    """SHA-256 of the first ``count`` bytes of ``fd`` (OSError if unreadable)."""
    h = hashlib.sha256()
    done = 0
    while done < count:
        chunk = os.pread(fd, min(_CHUNK, count - done), done)
        if not chunk:
            break
        h.update(chunk)
        done += len(chunk)
    return h.hexdigest()
