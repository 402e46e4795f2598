"""One stream of one mode: what a sender process runs.

Every transfer runs in a sender *process* of its own (a worker of a process
pool), so ``time.process_time()`` there is the sender's CPU and nothing else
(no progress display, no receiver).  Timing starts after the TLS handshake
and ends when the receiver has confirmed the bytes (:mod:`.report`).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from io import BufferedReader
from typing import Any, BinaryIO

from OpenSSL import SSL

from offload.ktls_socket import KTLSSocket
from tlsctl.addresses import format_addr
from tlsctl.benchrun.errors import BenchError, ModeUnavailable
from tlsctl.benchrun.intervals import IntervalClock, clock_for
from tlsctl.benchrun.job import Job
from tlsctl.benchrun.modes import TLS_MAX_RECORD
from tlsctl.benchrun.openssl import openssl_www
from tlsctl.benchrun.pump import pump_ranges, pump_reads
from tlsctl.benchrun.report import REPORT_SIZE, read_report
from tlsctl.benchrun.results import Result
from tlsctl.handshake import HandshakeError, install_offload, run_handshake, set_verify_host
from tlsctl.offloadmode import DeviceSpec, exact_reads, open_layer
from tlsctl.session.channel import KtlsChannel
from tlsctl.tlsconf import client_context
from tlsctl.transfer.confirm import Drain
from tlsctl.verify import VerifyState, failure_line

BUF = 1 << 20
_REMOTE_STEP = 4 << 20  # bytes between two looks at whether a remote server answered
_REMOTE_USERSPACE_STEP = 64 << 10  # userspace to a remote: a look after each 64 KiB
_REMOTE_CLOSE_WAIT = 60.0  # seconds a remote server has to answer our close_notify


def run_job(job: Job, stream: int = 1) -> Result:
    """Run one stream; exceptions become :class:`BenchError` with one line."""
    clock = clock_for(job.interval, job.seconds, job.round_no, stream)
    remote = job.target.tcp_port is None  # errors are about -connect's server
    try:
        if job.reverse:
            from tlsctl.benchrun.reverse import receive

            return receive(job, clock)
        if job.mode == "openssl":
            return openssl_www(job)
        if job.mode in ("tcp", "tcp-sendfile"):
            return _tcp(job, clock)
        if job.mode == "userspace":
            return _userspace(job, clock)
        return _ktls(job, clock)
    except BenchError as exc:
        if exc.option is None and remote:
            exc.option = "-connect"
        raise
    except HandshakeError as exc:  # already one line: which check failed, and why
        raise BenchError(f"{job.mode}: {exc}", "-connect" if remote else None) from None
    except Exception as exc:  # anything else still has to reach the parent as a line
        raise BenchError(f"{job.mode}: {type(exc).__name__}: {exc}") from None


def connect(host: str, port: int) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout=30)
    except OSError as exc:
        raise BenchError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _connect_to(job: Job, port: int) -> socket.socket:
    """To the target; over the real wire the NIC must see the SYN (it learns
    the flow's sequence numbers from it), as it does: this process lives in
    the sender namespace (:func:`tlsctl.benchrun.procs.worker_init`)."""
    return connect(job.target.host, port)


def _tcp(job: Job, clock: IntervalClock) -> Result:
    if job.target.tcp_port is None:
        raise BenchError(f"{job.mode}: needs the bench's own receiver")
    sock = _connect_to(job, job.target.tcp_port)
    sock.settimeout(None)
    with sock, open(job.path, "rb") as f:
        cpu0, t0 = time.process_time(), clock.start()
        sent = tcp_pump(job, sock, f, t0, clock)
        intervals = clock.finish()
        sock.shutdown(socket.SHUT_WR)
        data = recv_exact(sock, REPORT_SIZE)
        t1, cpu1 = time.monotonic(), time.process_time()
    _got, rcpu = read_report(data, job.mode, sent)
    return Result(
        job.mode,
        sent,
        t0,
        t1,
        cpu1 - cpu0,
        receiver_cpu=rcpu,
        confirmed="count",
        intervals=intervals,
    )


def tcp_pump(
    job: Job, sock: socket.socket, f: BufferedReader, t0: float, clock: IntervalClock
) -> int:
    """tcp (readinto + sendall) or tcp-sendfile (the kernel's sendfile)."""
    if job.mode == "tcp-sendfile":
        return pump_ranges(job, f, t0, clock, lambda f, pos, n: sock.sendfile(f, pos, n))
    return pump_reads(job, f, t0, clock, BUF, sock.sendall)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _client_ctx(job: Job) -> SSL.Context:
    return client_context(job.opts, verify=job.target.verify)


def layer_for(job: Job, sock: socket.socket) -> KTLSSocket:
    """The record layer for ``job.mode``, keys not yet installed: the NIC
    built as ``--offload sim-nic`` builds it (:func:`tlsctl.offloadmode.open_layer`)."""
    offload = job.mode if job.mode in ("sim-nic", "kernel") else "sw"
    if offload == "sim-nic" and job.nic_control is not None:
        from offload.netwire.txpath import NetTxPath

        # The real wire: records framed here, encrypted by the NIC process.
        path = NetTxPath(sock, job.nic_control)
        return KTLSSocket(sock, backend="sw", txpath=path, record_size=job.record_size)
    device = DeviceSpec(offload, faults=job.faults) if offload == "sim-nic" else None
    return open_layer(sock, offload, device, record_size=job.record_size)


def kernel_max_payload(job: Job) -> int | None:
    """--record-size for the kernel mode: TLS_TX_MAX_PAYLOAD_LEN (Linux 6.19+;
    ``modes.skip_reason`` skipped the mode where the kernel has not got it).
    The layer's modes take it as ``record_size`` instead."""
    if job.mode == "kernel" and job.record_size != TLS_MAX_RECORD:
        return job.record_size
    return None


def _not_a_sink(job: Job, nbytes: int) -> BenchError:
    t = job.target
    return BenchError(
        f"{job.mode}: the server at {format_addr(t.host, t.tls_port)} sent "
        f"{nbytes} bytes back: -connect needs a sink ('tlsctl serve --sink'), "
        "not a server that answers (--echo, -WWW, s_server)"
    )


def _send_remote(
    job: Job, chan: KtlsChannel, f: BinaryIO, t0: float, clock: IntervalClock
) -> tuple[int, bytes]:
    """The file (once, or until ``--time`` is up) to a remote server, in
    steps; between them, has the server answered?  A sink never sends
    application data before our close_notify; an echo server does at once
    (and would otherwise stall the run: it stops reading when we do not read
    what it sends).  What comes after our close_notify is a receiver's
    report (the loopback receiver's protocol), returned with the bytes sent.
    A :class:`Drain` reads while we send (blocked in recv: no CPU of note);
    on the way out by an error the socket is shut first, so the drain ends
    before the channel is closed under it."""
    drain = Drain(chan)
    drain.start()
    try:
        sent = _send_steps(job, chan, f, t0, drain, clock)
        clock.finish()
        drain.closing = True
        chan.close_notify()
        drain.join(_REMOTE_CLOSE_WAIT)
    except BaseException:
        with contextlib.suppress(OSError):
            chan.k.sock.shutdown(socket.SHUT_RDWR)
        drain.join(5)
        raise
    # A sink sends nothing but its report after our close_notify; an echo
    # that only arrives after it (a loaded server) still gives it away.
    if drain.received_before_closing or drain.received > REPORT_SIZE:
        raise _not_a_sink(job, drain.received)
    if drain.is_alive():
        raise BenchError(
            f"{job.mode}: the server sent no close_notify within {_REMOTE_CLOSE_WAIT:g} s of ours"
        )
    why = drain.verdict()
    if why:
        raise BenchError(f"{job.mode}: the server did not confirm the data: {why}")
    return sent, bytes(drain.tail)


def _send_steps(
    job: Job, chan: KtlsChannel, f: BinaryIO, t0: float, drain: Drain, clock: IntervalClock
) -> int:

    def send_range(f: BinaryIO, pos: int, n: int) -> int:
        if drain.received_before_closing:
            raise _not_a_sink(job, drain.received_before_closing)
        why = drain.stopped_early()
        if why:
            raise BenchError(f"{job.mode}: {why}")
        return chan.send_file(f, pos, n)

    sent = pump_ranges(job, f, t0, clock, send_range, _REMOTE_STEP)
    if drain.received_before_closing:
        raise _not_a_sink(job, drain.received_before_closing)
    return sent


def _ktls(job: Job, clock: IntervalClock) -> Result:
    """sw, sim-nic, kernel: the handshake in pyOpenSSL, then the kTLS layer."""
    t = job.target
    sock = _connect_to(job, t.tls_port)
    res = run_handshake(
        sock,
        _client_ctx(job),
        "client",
        server_name=t.server_name,
        verify_host=t.host if t.verify else None,
        exact=job.mode == "kernel" or exact_reads("auto"),
    )
    sock.settimeout(None)
    k = install_offload(layer_for(job, sock), res, kernel_max_payload(job))
    chan = KtlsChannel(k, res)
    if job.mode == "sim-nic" and k.tx_conf != "device":
        chan.close()
        raise ModeUnavailable(
            f"the NIC declined TLS_TX ({k.offload_refused}); try -tls1_2 or another cipher"
        )
    sent = 0
    remote = t.tcp_port is None
    try:
        with open(job.path, "rb") as f:
            cpu0, t0 = time.process_time(), clock.start()
            data = b""
            if remote:
                sent, data = _send_remote(job, chan, f, t0, clock)
            else:
                sent = pump_ranges(job, f, t0, clock, chan.send_file)
                clock.finish()
                chan.close_notify()
                while d := chan.recv(1 << 16):
                    data += d
            t1, cpu1 = time.monotonic(), time.process_time()
        # Thread CPU time inside the driver's xmit, as the wire model counts
        # it (not wall time: with more streams than cores a process waits
        # for a core inside xmit, and that is not the device's work).
        dev = k.device_seconds
        state = k.device_state() if job.mode == "sim-nic" else None
        extra: dict[str, Any] = {
            "version": res.version_name,
            "cipher": res.cipher_name,
            "tx_conf": k.tx_conf,
        }
    finally:
        chan.close()
    r = Result(
        job.mode,
        sent,
        t0,
        t1,
        cpu1 - cpu0,
        device_cpu=dev,
        extra=extra,
        intervals=clock.finish(),
        device_counters=dict(state.report.stats) if state is not None else None,
    )
    _confirm(r, data, chan.peer_closed)
    return r


def _answered(job: Job, conn: SSL.Connection, sock: socket.socket) -> None:
    """Userspace mode to a remote server: has it sent application data?
    (TLS 1.3 tickets are taken by OpenSSL inside ``recv``.)  One thread
    only: pyOpenSSL's Connection is not thread-safe, so no reader beside
    the writer; a look between writes, without blocking."""
    if not select.select([sock], [], [], 0)[0]:
        return
    sock.setblocking(False)
    try:
        got = conn.recv(1 << 16)
    except (SSL.WantReadError, SSL.ZeroReturnError):
        return
    except SSL.Error as exc:
        raise BenchError(f"userspace: {_ssl_error_text(exc)}") from None
    finally:
        sock.setblocking(True)
    if got:
        raise _not_a_sink(job, len(got))


def _ssl_error_text(exc: SSL.Error) -> str:
    """OpenSSL's reason strings, not the raw tuple list."""
    items = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    return "; ".join(str(i[-1]) for i in items if isinstance(i, tuple) and i) or str(exc)


def _confirm(r: Result, data: bytes, peer_closed: bool) -> None:
    if data:
        _got, r.receiver_cpu = read_report(data, r.mode, r.bytes)
        r.confirmed = "count"
    elif peer_closed:
        r.confirmed = "close_notify"
    else:
        raise BenchError(
            f"{r.mode}: the receiver closed without confirming the data "
            "(no close_notify): bytes may have been lost"
        )


def _userspace(job: Job, clock: IntervalClock) -> Result:
    """pyOpenSSL's own record layer on the socket: read, then SSL_write."""
    t = job.target
    sock = _connect_to(job, t.tls_port)
    sock.settimeout(None)
    conn = SSL.Connection(_client_ctx(job), sock)
    state = VerifyState(target=t.host if t.verify else None)
    conn.set_app_data(state)
    if t.server_name:
        conn.set_tlsext_host_name(t.server_name.encode("idna"))
    if t.verify:
        set_verify_host(conn, t.host)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.Error as exc:
        sock.close()
        why = failure_line(conn) or f"TLS handshake failed: {_ssl_error_text(exc)}"
        raise BenchError(f"userspace: {why}") from None
    remote = t.tcp_port is None
    each = BUF if job.record_size == TLS_MAX_RECORD else job.record_size
    if remote:  # look at whether the server answered between writes (see _answered)
        each = min(each, _REMOTE_USERSPACE_STEP)
    peer_closed = False
    data = b""

    def write(chunk: memoryview) -> None:
        if remote:
            _answered(job, conn, sock)
        conn.sendall(chunk)

    with sock, open(job.path, "rb") as f:
        cpu0, t0 = time.process_time(), clock.start()
        sent = pump_reads(job, f, t0, clock, each, write)
        intervals = clock.finish()
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
    r = Result(job.mode, sent, t0, t1, cpu1 - cpu0, intervals=intervals)
    _confirm(r, data, peer_closed)
    return r
