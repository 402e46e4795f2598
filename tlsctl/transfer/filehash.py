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
"""

from __future__ import annotations

import hashlib
import os
import threading

_CHUNK = 1 << 20


class FileHasher:
    """Hashes ``size`` bytes of ``fd`` from offset 0 on a daemon thread."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd, self._size = fd, size
        self._hash = hashlib.sha256()
        self._done = 0  # bytes hashed by the thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tlsctl-hash", daemon=True)
        self._thread.start()

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
