"""send's SHA-256, computed beside the transfer, covers exactly what was sent."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.peers import make_pki, openssl_server, sha
from tlsctl import handshake as handshake_module
from tlsctl.cli import main
from tlsctl.transfer import filehash, sender
from tlsctl.transfer.filehash import FileHasher, prefix_digest, start_early


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


def test_start_early_hashes_a_regular_file(tmp_path: Path) -> None:
    """``send`` opens FILE and starts its hash before it loads the TLS stack."""
    path, data = _file(tmp_path, (9 << 20) + 7)  # several 4 MiB reads and a tail
    started = start_early(str(path))
    assert started is not None
    f, h = started
    with f:
        assert h.fd == f.fileno()
        assert f.tell() == 0  # the sender reads from the start
        assert h.digest(len(data)) == hashlib.sha256(data).hexdigest()
        assert f.read() == data


def test_start_early_leaves_what_is_not_a_regular_file_alone(tmp_path: Path) -> None:
    """A FIFO is never opened (that would wait for its writer, and closing
    it would cut the writer off): with no reader, a writer still gets ENXIO."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert start_early(str(fifo)) is None
    with pytest.raises(OSError) as no_reader:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO
    assert start_early(str(tmp_path / "missing")) is None  # the sender says why
    assert start_early(str(tmp_path)) is None  # a directory


def test_send_hashes_before_the_handshake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``tlsctl send FILE``: the file's hash starts before the handshake (it
    used to start with the first record), and the SHA-256 reported is the
    file's and what ``openssl s_server`` got."""
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    path, data = _file(tmp_path, (3 << 20) + 1)
    order: list[str] = []
    real_handshake = handshake_module.run_handshake

    def handshake(*args: Any, **kwargs: Any) -> Any:
        order.append("handshake")
        return real_handshake(*args, **kwargs)

    class Hasher(FileHasher):
        def __init__(self, fd: int, size: int) -> None:
            order.append(f"hash {size} bytes")
            super().__init__(fd, size)

    monkeypatch.setattr(sender, "run_handshake", handshake)
    monkeypatch.setattr(filehash, "FileHasher", Hasher)
    monkeypatch.setattr(sender, "FileHasher", Hasher)
    got = tmp_path / "got.bin"
    with got.open("wb") as out, openssl_server(pki.cert, pki.key, out) as (proc, port):
        status = main(
            [
                *("send", str(path), "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca)),
                *("-servername", "localhost", "--offload", "sw", "--json"),
            ]
        )
        proc.wait(10)
    assert status == 0
    assert order == [f"hash {len(data)} bytes", "handshake"]
    summary = json.loads(capsys.readouterr().out)
    assert summary["sha256"] == hashlib.sha256(data).hexdigest() == sha(got)
