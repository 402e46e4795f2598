"""send's SHA-256, computed beside the transfer, covers exactly what was sent."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tlsctl.transfer.filehash import FileHasher, prefix_digest


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path, data


def test_whole_file(tmp_path: Path) -> None:
    path, data = _file(tmp_path, (3 << 20) + 12345)  # several chunks and a tail
    with path.open("rb") as f:
        f.read(100)  # the sending loop's offset is not the hasher's business
        h = FileHasher(f.fileno(), len(data))
        assert h.digest(len(data)) == hashlib.sha256(data).hexdigest()
        assert f.tell() == 100


def test_fewer_bytes_sent_than_the_size(tmp_path: Path) -> None:
    """The transfer stopped early: the digest is of the prefix that went out."""
    path, data = _file(tmp_path, 2 << 20)
    with path.open("rb") as f:
        h = FileHasher(f.fileno(), len(data))
        assert h.digest(777_777) == hashlib.sha256(data[:777_777]).hexdigest()


def test_file_shrank_during_the_transfer(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 0)
    path.write_bytes(b"")
    with path.open("rb") as f:
        h = FileHasher(f.fileno(), 5 << 20)  # the size seen at the start
        assert h.digest(0) == hashlib.sha256(b"").hexdigest()
    path, data = _file(tmp_path, 1 << 20)
    with path.open("rb") as f:
        h = FileHasher(f.fileno(), 4 << 20)
        assert h.digest(len(data)) == hashlib.sha256(data).hexdigest()


def test_stop_ends_the_thread(tmp_path: Path) -> None:
    path, data = _file(tmp_path, 8 << 20)
    with path.open("rb") as f:
        h = FileHasher(f.fileno(), len(data))
        h.stop()
        assert prefix_digest(f.fileno(), 10) == hashlib.sha256(data[:10]).hexdigest()
