"""The moving parts of ``tlsctl bench``: the receiver process and one transfer.

Every transfer runs in a sender *process* of its own (a worker of a process
pool), so ``time.process_time()`` there is the sender's CPU and nothing else
(no progress display, no receiver).  Timing starts after the TLS handshake
and ends when the receiver has confirmed the bytes.

The loopback receiver is another process that forks one child per
connection.  It listens on two ports: plain TCP (count and discard) and TLS
(a real handshake with an ephemeral certificate, then the kTLS layer, or
the host kernel, decrypts).  When the sender has finished it reads back a
16-byte report: the plaintext byte count and the receiver child's CPU time
in microseconds, both big-endian.  Over TLS the report is application data
sent after the sender's close_notify and before the receiver's own, so the
sender also sees a clean close.  A remote ``tlsctl serve --sink`` sends no
report; there the receiver's close_notify, sent only after it has read and
authenticated every record before ours, is the confirmation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from OpenSSL import SSL

from offload.netdev import create_device
from offload.wiremodel import FaultSpec, TxPipeline
from tlsctl.commands._channel import KtlsChannel, OpenSSLChannel, establish, exact_reads
from tlsctl.commands._handlers import sink
from tlsctl.commands._tlsconf import TlsOptions, client_context, server_context
from tlsctl.handshake import install_offload, run_handshake

_BUF = 1 << 20
_REPORT = 16
TLS_MAX_RECORD = 16384


class BenchError(Exception):
    """A transfer failed or could not be verified; one line for the user."""


class ModeUnavailable(BenchError):
    """The mode cannot run with these settings (e.g. the NIC declined the
    negotiated cipher): the mode is reported as skipped, the others run."""


@dataclass(frozen=True)
class Target:
    """Where a sender connects: the loopback receiver, or a remote serve."""

    host: str
    tls_port: int
    tcp_port: int | None  # None: remote (no plain TCP sink there)
    verify: bool = False
    server_name: str | None = None


@dataclass(frozen=True)
class Job:
    """One stream of one mode in one repeat (what a worker process runs)."""

    mode: str
    target: Target
    path: str
    size: int
    seconds: float | None
    record_size: int
    opts: TlsOptions
    faults: str | None = None
    cert_pem: str = ""
    key_pem: str = ""


@dataclass
class Result:
    """What one stream measured (monotonic clock stamps comparable across processes)."""

    mode: str
    bytes: int
    start: float
    end: float
    cpu: float  # sender process CPU, user + sys
    device_cpu: float = 0.0  # inside the NIC driver (what hardware would do)
    receiver_cpu: float | None = None
    confirmed: str = ""  # how the receiver confirmed: "count" or "close_notify"
    extra: dict[str, Any] = field(default_factory=dict)


# -- the sender side -------------------------------------------------------------


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC: Any = None


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Get ``sig`` when the process that started this one ends (Linux
    ``prctl(PR_SET_PDEATHSIG)``), however it ends, SIGKILL included; if it
    already has, send ``sig`` now.  Safe between fork and exec (``preexec_fn``):
    libc is loaded before the fork.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)


def _load_libc() -> None:
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)


def worker_init(parent: int) -> None:
    """Pool workers leave Ctrl-C to the parent, which terminates them.

    SIGTERM ends a worker at once (the default action: nothing can swallow
    it or wait on it); the tools it started (``openssl s_server``, curl) die
    with it (:func:`_child_setup`), and a parent that dies without
    terminating the workers (SIGKILL) still takes them along.
    """
    _load_libc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent)


def run_job(job: Job) -> Result:
    """Run one stream; exceptions become :class:`BenchError` with one line."""
    try:
        if job.mode == "openssl":
            return _openssl(job)
        if job.mode in ("tcp", "tcp-sendfile"):
            return _tcp(job)
        return _tls(job)
    except BenchError:
        raise
    except Exception as exc:  # anything else still has to reach the parent as a line
        raise BenchError(f"{job.mode}: {type(exc).__name__}: {exc}") from None


def _more(job: Job, t0: float, rounds: int) -> bool:
    """Send the file again? Once, or until ``--time`` is up."""
    if job.seconds is None:
        return rounds < 1
    return time.monotonic() - t0 < job.seconds


def _report(data: bytes, mode: str, sent: int) -> tuple[int, float]:
    if len(data) != _REPORT:
        raise BenchError(f"{mode}: receiver sent a {len(data)}-byte report, expected 16")
    got = int.from_bytes(data[:8], "big")
    if got != sent:
        raise BenchError(f"{mode}: receiver got {got} of {sent} bytes")
    return got, int.from_bytes(data[8:], "big") / 1e6


def _connect(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=30)
    except OSError as exc:
        raise BenchError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tcp(job: Job) -> Result:
    if job.target.tcp_port is None:
        raise BenchError(f"{job.mode}: needs the bench's own receiver")
    sock = _connect(job.target.host, job.target.tcp_port)
    sock.settimeout(None)
    sent = rounds = 0
    with sock, open(job.path, "rb") as f:
        cpu0, t0 = time.process_time(), time.monotonic()
        buf = bytearray(_BUF)
        view = memoryview(buf)
        while _more(job, t0, rounds):
            rounds += 1
            if job.mode == "tcp-sendfile":
                sent += sock.sendfile(f, 0, job.size)
                continue
            f.seek(0)
            while n := f.readinto(buf):
                sock.sendall(view[:n])
                sent += n
        sock.shutdown(socket.SHUT_WR)
        data = _recv_exact(sock, _REPORT)
        t1, cpu1 = time.monotonic(), time.process_time()
    _got, rcpu = _report(data, job.mode, sent)
    return Result(job.mode, sent, t0, t1, cpu1 - cpu0, receiver_cpu=rcpu, confirmed="count")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _client_ctx(job: Job) -> SSL.Context:
    ctx = client_context(job.opts, verify=job.target.verify)
    return ctx


def _tls(job: Job) -> Result:
    if job.mode == "userspace":
        return _userspace(job)
    t = job.target
    sock = _connect(t.host, t.tls_port)
    res = run_handshake(sock, _client_ctx(job), "client", server_name=t.server_name,
                        verify_host=t.host if t.verify else None,
                        exact=job.mode == "kernel" or exact_reads("auto"))
    sock.settimeout(None)
    layer: dict[str, Any] = {}
    if job.mode.startswith("sim-nic"):
        faults = FaultSpec.parse(job.faults) if job.faults else None
        fallback = create_device("sim-nic", "sim-nic1") if faults else None
        layer = {"txpath": TxPipeline(create_device("sim-nic"), faults=faults,
                                      fallback_device=fallback)}
    backend: Literal["sw", "kernel"] = "kernel" if job.mode == "kernel" else "sw"
    if job.record_size != TLS_MAX_RECORD:
        if backend == "kernel":
            raise BenchError("kernel: --record-size needs the user-space layer")
        layer["record_size"] = job.record_size
    k = install_offload(sock, res, backend, **layer)
    chan = KtlsChannel(k, res)
    if job.mode.startswith("sim-nic") and k.tx_conf != "device":
        chan.close()
        raise ModeUnavailable(f"the NIC declined TLS_TX ({k.offload_refused}); "
                              "try -tls1_2 or another cipher")
    sent = rounds = 0
    try:
        with open(job.path, "rb") as f:
            cpu0, t0 = time.process_time(), time.monotonic()
            while _more(job, t0, rounds):
                rounds += 1
                sent += chan.send_file(f, 0, job.size)
            chan.close_notify()
            data = b""
            while d := chan.recv(1 << 16):
                data += d
            t1, cpu1 = time.monotonic(), time.process_time()
        # Thread CPU time inside the driver's xmit, as the wire model counts
        # it (not wall time: with more streams than cores a process waits
        # for a core inside xmit, and that is not the device's work).
        dev = k.device_seconds
        extra: dict[str, Any] = {"version": res.version_name, "cipher": res.cipher_name,
                                 "tx_conf": k.tx_conf}
    finally:
        chan.close()
    r = Result(job.mode, sent, t0, t1, cpu1 - cpu0, device_cpu=dev, extra=extra)
    _confirm(r, data, chan.peer_closed)
    return r


def _confirm(r: Result, data: bytes, peer_closed: bool) -> None:
    if data:
        _got, r.receiver_cpu = _report(data, r.mode, r.bytes)
        r.confirmed = "count"
    elif peer_closed:
        r.confirmed = "close_notify"
    else:
        raise BenchError(f"{r.mode}: the receiver closed without confirming the data "
                         "(no close_notify): bytes may have been lost")


def _userspace(job: Job) -> Result:
    """pyOpenSSL's own record layer on the socket: read, then SSL_write."""
    t = job.target
    sock = _connect(t.host, t.tls_port)
    sock.settimeout(None)
    conn = SSL.Connection(_client_ctx(job), sock)
    if t.server_name:
        conn.set_tlsext_host_name(t.server_name.encode("idna"))
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.Error as exc:
        sock.close()
        raise BenchError(f"userspace: handshake failed: {exc}") from None
    step = _BUF if job.record_size == TLS_MAX_RECORD else job.record_size
    sent = rounds = 0
    peer_closed = False
    data = b""
    with sock, open(job.path, "rb") as f:
        cpu0, t0 = time.process_time(), time.monotonic()
        buf = bytearray(step)
        view = memoryview(buf)
        while _more(job, t0, rounds):
            rounds += 1
            f.seek(0)
            while n := f.readinto(buf):
                conn.sendall(view[:n])
                sent += n
        conn.shutdown()
        while True:
            try:
                data += conn.recv(1 << 16)
            except SSL.ZeroReturnError:
                peer_closed = True
                break
            except SSL.SysCallError:
                break
        t1, cpu1 = time.monotonic(), time.process_time()
    r = Result(job.mode, sent, t0, t1, cpu1 - cpu0)
    _confirm(r, data, peer_closed)
    return r


# -- openssl s_server -WWW + curl ------------------------------------------------------


def _proc_cpu(pid: int) -> float:
    """user + system CPU seconds of ``pid`` from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _openssl(job: Job) -> Result:
    """``openssl s_server -WWW`` sends the file, curl fetches it."""
    directory, name = os.path.split(job.path)
    cmd = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-WWW", "-cert", job.cert_pem,
           "-key", job.key_pem, "-naccept", "1000000"]
    if job.record_size != TLS_MAX_RECORD:
        cmd += ["-max_send_frag", str(job.record_size)]
    curl = ["curl", "-sS", "-k", "--http1.0", "-o", "/dev/null",
            "-w", "%{size_download} %{time_appconnect} %{time_total}\\n"]
    if job.opts.tls1_2:
        cmd.append("-tls1_2")
        curl += ["--tlsv1.2", "--tls-max", "1.2"]
    if job.opts.tls1_3:
        cmd.append("-tls1_3")
        curl.append("--tlsv1.3")
    if job.opts.cipher:
        cmd += ["-cipher", job.opts.cipher]
    if job.opts.ciphersuites:
        cmd += ["-ciphersuites", job.opts.ciphersuites]
    # stdout to a file: s_server writes per connection, a pipe could fill up.
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    srv = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.PIPE, stdout=log,
                           stderr=subprocess.STDOUT, preexec_fn=_child_setup(os.getpid()))
    try:
        port = _accept_port(srv, log)
        url = f"https://127.0.0.1:{port}/{name}"
        sent = rounds = 0
        cpu = wire = recv_cpu = 0.0
        t0 = time.monotonic()
        while _more(job, t0, rounds):
            rounds += 1
            c0 = _proc_cpu(srv.pid)
            ru0 = _children_cpu()
            out = subprocess.run([*curl, url], capture_output=True, text=True, timeout=600,
                                 preexec_fn=_child_setup(os.getpid()))
            if out.returncode != 0:
                raise BenchError(f"openssl: curl failed: {out.stderr.strip()}")
            cpu += _proc_cpu(srv.pid) - c0
            recv_cpu += _children_cpu() - ru0
            got_s, appconnect, total = out.stdout.split()
            got = int(got_s)
            if got != job.size:
                raise BenchError(f"openssl: curl got {got} of {job.size} bytes")
            sent += got
            wire += float(total) - float(appconnect)
        # Wall time is what curl saw after its handshake, summed over fetches.
        return Result(job.mode, sent, t0, t0 + wire, cpu, receiver_cpu=recv_cpu,
                      confirmed="count")
    finally:
        srv.kill()
        srv.wait()
        log.close()


def _child_setup(parent: int) -> Any:
    """``preexec_fn`` for the tools a worker runs: the default SIGINT (not the
    worker's ignored one, which exec would keep) and death with the worker."""
    _load_libc()

    def setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent(parent, signal.SIGKILL)

    return setup


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _accept_port(srv: subprocess.Popen[bytes], log: IO[bytes]) -> int:
    """The port from s_server's ``ACCEPT host:port`` line (within 10 s)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log.seek(0)
        for raw in log.read().splitlines():
            line = raw.decode(errors="replace").strip()
            if line.startswith("ACCEPT"):
                return int(line.rpartition(":")[2])
        if srv.poll() is not None:
            break
        time.sleep(0.02)
    log.seek(0)
    text = log.read().decode(errors="replace").strip().replace("\n", " ")
    raise BenchError(f"openssl s_server did not start: {text[:300]}")


# -- the loopback receiver ---------------------------------------------------------------


def receiver_main(conn: Any, opts: TlsOptions, cert_pem: str, key_pem: str,
                  parent: int) -> None:
    """Listen on a TLS and a plain port (sent to the parent), fork per connection.

    It and its connection children end with the bench (PR_SET_PDEATHSIG),
    whatever ends the bench.
    """
    _load_libc()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent)
    me = os.getpid()
    ctx = server_context(opts, cert=cert_pem, key=key_pem)
    tls_l = socket.create_server(("127.0.0.1", 0), backlog=128)
    tcp_l = socket.create_server(("127.0.0.1", 0), backlog=128)
    conn.send((tls_l.getsockname()[1], tcp_l.getsockname()[1]))
    conn.close()
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(tls_l, selectors.EVENT_READ, "tls")
    sel.register(tcp_l, selectors.EVENT_READ, "tcp")
    while True:
        for key, _ in sel.select(0.5):
            lst = key.fileobj
            assert isinstance(lst, socket.socket)
            try:
                sock, _addr = lst.accept()
            except OSError:
                continue
            if os.fork() == 0:
                code = 0
                try:
                    die_with_parent(me, signal.SIGKILL)
                    tls_l.close()
                    tcp_l.close()
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if key.data == "tcp":
                        _recv_tcp(sock)
                    else:
                        _recv_tls(sock, ctx)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            sock.close()
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _recv_tcp(sock: socket.socket) -> None:
    buf = bytearray(_BUF)
    total = 0
    cpu0 = time.process_time()
    while n := sock.recv_into(buf):
        total += n
    cpu = time.process_time() - cpu0
    sock.sendall(total.to_bytes(8, "big") + int(cpu * 1e6).to_bytes(8, "big"))
    sock.close()


def _recv_tls(sock: socket.socket, ctx: SSL.Context) -> None:
    res = run_handshake(sock, ctx, "server", exact=exact_reads("auto"), timeout=30)
    sock.settimeout(600)
    chan: KtlsChannel | OpenSSLChannel = establish(sock, res, "auto", lambda _m: None)
    cpu0 = time.process_time()
    total = sink(chan, 0)["bytes_in"]  # the receive path of 'serve --sink'
    cpu = time.process_time() - cpu0
    if chan.peer_closed:
        chan.send_all(total.to_bytes(8, "big") + int(cpu * 1e6).to_bytes(8, "big"))
        chan.close_notify()
    chan.close()
