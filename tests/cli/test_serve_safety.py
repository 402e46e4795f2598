"""``tlsctl serve``: nothing lost, nothing falsely reported (issue 11, items 1, 2, 9).

Stored files: unique names across workers and runs, created exclusively
(never through a planted symlink), ``.partial`` until the client's
close_notify, nothing for connections that sent nothing.  Exit statuses and
log lines that say what happened (a cut by our own stop is not the peer's
doing).  ``--workers``: signals reach the workers, the parent survives them,
the workers die with the parent, a port in use is an error.

Clients are Python's ``ssl`` module and ``openssl s_client`` (OpenSSL), both
independent of the project's record layer; every stored byte is checked by
hash against what the client sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.peers import (
    TLSCTL,
    free_port,
    listening,
    openssl_client,
    run_tlsctl,
    sha,
    spawn,
    tlsctl_server,
    wait_port,
)

pytestmark = pytest.mark.timeout(180)


# --- clients -----------------------------------------------------------------------


def _ctx(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


@contextlib.contextmanager
def tls_conn(port: int, version: ssl.TLSVersion | None = None) -> Iterator[ssl.SSLSocket]:
    """A TLS connection (Python's ssl = OpenSSL) to 127.0.0.1:port.  Leaving
    the block closes TCP *without* close_notify (ssl's close sends none)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        with _ctx(version).wrap_socket(raw, server_hostname="localhost") as s:
            yield s
            # Read what has arrived (TLS 1.3 tickets) so that closing sends a
            # FIN, not the RST that unread data would turn it into.
            s.setblocking(False)
            with contextlib.suppress(ssl.SSLError, OSError):
                s.recv(65536)
    finally:
        raw.close()


def upload(port: int, data: bytes, *, close_notify: bool = True) -> bool:
    """Send ``data``; then close_notify and wait for the server's (unwrap), or
    just close the TCP connection (a truncated upload).  True: the server
    answered our close_notify with its own (it took the upload)."""
    with tls_conn(port) as s:
        try:
            s.sendall(data)
            if close_notify:
                s.unwrap()
                return True
        except (ssl.SSLError, OSError):
            pass
    return False


def _stored(d: Path) -> int:
    """Bytes in the files of ``d`` (what serve has written so far)."""
    total = 0
    for p in d.iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += p.lstat().st_size
    return total


def connections(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recs if r.get("event") == "connection"]


def wait_for(cond: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def stop(srv: Any, sig: int = signal.SIGTERM, timeout: float = 30) -> list[dict[str, Any]]:
    srv.proc.send_signal(sig)
    return connections(srv.records(timeout=timeout))


# --- item 1: file names, exclusive creation, partial files -------------------------


def test_workers_never_overwrite_each_other_or_an_earlier_run(tmp_path: Path) -> None:
    """64 concurrent uploads of distinct data to 2 workers: 64 files, each
    holding its own client's bytes; a second run on the same directory adds
    files and leaves the first run's untouched.  (Before: both workers wrote
    conn-00001.bin ..., and a restart overwrote them.)"""
    n = 64
    blobs = [os.urandom(150_000 + i) for i in range(n)]
    # A generous handshake timeout: 64 handshakes at once on a loaded machine.
    with tlsctl_server(
        "--save-dir", str(tmp_path), "--workers", "2", "--handshake-timeout", "60"
    ) as srv:
        threads = [threading.Thread(target=upload, args=(srv.port, b)) for b in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        recs = stop(srv)
        assert srv.proc.returncode == 0
    assert len(recs) == n and all(r["ok"] for r in recs), [r.get("error") for r in recs]
    assert {r["worker"] for r in recs} == {0, 1}  # both workers stored files
    files = {r["file"] for r in recs}
    assert len(files) == n
    want = {hashlib.sha256(b).hexdigest() for b in blobs}
    assert {sha(Path(f)) for f in files} == want == {r["sha256"] for r in recs}
    assert all(sha(Path(r["file"])) == r["sha256"] for r in recs)
    first_run = {f: sha(Path(f)) for f in files}
    assert sorted(os.listdir(tmp_path)) == sorted(Path(f).name for f in files)

    with tlsctl_server("--save-dir", str(tmp_path), "-naccept", "3") as srv:
        for b in blobs[:3]:
            upload(srv.port, b)
        second = connections(srv.records())
    assert all(r["ok"] for r in second) and not files & {r["file"] for r in second}
    assert {f: sha(Path(f)) for f in files} == first_run
    assert len(os.listdir(tmp_path)) == n + 3


def test_planted_symlinks_are_never_followed(tmp_path: Path) -> None:
    """A shared (1777) directory where someone planted symlinks under the
    names serve will use: the target is never written, the planted name's
    connection fails with one line, the next one is stored 0600."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (shared / "conn-00001.bin").symlink_to(victim)  # the old naming scheme
    data = os.urandom(40_000)
    with tlsctl_server("--save-dir", str(shared), "-naccept", "2") as srv:
        run = srv.listening.get("run")
        if run:  # the attacker watched the directory and guessed the next names
            for name in (f"conn-{run}-w0-000001.bin", f"conn-{run}-w0-000001.bin.partial"):
                (shared / name).symlink_to(victim)
        assert upload(srv.port, data) is not bool(run)  # refused: the name is taken
        assert upload(srv.port, data)
        recs = connections(srv.records())
        assert srv.proc.returncode == 3  # one connection failed
    assert victim.read_bytes() == b"precious"
    first, second = recs
    assert not first["ok"] and "exists" in first["error"]
    assert second["ok"] and sha(Path(second["file"])) == hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(os.lstat(second["file"]).st_mode) == 0o600
    links = [p for p in shared.iterdir() if p.is_symlink()]
    assert len(links) == (3 if run else 1)


def test_truncated_upload_is_partial_and_failed(tmp_path: Path) -> None:
    """No close_notify: the bytes stay in NAME.partial, the record says
    truncated, the summary counts it failed, exit 3.  A connection that sent
    nothing leaves no file; a clean empty upload is an empty file."""
    data = os.urandom(100_000)
    with tlsctl_server("--save-dir", str(tmp_path), "-naccept", "3", "--file-mode", "640") as srv:
        with tls_conn(srv.port) as s:
            s.sendall(data)  # then close without close_notify, once the server has it all
            wait_for(lambda: _stored(tmp_path) == len(data), what="bytes on disk")
        with tls_conn(srv.port) as s:
            s.do_handshake()  # then gone, nothing sent
        upload(srv.port, b"")
        recs = sorted(connections(srv.records()), key=lambda r: r["conn"])
        assert srv.proc.returncode == 3
        assert "done: 3 connection(s), 2 failed" in srv.stderr()
    cut, silent, empty = recs
    assert not cut["ok"] and cut["truncated"] and cut["error"].startswith("truncated")
    assert cut["file"].endswith(".bin.partial") and cut["bytes_in"] == len(data)
    assert Path(cut["file"]).read_bytes() == data
    assert not Path(cut["file"].removesuffix(".partial")).exists()
    assert not silent["ok"] and "file" not in silent
    assert empty["ok"] and Path(empty["file"]).stat().st_size == 0
    assert stat.S_IMODE(os.stat(empty["file"]).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == sorted(
        [Path(cut["file"]).name, Path(empty["file"]).name]
    )

    gone = tmp_path / "gone"
    gone.mkdir()
    with tlsctl_server("--save-dir", str(gone), "-naccept", "1", "--partial", "delete") as srv:
        with tls_conn(srv.port) as s:
            s.sendall(data)
            wait_for(lambda: _stored(gone) == len(data), what="bytes on disk")
        (rec,) = connections(srv.records())
    assert rec["truncated"] and rec["file_removed"].endswith(".partial")
    assert os.listdir(gone) == []


def test_failed_connections_leave_no_files(tmp_path: Path) -> None:
    """Garbage, half handshakes and handshakes without data: nothing on disk
    (before: an empty conn-N.bin for each connection past its handshake)."""
    n = 12
    with tlsctl_server("--save-dir", str(tmp_path), "-naccept", str(3 * n)) as srv:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with socket.create_connection(("127.0.0.1", srv.port)) as s:
                s.sendall(bytes.fromhex("160301020001"))
            with tls_conn(srv.port) as s:
                s.do_handshake()
        recs = connections(srv.records())
    assert len(recs) == 3 * n and not any(r["ok"] for r in recs)
    assert os.listdir(tmp_path) == []


def test_sigint_cuts_live_uploads_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C with 10 uploads in flight: 10 failed records "interrupted by
    server shutdown" (not the peer's doing), their bytes in .partial files,
    exit 3.  (Before: 10 x ok, "0 failed", exit 0.)"""
    n, size = 10, 65536
    blobs = [os.urandom(size) for _ in range(n)]
    with tlsctl_server("--save-dir", str(tmp_path)) as srv, contextlib.ExitStack() as stack:
        for b in blobs:
            s = stack.enter_context(tls_conn(srv.port))
            s.sendall(b)  # and keep the connection open: an upload in progress
        wait_for(lambda: _stored(tmp_path) == n * size, what="all bytes on disk")
        recs = stop(srv, signal.SIGINT)
        assert srv.proc.returncode == 3
        assert f"{n} failed ({n} cut by shutdown)" in srv.stderr()
    assert len(recs) == n
    for r in recs:
        assert not r["ok"] and r["interrupted"] and r["truncated"]
        assert r["error"] == f"interrupted by server shutdown after {size} bytes"
        assert r["file"].endswith(".partial")
    assert {sha(Path(r["file"])) for r in recs} == {hashlib.sha256(b).hexdigest() for b in blobs}


def test_output_file(tmp_path: Path) -> None:
    """-o FILE: one connection, FILE created exclusively; a directory, an
    existing FILE (or a symlink there) or several connections are refused
    at start-up with one line."""
    from tests.cli.test_cli_send_serve import one_line_error

    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(70_000))
    dest = tmp_path / "got.bin"
    with tlsctl_server("-o", str(dest)) as srv:  # implies -naccept 1: exits by itself
        assert openssl_client(srv.port, data).returncode == 0
        (rec,) = connections(srv.records())
        assert srv.proc.returncode == 0
    assert rec["ok"] and rec["file"] == str(dest) and sha(dest) == sha(data)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["data.bin", "got.bin"]

    assert "is a directory" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-o", str(tmp_path))
    )
    assert "exists" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-o", str(dest))
    )
    (tmp_path / "planted").symlink_to(tmp_path / "victim")
    assert "exists" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-o", str(tmp_path / "planted"))
    )
    (tmp_path / "new.bin.partial").write_bytes(b"")
    assert "new.bin.partial exists" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-o", str(tmp_path / "new.bin"))
    )
    r = run_tlsctl("serve", "-accept", "127.0.0.1:0", "-o", str(tmp_path / "x"), "-naccept", "2")
    assert r.returncode == 2 and "--save-dir" in r.stderr
    assert not (tmp_path / "victim").exists()


def test_output_truncated_human_log(tmp_path: Path) -> None:
    """The human log line of a cut upload names the kept partial file."""
    dest = tmp_path / "up.bin"
    port = free_port()
    cmd = [*TLSCTL, "serve", "-accept", f"127.0.0.1:{port}", "-o", str(dest)]
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        wait_for(lambda: listening(port), what="listening")
        with tls_conn(port) as s:
            s.sendall(b"z" * 5000)
            wait_for(lambda: _stored(tmp_path) == 5000, what="bytes on disk")
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    line = next(ln for ln in err.splitlines() if ln.startswith("[1]"))
    assert "truncated" in line and f"5000 bytes kept in {dest}.partial" in line
    assert not dest.exists() and Path(f"{dest}.partial").read_bytes() == b"z" * 5000


# --- item 2: exit statuses, signals and --workers -----------------------------------


def test_naccept_1_failed_connection_exits_3() -> None:
    with tlsctl_server("--sink", "-naccept", "1") as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"\x00" * 64)
        (rec,) = connections(srv.records())
        assert srv.proc.returncode == 3 and not rec["ok"]
    with tlsctl_server("--sink", "-naccept", "1") as srv:
        upload(srv.port, b"fine")
        (rec,) = connections(srv.records())
        assert srv.proc.returncode == 0 and rec["ok"]


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped by init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_usr1_reaches_workers_and_parent_survives() -> None:
    """kill -USR1 on serve --workers 2: the parent lives on, every live TLS 1.3
    connection (whichever worker has it) rekeys, the echo still decrypts.
    (Before: the parent died of SIGUSR1; both workers went on as orphans.)"""
    with (
        tlsctl_server("--echo", "--workers", "2", "-tls1_3") as srv,
        contextlib.ExitStack() as stack,
    ):
        wait_for(lambda: len(_children(srv.proc.pid)) == 2, what="2 workers")
        conns = [stack.enter_context(tls_conn(srv.port)) for _ in range(4)]
        for i, s in enumerate(conns):
            s.sendall(b"before %d" % i)
            assert s.recv(100) == b"before %d" % i
        srv.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert srv.proc.poll() is None
        for i, s in enumerate(conns):
            s.sendall(b"after %d" % i)
            assert s.recv(100) == b"after %d" % i  # came after a KeyUpdate
            s.unwrap()
        workers = _children(srv.proc.pid)
        recs = stop(srv)
        assert srv.proc.returncode == 0
    assert len(recs) == 4 and all(r["ok"] and r["key_updates_sent"] == 1 for r in recs)
    assert not any(_alive(p) for p in workers)


def test_workers_sigterm_with_an_upload_in_flight_exits_3(tmp_path: Path) -> None:
    """SIGTERM to the parent reaches the workers; the one holding a live
    upload cuts it after the grace period and the parent's status says so."""
    with (
        tlsctl_server("--save-dir", str(tmp_path), "--workers", "2") as srv,
        tls_conn(srv.port) as s,
    ):
        s.sendall(b"x" * 1000)
        wait_for(lambda: _stored(tmp_path) == 1000, what="bytes on disk")
        recs = stop(srv)
        assert srv.proc.returncode == 3
    (rec,) = recs
    assert rec["interrupted"] and rec["error"] == "interrupted by server shutdown after 1000 bytes"


def test_workers_do_not_outlive_the_parent() -> None:
    with tlsctl_server("--sink", "--workers", "2") as srv:
        wait_for(lambda: len(_children(srv.proc.pid)) == 2, what="2 workers")
        workers = _children(srv.proc.pid)
        srv.proc.kill()
        srv.proc.wait(10)
        wait_for(lambda: not any(_alive(p) for p in workers), what="workers gone")
        assert not listening(srv.port)


@pytest.mark.parametrize("first_workers", ["1", "2"])
def test_port_in_use_is_an_error_whatever_workers(first_workers: str) -> None:
    """A second serve --workers 2 on a served port fails with one line instead
    of joining an SO_REUSEPORT group and taking half the connections."""
    from tests.cli.test_cli_send_serve import one_line_error

    with tlsctl_server("--sink", "--workers", first_workers) as srv:
        r = run_tlsctl("serve", "--workers", "2", "-accept", f"127.0.0.1:{srv.port}", timeout=20)
        assert "in use" in one_line_error(r) and r.returncode == 1
    with tlsctl_server("--sink", "-accept", "[::1]:0") as srv6:  # an IPv6 address in brackets
        r = run_tlsctl("serve", "-accept", f"[::1]:{srv6.port}", timeout=20)
        assert f"cannot listen on [::1]:{srv6.port}: " in one_line_error(r)
    with socket.socket() as other:  # someone else's SO_REUSEPORT listener
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        r = run_tlsctl(
            "serve", "--workers", "2", "-accept", f"127.0.0.1:{other.getsockname()[1]}", timeout=20
        )
        assert "in use" in one_line_error(r)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_removes_control_sockets(tmp_path: Path, workers: str) -> None:
    """SIGTERM cleans up like SIGINT: every control socket (the parent's and
    each worker's) is gone, and with nothing in flight the status is 0."""
    ctl = tmp_path / "ctl"
    ctl.mkdir(mode=0o700)
    with tlsctl_server("--sink", "--workers", workers, "--control-socket", str(ctl)) as srv:
        upload(srv.port, b"x" * 1000)  # a worker registers a connection: its own socket
        wait_for(lambda: len(os.listdir(ctl)) >= 1 + (workers == "2"), what="sockets")
        recs = stop(srv)
        assert srv.proc.returncode == 0 and len(recs) == 1 and recs[0]["ok"]
    assert os.listdir(ctl) == []


def test_serve_whose_log_reader_is_gone_still_ends(tmp_path: Path) -> None:
    """``serve --json -naccept 1 | consumer`` where the consumer has exited:
    logging the connection fails (EPIPE).  The upload is still stored whole,
    and serve ends; before, the connection thread died before taking itself
    off the live list and serve spun at 100% CPU forever waiting for it."""
    save = tmp_path / "save"
    save.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            *TLSCTL,
            "serve",
            "--json",
            "-accept",
            f"127.0.0.1:{port}",
            "-naccept",
            "1",
            "--save-dir",
            str(save),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        wait_port(port, proc)
        proc.stdout.close()  # the consumer is gone
        data = os.urandom(300_000)
        assert upload(port, data)
        proc.wait(30)  # TimeoutExpired before the fix
        (stored,) = save.iterdir()
        assert stored.suffix == ".bin" and sha(stored) == hashlib.sha256(data).hexdigest()
    finally:
        proc.kill()
        proc.wait()
