"""The write queue sends file chunks from the file's pages
(``offload.filechunk``): the bytes arrive in stream order with the memory
chunks around them, a full non-blocking socket leaves the rest queued
(counted pending, finished by a later flush), and a file the kernel will
not send from goes by ``sendmsg``, counted."""

from __future__ import annotations

import hashlib
import mmap
import os
import socket
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from offload.batch import RecordBuf
from offload.filechunk import FileChunk, FileSource
from offload.txpath import DirectPath, TxChunk
from offload.txqueue import TxQueue


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(srv.getsockname())
    b, _ = srv.accept()
    srv.close()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _shm_file(tmp_path: Path, data: bytes) -> tuple[FileSource, mmap.mmap]:
    """A file in /dev/shm (shmem, as the record ring) holding ``data``."""
    path = Path("/dev/shm") / f"tlsctl-test-filechunk-{os.getpid()}-{tmp_path.name}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.unlink(path)
    os.write(fd, data)
    return FileSource(fd), mmap.mmap(fd, len(data))


class ChunkPath(DirectPath):
    """A TX path handing the queue a test's chunks (file chunks among them)
    the way a path returns them: one per buffer pushed, in order."""

    def __init__(self, chunks: list[TxChunk]) -> None:
        super().__init__()
        self.chunks = deque(chunks)

    def transmit(self, buf: RecordBuf) -> Sequence[TxChunk]:  # type: ignore[override]
        return (self.chunks.popleft(),)


def _push(queue: TxQueue, chunks: list[TxChunk], block: bool) -> bool:
    """Queue ``chunks`` (through a ``ChunkPath``) and write them."""
    queue.path = ChunkPath(chunks)
    with queue.lock:
        return queue.push_all([bytearray() for _ in chunks], block)


def _read_all(sock: socket.socket, n: int, out: bytearray) -> None:
    while len(out) < n:
        got = sock.recv(1 << 20)
        if not got:
            return
        out += got


def test_file_chunks_are_sent_from_the_file_in_stream_order(
    tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    a, b = tcp_pair
    data = os.urandom(3 << 20)
    source, m = _shm_file(tmp_path, data)
    view = memoryview(m)
    queue = TxQueue(a, DirectPath())
    head, mid, tail = b"head" * 1000, b"middle" * 5000, b"tail" * 3000
    chunks: list[TxChunk] = [
        bytearray(head),
        FileChunk(view[100 : 2 << 20], source, 100),
        bytearray(mid),
        FileChunk(view[(2 << 20) + 7 :], source, (2 << 20) + 7),
        bytearray(tail),
    ]
    want = head + data[100 : 2 << 20] + mid + data[(2 << 20) + 7 :] + tail
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(b, len(want), got))
    reader.start()
    assert _push(queue, chunks, True)
    reader.join(30)
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
    assert source.sent == len(want) - len(head) - len(mid) - len(tail)
    assert source.copied == 0 and source.refused == ""
    assert queue.pending_bytes == 0
    view.release()


def test_full_socket_leaves_the_rest_queued_counted_pending(
    tcp_pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """Non-blocking: what TCP did not take of a file chunk stays queued
    (the chunk cut where TCP stopped), ``pending_bytes`` counts it, and a
    later blocking flush finishes the stream in order."""
    a, b = tcp_pair
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    data = os.urandom(8 << 20)
    source, m = _shm_file(tmp_path, data)
    queue = TxQueue(a, DirectPath())
    done = _push(queue, [FileChunk(memoryview(m), source, 0), bytearray(b"end")], False)
    assert not done
    pending = queue.pending_bytes
    assert 0 < pending < len(data) + 3
    assert 0 < source.sent == len(data) - pending + 3  # TCP took part of the file chunk
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(b, len(data) + 3, got))
    reader.start()
    with queue.lock:
        a.setblocking(True)
        assert queue.flush(True)
    reader.join(30)
    assert bytes(got) == data + b"end"
    assert source.sent == len(data) and queue.pending_bytes == 0


def test_refused_splice_falls_back_to_sendmsg_and_counts(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    """A source the kernel will not send from (an eventfd has no
    ``splice_read``: sendfile gives EINVAL): the chunk's bytes go by
    ``sendmsg``, the source says why and counts them, and later chunks of
    it are copied at once."""
    a, b = tcp_pair
    source = FileSource(os.eventfd(0))
    first, second = os.urandom(300_000), os.urandom(200_000)
    queue = TxQueue(a, DirectPath())
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(b, len(first) + len(second) + 2, got))
    reader.start()
    _push(queue, [bytearray(b"<"), FileChunk(memoryview(first), source, 0)], True)
    assert source.refused.startswith("sendfile: ")
    _push(queue, [FileChunk(memoryview(second), source, 0), bytearray(b">")], True)
    reader.join(30)
    assert bytes(got) == b"<" + first + second + b">"
    assert source.copied == len(first) + len(second) and source.sent == 0
