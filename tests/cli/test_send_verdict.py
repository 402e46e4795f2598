"""``tlsctl send`` exits 0 only when the peer got every byte (issue 11, item 3).

Real peers that stop early in every way a server can: ``openssl s_server``
closing right after the handshake, Python's ssl closing (close_notify) or
resetting in the middle, a server that reads exactly the file and closes
without reading our close_notify, and tlslite-ng sending a fatal alert
mid-stream.  Each must give exit status 3, one line naming the bytes sent and
what the peer did, and ``"ok": false`` in ``--json``; what the server wrote
is hashed to show it really did not get the file.  The good paths (s_server
writing to a file, Python's ssl reading to the end) give 0 and equal hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.peers import (
    OPENSSL,
    Pki,
    free_port,
    make_pki,
    openssl_server,
    run_tlsctl,
    sha,
    spawn,
    wait_port,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("data")
    out = {}
    for n in (20_000, 1 << 20, 4 << 20):
        p = d / f"f{n}.bin"
        p.write_bytes(os.urandom(n))
        out[n] = p
    return out


def send(pki: Pki, port: int, src: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tlsctl(
        "send",
        str(src),
        "-connect",
        f"localhost:{port}",
        "-CAfile",
        str(pki.ca),
        "--json",
        "--timeout",
        "10",
        *args,
    )


def failed(r: subprocess.CompletedProcess[str], size: int) -> tuple[str, dict[str, Any]]:
    """Exit 3, one line on stderr, and the same verdict as JSON on stdout."""
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    verdict = json.loads(r.stdout)
    assert verdict["ok"] is False and verdict["error"] in lines[0]
    assert isinstance(verdict["bytes_sent"], int) and 0 <= verdict["bytes_sent"] <= size
    assert f"of {size} bytes" in lines[0] or f"all {size} bytes" in lines[0]
    return lines[0], verdict


# --- openssl s_server that closes right after the handshake ---------------------------


@pytest.mark.parametrize("size", [20_000, 1 << 20, 4 << 20])
def test_s_server_closing_after_the_handshake_is_not_success(
    pki: Pki, data: dict[int, Path], tmp_path: Path, size: int
) -> None:
    """``s_server -quiet`` with stdin at EOF sends close_notify and closes at once:
    it wrote nothing, so send must not say it delivered the file."""
    out = tmp_path / "got.bin"
    port = free_port()
    cmd = [
        OPENSSL,
        "s_server",
        "-quiet",
        "-naccept",
        "1",
        "-accept",
        str(port),
        "-cert",
        str(pki.cert),
        "-key",
        str(pki.key),
    ]
    with (
        out.open("wb") as f,
        spawn(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.DEVNULL) as proc,
    ):
        wait_port(port, proc)
        r = send(pki, port, data[size])
        proc.wait(10)
    line, _verdict = failed(r, size)
    assert "peer" in line and "sent" in line
    assert out.stat().st_size < size and sha(out) != sha(data[size])


def test_s_server_good_path(pki: Pki, data: dict[int, Path], tmp_path: Path) -> None:
    out = tmp_path / "got.bin"
    with out.open("wb") as f, openssl_server(pki.cert, pki.key, f) as (proc, port):
        r = send(pki, port, data[4 << 20])
        proc.wait(10)
    assert r.returncode == 0, r.stderr
    verdict = json.loads(r.stdout)
    assert verdict["ok"] is True and verdict["bytes_sent"] == 4 << 20
    assert verdict["sha256"] == sha(out) == sha(data[4 << 20])


# --- Python's ssl as a server that stops in the middle ---------------------------------


def _read(s: ssl.SSLSocket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(min(65536, n - len(got)))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def reset_after(s: ssl.SSLSocket, n: int) -> bytes:
    got = _read(s, n)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    s.close()  # RST
    return got


def close_notify_after(s: ssl.SSLSocket, n: int) -> bytes:
    """close_notify, then close the socket, leaving the rest unread."""
    got = _read(s, n)
    s.setblocking(False)
    with contextlib.suppress(ssl.SSLError):  # want-read, or our data after its close
        s.unwrap()  # the first SSL_shutdown sends its close_notify
    s.close()
    return got


def read_to_the_end(s: ssl.SSLSocket, _n: int) -> bytes:
    """A normal receiver: to the peer's close_notify, answer, close."""
    got = bytearray()
    while chunk := s.recv(65536):
        got += chunk
    s.unwrap().close()
    return bytes(got)


@contextlib.contextmanager
def python_server(
    pki: Pki, behave: Callable[[ssl.SSLSocket, int], bytes], n: int
) -> Iterator[tuple[int, dict[str, bytes]]]:
    """One connection to Python's ssl, handled by ``behave``; what it read in
    ``box["got"]`` once the context exits."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    box: dict[str, bytes] = {}
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(30)

        def run() -> None:
            raw, _ = ls.accept()
            raw.settimeout(30)
            with ctx.wrap_socket(raw, server_side=True) as s:
                box["got"] = behave(s, n)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        yield ls.getsockname()[1], box
        t.join(30)


@pytest.mark.parametrize(
    ("behave", "said"),
    [
        (reset_after, "reset"),
        (close_notify_after, "peer"),
    ],
)
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_python_server_stopping_mid_stream(
    pki: Pki,
    data: dict[int, Path],
    behave: Callable[[ssl.SSLSocket, int], bytes],
    said: str,
    version: str,
) -> None:
    size = 4 << 20
    with python_server(pki, behave, 256 << 10) as (port, box):
        r = send(pki, port, data[size], version)
    line, _verdict = failed(r, size)
    assert said in line
    assert len(box["got"]) == 256 << 10  # what it read: a prefix, not the file
    assert box["got"] == data[size].read_bytes()[: 256 << 10]


@pytest.mark.parametrize("size", [20_000, 1 << 20])
def test_server_that_reads_everything_but_not_our_close_notify(
    pki: Pki, data: dict[int, Path], size: int
) -> None:
    """It knows the length, reads exactly that, sends close_notify (one
    SSL_shutdown, which does not read) and closes: its close_notify is not an
    answer to ours (they cross), so nothing proves it read to the end of the
    stream: exit 3 (the reset, or our close_notify never acknowledged, tells)."""
    from OpenSSL import SSL

    from tlsctl.tlsconf import TlsOptions, server_context

    ctx = server_context(TlsOptions(), cert=str(pki.cert), key=str(pki.key))
    got = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(30)

        def run() -> None:
            raw, _ = ls.accept()
            raw.setblocking(True)  # pyOpenSSL wants a blocking socket; bounded by:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
            conn = SSL.Connection(ctx, raw)
            conn.set_accept_state()
            while len(got) < size:
                got.extend(conn.recv(size - len(got)))
            conn.shutdown()  # close_notify out; ours is not read
            raw.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        r = send(pki, ls.getsockname()[1], data[size])
        t.join(30)
    line, _verdict = failed(r, size)
    assert f"all {size} bytes" in line
    assert bytes(got) == data[size].read_bytes()


def test_python_server_good_path(pki: Pki, data: dict[int, Path]) -> None:
    with python_server(pki, read_to_the_end, 0) as (port, box):
        r = send(pki, port, data[1 << 20])
    assert r.returncode == 0, r.stderr
    verdict = json.loads(r.stdout)
    assert verdict["ok"] is True
    assert verdict["sha256"] == hashlib.sha256(box["got"]).hexdigest() == sha(data[1 << 20])


@pytest.mark.parametrize("offload", ["sw", "none"])
def test_server_that_stops_reading(pki: Pki, tmp_path: Path, offload: str) -> None:
    """After the handshake the server reads nothing: once the socket buffers
    are full a send waits ``--timeout`` and fails.  Exit 3 and one line with
    every offload (with ``none`` the socket's TimeoutError used to escape as
    a traceback: the channel now raises it as its ChannelTimeout)."""
    size = 64 << 20  # more than loopback's socket buffers hold
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(size))
    hung_up = threading.Event()

    def stall(_s: ssl.SSLSocket, _n: int) -> bytes:
        hung_up.wait(30)
        return b""

    with python_server(pki, stall, 0) as (port, _box):
        r = send(pki, port, src, "--offload", offload, "--timeout", "2")
        hung_up.set()
    line, verdict = failed(r, size)
    assert "send failed: timed out" in line
    assert verdict["offload"] == offload and verdict["bytes_sent"] < size


# --- tlslite-ng: a fatal alert in the middle of the stream -----------------------------


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("offload", ["sw", "none"])
def test_fatal_alert_mid_stream(
    pki: Pki, data: dict[int, Path], version: str, offload: str
) -> None:
    tlslite = pytest.importorskip("tlslite.api")
    from tlslite.constants import AlertDescription  # type: ignore[import-untyped]
    from tlslite.errors import TLSLocalAlert  # type: ignore[import-untyped]

    chain = tlslite.X509CertChain()
    chain.parsePemList(pki.rsa_cert.read_text())
    key = tlslite.parsePEMKey(pki.rsa_key.read_text(), private=True)
    got = bytearray()
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(30)

        def run() -> None:
            raw, _ = ls.accept()
            raw.settimeout(30)
            conn = tlslite.TLSConnection(raw)
            conn.handshakeServer(
                certChain=chain, privateKey=key, settings=tlslite.HandshakeSettings()
            )
            while len(got) < 100_000:
                got.extend(conn.read())
            with contextlib.suppress(TLSLocalAlert):
                for _ in conn._sendError(AlertDescription.internal_error, "test"):
                    pass
            raw.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        r = send(pki, ls.getsockname()[1], data[4 << 20], version, "--offload", offload)
        t.join(30)
    line, _verdict = failed(r, 4 << 20)
    assert "internal_error" in line
    assert bytes(got) == data[4 << 20].read_bytes()[: len(got)]
