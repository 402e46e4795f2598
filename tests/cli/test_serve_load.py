"""``tlsctl serve`` stays up under load and abuse (issue 11, item 7).

Real processes: the server runs under a lowered RLIMIT_NOFILE where the
test needs it, the good clients are ``openssl s_client`` (independent of the
project) and their uploads are checked by hash on disk; the hostile
connections are driven from a thread pool in this process (garbage, half
handshakes, corrupted records and mid-record disconnects after real
handshakes).  The server's RSS, descriptors and threads are read from
/proc/PID before and after.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from tests.helpers.peers import TLSCTL, TlsctlServer, _readline, openssl_client, sha, spawn
from tlsctl.handshake import run_handshake
from tlsctl.server.ratelog import RepeatLimiter
from tlsctl.tlsconf import TlsOptions, client_context

pytestmark = pytest.mark.timeout(300)


# --- the server as a process, its log read as it comes ------------------------------


def _nofile(n: int) -> Callable[[], None]:
    def set_limit() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))

    return set_limit


@contextlib.contextmanager
def serve_proc(
    *args: str, nofile: int | None = None, env: dict[str, str] | None = None
) -> Iterator[TlsctlServer]:
    """``tlsctl serve --json -accept 127.0.0.1:0 ARGS``, optionally under
    ``ulimit -n NOFILE`` (set in the child, so only the server is limited)."""
    cmd = [*TLSCTL, "serve", "--json", "-accept", "127.0.0.1:0", *args]
    with spawn(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_nofile(nofile) if nofile else None,
        env=env,
    ) as proc:
        line, rest = _readline(proc, 20)
        yield TlsctlServer(proc, int(json.loads(line)["port"]), json.loads(line), rest)


class LogReader:
    """Reads the server's JSON records (stdout) and messages (stderr) in
    threads while the test runs: a server whose log pipe is full would stall
    every connection at its log line."""

    def __init__(self, srv: TlsctlServer) -> None:
        assert srv.proc.stdout is not None and srv.proc.stderr is not None
        self.records: list[dict[str, Any]] = [
            r
            for r in (json.loads(x) for x in srv.rest.splitlines() if x)
            if r.get("event") == "connection"
        ]
        self._err: list[bytes] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._read, args=(srv.proc.stdout,), daemon=True),
            threading.Thread(target=self._err.extend, args=(srv.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            rec = json.loads(line)
            if rec.get("event") == "connection":
                with self._lock:
                    self.records.append(rec)

    def stderr(self) -> str:
        """Everything on stderr (call after the server exited)."""
        for t in self._threads:
            t.join(10)
        return b"".join(self._err).decode()

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def wait(self, n: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.count()} of {n} log records after {timeout} s")
            time.sleep(0.05)
        with self._lock:
            return list(self.records)


def usage(pid: int) -> tuple[int, int, int]:
    """(RSS in kB, open descriptors, threads) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


def settle(pid: int, fds: int, threads: int, timeout: float = 20) -> tuple[int, int, int]:
    """Usage once descriptors and threads are back to the given counts (a
    connection's thread ends just after its log line is written); RSS the
    least of a few samples then."""
    deadline = time.monotonic() + timeout
    while True:
        now = usage(pid)
        if now[1:] == (fds, threads) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    samples = [now[0]]
    for _ in range(4):
        time.sleep(0.1)
        samples.append(usage(pid)[0])
    return min(samples), now[1], now[2]


# --- hostile peers ---------------------------------------------------------------------


def _client_hello() -> bytes:
    """A real ClientHello (the first flight of pyOpenSSL's client)."""
    conn = SSL.Connection(client_context(TlsOptions(), verify=False), None)
    conn.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()
    return bytes(conn.bio_read(65536))


CLIENT_HELLO = _client_hello()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _drain(s: socket.socket) -> None:
    """Read until the server closes (its alert, if any, is read, not reset)."""
    with contextlib.suppress(OSError):
        while s.recv(65536):
            pass


def _reset(s: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def garbage(port: int, rng: random.Random) -> str:
    with _connect(port) as s:
        s.sendall(rng.randbytes(rng.randrange(1, 2000)))
        _drain(s)
    return "garbage"


def half_handshake(port: int, rng: random.Random, hold: bool) -> str:
    """The first part of a real ClientHello, then FIN, RST, or silence until
    the server's handshake timeout."""
    s = _connect(port)
    s.sendall(CLIENT_HELLO[: rng.randrange(1, len(CLIENT_HELLO))])
    if hold:
        _drain(s)  # the server gives up after --handshake-timeout
        s.close()
    elif rng.random() < 0.5:
        _reset(s)
    else:
        s.close()
    return "half-handshake"


def _handshake(port: int) -> tuple[socket.socket, SSL.Connection]:
    s = _connect(port)
    res = run_handshake(s, client_context(TlsOptions(), verify=False), "client")
    return s, res.conn


def _record(conn: SSL.Connection, payload: bytes) -> bytearray:
    conn.send(payload)
    return bytearray(conn.bio_read(65536))


GOOD_PREFIX = b"kept" * 100  # what a corrupted-record peer sends first


def corrupted_record(port: int, rng: random.Random, good_first: bool) -> str:
    """A real handshake, [a good record,] then a record with one bit flipped."""
    s, conn = _handshake(port)
    with s:
        out = _record(conn, GOOD_PREFIX) if good_first else bytearray()
        bad = _record(conn, rng.randbytes(rng.randrange(1, 3000)))
        bad[rng.randrange(5, len(bad))] ^= 1 << rng.randrange(8)
        s.sendall(out + bad)
        _drain(s)
    return "corrupted-after-good" if good_first else "corrupted"


def mid_record(port: int, rng: random.Random) -> str:
    """A real handshake, then part of a record, then FIN or RST."""
    s, conn = _handshake(port)
    rec = _record(conn, rng.randbytes(rng.randrange(100, 5000)))
    s.sendall(rec[: rng.randrange(1, len(rec))])
    if rng.random() < 0.5:
        _reset(s)
    else:
        s.shutdown(socket.SHUT_WR)
        _drain(s)
        s.close()
    return "mid-record"


def hostile_mix(port: int, n: int, seed: int) -> list[Callable[[], str]]:
    """``n`` hostile connections: 40% garbage, 30% half handshakes (1 in 12 of
    them held open until the handshake timeout), 15% corrupted records (a
    third of them after a good record), 15% mid-record disconnects."""
    rng = random.Random(seed)
    jobs: list[Callable[[], str]] = []
    for i in range(n):
        r = random.Random(rng.random())
        kind = i % 20
        if kind < 8:
            jobs.append(functools.partial(garbage, port, r))
        elif kind < 14:
            jobs.append(functools.partial(half_handshake, port, r, kind == 8 and i % 40 == 8))
        elif kind < 17:
            jobs.append(functools.partial(corrupted_record, port, r, kind == 14))
        else:
            jobs.append(functools.partial(mid_record, port, r))
    rng.shuffle(jobs)
    return jobs


def good_upload(port: int, path: Path) -> int:
    return openssl_client(port, path, timeout=120).returncode


# --- the tests -------------------------------------------------------------------------


def test_good_client_served_through_1100_idle_connections(tmp_path: Path) -> None:
    """Under ulimit -n 1024, 1100 idle TCP connections (they never send a
    byte): the server holds at most --max-conns of them, the rest wait in
    the listen backlog, each is dropped after --handshake-timeout, and a
    good client (openssl s_client) behind them all is served, hash equal.
    No "Too many open files" in the log.  (Before: ~10 "accept failed: Too
    many open files" lines a second, and the client waited for the 60 s
    idle timeout of a thousand connections.)"""
    data = tmp_path / "good.bin"
    data.write_bytes(os.urandom(1 << 20))
    save = tmp_path / "in"
    save.mkdir()
    with serve_proc("--save-dir", str(save), "--handshake-timeout", "2", nofile=1024) as srv:
        log = LogReader(srv)
        max_conns = srv.listening["max_conns"]
        assert 400 < max_conns < 1024 // 2  # derived from the limit, with headroom
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(1100)]
        try:
            assert good_upload(srv.port, data) == 0
        finally:
            for s in idle:
                s.close()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(60)
        srv.err = log.stderr()
        recs = log.wait(0, 0)
    good = [r for r in recs if r["ok"]]
    assert len(good) == 1 and sha(Path(good[0]["file"])) == sha(data) == good[0]["sha256"]
    timed_out = [r for r in recs if r.get("error") == "handshake timed out"]
    assert len(timed_out) >= max_conns  # the first batch, at least, waited it out
    assert "Too many open files" not in srv.err and "accept failed" not in srv.err
    assert len(recs) <= 1101


def test_out_of_descriptors_backs_off_and_says_so_once(tmp_path: Path) -> None:
    """--max-conns set above what ulimit -n 64 allows: accept does hit EMFILE,
    and then backs off (not a tight loop) and logs it once plus a count.
    When the idle connections time out, a good client is served."""
    data = tmp_path / "good.bin"
    data.write_bytes(os.urandom(50_000))
    with serve_proc("--sink", "--max-conns", "500", "--handshake-timeout", "3", nofile=64) as srv:
        log = LogReader(srv)
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(120)]
        try:
            time.sleep(2.5)  # EMFILE all along: ~50 tries a second without back-off
        finally:
            for s in idle:
                s.close()
        assert good_upload(srv.port, data) == 0
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(60)
        srv.err = log.stderr()
        recs = log.wait(0, 0)
    lines = [ln for ln in srv.err.splitlines() if "Too many open files" in ln]
    assert lines[0] == "accept failed: Too many open files"
    assert len(lines) == 2 and lines[1].startswith("accept failed: Too many open files (repeated ")
    assert int(lines[1].rsplit("(repeated ", 1)[1].split()[0]) < 20  # backed off
    assert sum(r["ok"] for r in recs) == 1


def test_hostile_mix_and_good_uploads(tmp_path: Path) -> None:
    """1000 hostile connections and 20 good uploads at once: 20 good hashes,
    exactly one log record per connection, nothing stored for the hostile
    ones but the good record some of them sent first (in .partial files),
    and the server's descriptors and threads back to their idle counts,
    RSS back within a small margin (see the end)."""
    save = tmp_path / "in"
    save.mkdir()
    files = []
    for i in range(24):
        p = tmp_path / f"good-{i}.bin"
        p.write_bytes(os.urandom(100_000 + 997 * i))
        files.append(p)
    warm_n, n, conc = 300, 1000, 48
    # glibc gives threads up to 8 malloc arenas per core and keeps what they
    # freed; with 2 the allocator's own growth stays small enough for the RSS
    # check below to catch a leak of ours.
    with serve_proc(
        "--save-dir",
        str(save),
        "--handshake-timeout",
        "3",
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    ) as srv:
        log = LogReader(srv)
        pid = srv.proc.pid
        rss0, fds0, threads0 = usage(pid)
        # Warm-up, as busy as the real round: the first connections allocate
        # what all later ones reuse (OpenSSL's and the interpreter's caches,
        # the allocator's arenas, glibc's cache of thread stacks).
        run_mix(srv.port, hostile_mix(srv.port, warm_n, seed=1), files[:4], conc)
        warm = log.wait(warm_n + 4, timeout=120)
        rss1, fds1, threads1 = settle(pid, fds0, threads0)
        assert (fds1, threads1) == (fds0, threads0)

        kinds = run_mix(srv.port, hostile_mix(srv.port, n, seed=2), files[4:], conc)
        recs = log.wait(warm_n + 4 + n + 20, timeout=180)[warm_n + 4 :]
        rss2, fds2, threads2 = settle(pid, fds0, threads0)
        time.sleep(0.5)
        assert log.count() == warm_n + 4 + n + 20  # one record per connection, no more
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(30)
        assert "Traceback" not in log.stderr()
    ok = [r for r in recs if r["ok"]]
    assert len(ok) == 20 and len(recs) == n + 20
    want = {sha(p) for p in files[4:]}
    assert {r["sha256"] for r in ok} == want == {sha(Path(r["file"])) for r in ok}
    partial = [r for r in recs if r.get("file", "").endswith(".partial")]
    assert len(partial) == kinds.count("corrupted-after-good") == n // 20
    assert all(Path(r["file"]).read_bytes() == GOOD_PREFIX for r in partial)
    every = warm + recs  # every file on disk is named in a log record
    assert sorted(os.listdir(save)) == sorted(Path(r["file"]).name for r in every if "file" in r)
    assert (fds2, threads2) == (fds0, threads0)
    # RSS: measured here over 14 rounds of 510 connections at this
    # concurrency, it moved between +0 and +9 MB of the first round's with no
    # trend (the allocator's free lists); on a machine running four other
    # test jobs beside this one it reached +15.5 MB (more threads alive at
    # once: more stacks and arenas).  The margin is 24 MB: a leak of 24 kB
    # per connection, or of anything the size of a receive buffer (1 MiB),
    # fails this.
    print(f"RSS kB: idle {rss0}, after warm-up {rss1}, after {n + 20} connections {rss2}")
    assert rss2 - rss1 < 24 * 1024


def run_mix(port: int, jobs: list[Callable[[], str]], uploads: list[Path], conc: int) -> list[str]:
    """Hostile jobs and good uploads (openssl s_client) at once, ``conc`` at a
    time; the kinds of the hostile jobs, and every upload must succeed."""
    with concurrent.futures.ThreadPoolExecutor(conc) as pool:
        futures = [pool.submit(j) for j in jobs]
        good = [pool.submit(good_upload, port, p) for p in uploads]
        kinds = [f.result() for f in futures]
        assert [u.result() for u in good] == [0] * len(uploads)
    return kinds


# --- the pieces, in process -----------------------------------------------------------


def test_repeat_limiter() -> None:
    now = [0.0]
    out: list[str] = []
    log = RepeatLimiter(out.append, window=10, clock=lambda: now[0])
    for _ in range(5):
        log("accept failed: Too many open files")
    log("other")
    assert out == ["accept failed: Too many open files", "other"]
    now[0] = 9.9
    log.flush()
    assert len(out) == 2
    now[0] = 10.0
    log.flush()  # window closed: the count, and "other" (no copies) is forgotten
    assert out[2:] == ["accept failed: Too many open files (repeated 4 times)"]
    log("accept failed: Too many open files")  # still in a counting window
    log("other")  # a new window: shown at once
    assert out[3:] == ["other"]
    now[0] = 25.0
    log.flush()
    log.close()
    assert out[4:] == ["accept failed: Too many open files (repeated 1 time)"]


@pytest.mark.parametrize(
    ("limit", "low", "high"), [(1024, 460, 480), (10_000, 4096, 4096), (80, 1, 8)]
)
def test_default_max_conns(limit: int, low: int, high: int) -> None:
    code = "from tlsctl.server import default_max_conns; print(default_max_conns())"
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        preexec_fn=_nofile(limit),
        timeout=60,
        check=True,
    )
    assert low <= int(r.stdout) <= high
