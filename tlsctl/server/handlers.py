"""What ``tlsctl serve`` does with one established connection.

Each mode is a function from a channel to a dict of facts for the log line
(bytes in/out, SHA-256, file).  They run in the connection's own thread and
raise :class:`ChannelError` for anything the peer did wrong; the server
turns that into one log line and carries on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tlsctl.session.channel import ChannelError, KtlsChannel, OpenSSLChannel

Chan = KtlsChannel | OpenSSLChannel
Handler = Callable[[Chan, int], dict[str, Any]]
_RECV = 1 << 20


def _chunks(chan: Chan) -> Iterator[memoryview]:
    """The stream as views of one reused buffer, each valid until the next.

    ``recv_into`` lets the layer decrypt straight into this buffer, so the
    receive path costs the socket copy and the AEAD and nothing more.
    The buffer is an anonymous mapping rather than a ``bytearray``: its
    pages are touched only as data arrives (a connection that never sends
    costs no memory) and go back to the system when the last view of it is
    dropped, instead of staying in the allocator's heap.
    """
    buf = memoryview(mmap.mmap(-1, _RECV))
    while n := chan.recv_into(buf):
        yield buf[:n]


def sink(chan: Chan, _conn_id: int) -> dict[str, Any]:
    """Count and discard: the throughput of the receive path alone."""
    total = 0
    for data in _chunks(chan):
        total += len(data)
    return {"bytes_in": total}


def hash_sink(chan: Chan, _conn_id: int) -> dict[str, Any]:
    """Count, hash and discard: for checking a transfer without storing it."""
    total = 0
    h = hashlib.sha256()
    for data in _chunks(chan):
        h.update(data)
        total += len(data)
    return {"bytes_in": total, "sha256": h.hexdigest()}


def echo(chan: Chan, _conn_id: int) -> dict[str, Any]:
    """Send back every byte as it arrives (records may be re-split)."""
    total = 0
    for data in _chunks(chan):
        chan.send_all(data)
        total += len(data)
    return {"bytes_in": total, "bytes_out": total}


class HandlerError(ChannelError):
    """A handler failed after doing something the log line must still show
    (how many bytes it stored, and where the partial file is)."""

    def __init__(self, message: str, facts: dict[str, Any]) -> None:
        super().__init__(message)
        self.facts = facts


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PARTIAL = ".partial"


@dataclass(frozen=True)
class Store:
    """``--save-dir DIR`` (a new file per connection) or ``-o FILE`` (one).

    Nothing lost, nothing false:

    * Names resolve under a descriptor of the directory opened at start-up
      (``dir_fd``), so swapping the directory's path for a symlink later
      changes nothing, and every file is created with
      ``O_CREAT|O_EXCL|O_NOFOLLOW``: a name that exists, or a symlink
      planted in a shared (1777) directory, is never written through.
    * The stream goes to ``NAME.partial`` and becomes ``NAME`` only after the
      peer's close_notify (flushed and fsync'ed first), by a hard link that
      fails rather than replace anything, then unlinking the partial name.
      A connection that ends any other way keeps ``NAME.partial`` (or
      removes it, ``keep_partial=False``): it never looks complete.
    * The file is created at the first byte (or at a clean close with no
      data), so connections that fail before sending data leave nothing.
    * ``--save-dir`` names are ``conn-<run>-w<worker>-<n>.bin``: ``<run>`` is
      the start time of ``serve`` (UTC) plus a random tag, so files sort by
      run, then worker, then connection, and never collide across the
      workers of one run or across runs on the same directory.

    The SHA-256 is computed on the way; memory use does not grow with the
    stream.
    """

    dir_fd: int
    dir_path: str
    name: str | None = None  # -o FILE: the one name; None: --save-dir names
    run: str = ""
    worker: int = 0
    file_mode: int = 0o600
    keep_partial: bool = True

    def final_name(self, conn_id: int) -> str:
        if self.name is not None:
            return self.name
        return f"conn-{self.run}-w{self.worker}-{conn_id:06d}.bin"

    def path(self, name: str) -> str:
        return os.path.join(self.dir_path, name)

    def __call__(self, chan: Chan, conn_id: int) -> dict[str, Any]:
        final = self.final_name(conn_id)
        partial = final + PARTIAL
        h = hashlib.sha256()
        total = 0
        out: io.FileIO | None = None
        try:
            for data in _chunks(chan):
                if out is None:
                    out = self._create(partial)
                _write_all(out, data)
                h.update(data)
                total += len(data)
            facts: dict[str, Any] = {"bytes_in": total, "sha256": h.hexdigest()}
            if not chan.peer_closed:  # EOF without close_notify: the server says so
                facts.update(self._abandon(out, partial), truncated=True)
                return facts
            if out is None:
                out = self._create(partial)  # a clean, empty upload is a file too
            self._commit(out, partial, final, facts)
            return {**facts, "file": self.path(final)}
        except HandlerError:
            raise
        except BaseException as exc:
            facts = {"bytes_in": total, "truncated": True}
            with contextlib.suppress(OSError):
                facts.update(self._abandon(out, partial))
            if isinstance(exc, OSError):  # our side: the disk, not the peer
                text = f"cannot write {self.path(partial)}: {exc.strerror or exc}"
                raise HandlerError(text, facts) from None
            if isinstance(exc, ChannelError):
                raise HandlerError(str(exc), facts) from None
            raise

    def _create(self, name: str) -> io.FileIO:
        """Unbuffered: each chunk is already up to 1 MiB, and what was
        received is in the file (``.partial``) as soon as it is decrypted."""
        try:
            fd = os.open(name, _CREATE, self.file_mode, dir_fd=self.dir_fd)
        except FileExistsError:
            raise OSError(
                errno.EEXIST, "exists (not created by this serve: not overwritten)"
            ) from None
        try:
            os.fchmod(fd, self.file_mode)  # exactly as asked, whatever the umask
            return io.FileIO(fd, "wb")
        except BaseException:
            os.close(fd)
            raise

    def _commit(self, out: io.FileIO, partial: str, final: str, facts: dict[str, Any]) -> None:
        """fsync, then give the file its final name without replacing anything.

        A hard link (``linkat``) fails with EEXIST instead of replacing, which
        ``rename`` would do.  If naming fails the whole stream stays in the
        ``.partial`` file (kept whatever ``keep_partial`` says: it is complete).
        """
        with out:
            os.fsync(out.fileno())
        try:
            os.link(
                partial,
                final,
                src_dir_fd=self.dir_fd,
                dst_dir_fd=self.dir_fd,
                follow_symlinks=False,
            )
        except OSError as exc:
            why = (
                "appeared while the upload ran (not overwritten)"
                if exc.errno == errno.EEXIST
                else f"cannot be created: {exc.strerror or exc}"
            )
            raise HandlerError(
                f"{self.path(final)} {why}; the complete stream is in {self.path(partial)}",
                {**facts, "file": self.path(partial)},
            ) from None
        os.unlink(partial, dir_fd=self.dir_fd)
        with contextlib.suppress(OSError):  # the new name survives a crash too
            os.fsync(self.dir_fd)

    def _abandon(self, out: io.FileIO | None, partial: str) -> dict[str, Any]:
        """Close a stream that did not end cleanly: keep or remove ``.partial``."""
        if out is None:
            return {}
        out.close()
        if self.keep_partial:
            return {"file": self.path(partial)}
        os.unlink(partial, dir_fd=self.dir_fd)
        return {"file_removed": self.path(partial)}


def _write_all(out: io.FileIO, data: memoryview) -> None:
    while data:
        n = out.write(data)
        data = data[n or 0 :]
