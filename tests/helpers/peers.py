"""Real TLS peers as processes on 127.0.0.1, with timeouts and cleanup.

Every helper starts its process in a new session and kills the whole group
in ``finally``, so a failing assertion never leaves an ``openssl s_server``
holding a port, and every wait has a deadline so a test cannot hang.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tlsctl.certs import CertKey, make_cert

OPENSSL = "openssl"
TLSCTL = [sys.executable, "-m", "tlsctl.cli"]


def sha(p: Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (files here reach 64 MiB)."""
    h = hashlib.sha256()
    with p.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Is a socket in LISTEN on ``port``?  Read from /proc, not by connecting:
    a probe connection would use up an ``s_server -naccept 1``."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_port(port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 10) -> None:
    """Until something listens on ``port`` (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited early with status {proc.returncode}")
        if listening(port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL after a second, always reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def spawn(cmd: list[str], **kw: Any) -> Iterator[subprocess.Popen[Any]]:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    try:
        yield proc
    finally:
        kill_group(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@dataclass(frozen=True)
class Pki:
    """A CA and a server certificate it issued (localhost, 127.0.0.1), as files."""

    ca: Path
    cert: Path
    key: Path
    rsa_cert: Path
    rsa_key: Path
    self_signed: Path
    self_signed_key: Path
    wrong_name: Path
    wrong_name_key: Path


def _write(path: Path, ck: CertKey) -> tuple[Path, Path]:
    path.with_suffix(".crt").write_bytes(ck.cert_pem())
    path.with_suffix(".key").write_bytes(ck.key_pem())
    return path.with_suffix(".crt"), path.with_suffix(".key")


def make_pki(d: Path) -> Pki:
    ca = make_cert(["tlsctl test CA"], is_ca=True)
    (d / "ca.crt").write_bytes(ca.cert_pem())
    cert, key = _write(d / "server", make_cert(["localhost", "127.0.0.1"], issuer=ca))
    rcert, rkey = _write(
        d / "server-rsa", make_cert(["localhost", "127.0.0.1"], issuer=ca, key_type="rsa")
    )
    scert, skey = _write(d / "selfsigned", make_cert(["localhost", "127.0.0.1"]))
    wcert, wkey = _write(d / "wrongname", make_cert(["elsewhere.example"], issuer=ca))
    return Pki(d / "ca.crt", cert, key, rcert, rkey, scert, skey, wcert, wkey)


@contextlib.contextmanager
def openssl_server(
    cert: Path, key: Path, out: IO[bytes], *args: str, naccept: int = 1, startup: float = 10
) -> Iterator[tuple[subprocess.Popen[Any], int]]:
    """``openssl s_server -quiet``: received data goes to ``out``.

    Its stdin is a pipe we keep open: on EOF of stdin s_server would stop.
    It must listen within ``startup`` seconds (more inside the emulated VM).
    """
    port = free_port()
    cmd = [
        OPENSSL,
        "s_server",
        "-quiet",
        "-accept",
        str(port),
        "-cert",
        str(cert),
        "-key",
        str(key),
        "-naccept",
        str(naccept),
        *args,
    ]
    with spawn(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE) as proc:
        wait_port(port, proc, timeout=startup)
        yield proc, port


def openssl_client(
    port: int, data_file: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[bytes]:
    """``openssl s_client`` sending ``data_file`` then close_notify.

    ``-quiet`` alone implies ``-ign_eof`` (never closes); ``-no_ign_eof``
    restores close-on-EOF and ``-nocommands`` stops binary data that starts
    with Q/R/k/K being taken for an interactive command.
    """
    cmd = [
        OPENSSL,
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-quiet",
        "-no_ign_eof",
        "-nocommands",
        *args,
    ]
    with (
        data_file.open("rb") as f,
        spawn(cmd, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc,
    ):
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_tlsctl(
    *args: str, timeout: float = 60, stdin: IO[bytes] | None = None
) -> subprocess.CompletedProcess[str]:
    """``tlsctl ARGS`` as a separate process (the real console behaviour)."""
    cmd = [*TLSCTL, *args]
    with spawn(
        cmd,
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@dataclass
class TlsctlServer:
    proc: subprocess.Popen[bytes]
    port: int
    listening: dict[str, Any]
    rest: bytes = b""
    err: str | None = None  # all of stderr, once records() has waited for the exit

    def records(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Wait for exit (use -naccept) and return the JSON connection records."""
        out, err = self.proc.communicate(timeout=timeout)
        self.err = err.decode() if err else ""
        text = (self.rest + out).decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stderr(self) -> str:
        if self.err is not None:
            return self.err
        return self.proc.stderr.read().decode() if self.proc.stderr else ""


@contextlib.contextmanager
def tlsctl_server(*args: str, startup: float = 20) -> Iterator[TlsctlServer]:
    """``tlsctl serve --json -accept 127.0.0.1:0 ARGS``; port from its first line
    (within ``startup`` seconds: more inside the emulated VM)."""
    cmd = [*TLSCTL, "serve", "--json", "-accept", "127.0.0.1:0", *args]
    with spawn(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        line, rest = _readline(proc, startup)
        listening = json.loads(line)
        yield TlsctlServer(proc, int(listening["port"]), listening, rest)


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """First stdout line with a deadline; raw os.read so nothing is left in a
    Python buffer that ``communicate`` would not see."""
    import select

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            raise TimeoutError("tlsctl serve printed nothing")
        chunk = os.read(fd, 4096)
        if not chunk:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"tlsctl serve exited: {err.strip()}")
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line, rest
