"""``bench -R``: the bench's server sends, its client receives (iperf3's reverse).

A server process (:func:`reverse_server_main`, loopback only) listens on one
port per mode and forks per connection, like the forward receiver; the
child makes the mode's sending side (plain TCP, pyOpenSSL's ``SSL_write``,
or this layer with sw, sim-nic or kernel TX, as the forward senders do:
:mod:`.pump`) and sends the file, once or until ``-t`` is up.  The client
(a pool worker, :func:`receive`) counts what arrives (the interval
reports are its view, as iperf3's client shows in reverse), and when the
server has closed (close_notify, or TCP's FIN for tcp) it sends back the
16-byte report (:mod:`.report`): the server checks that the count is what
it sent.  The server's own measurement (its CPU, the NIC's, the NIC's
counters) reaches the runner through a queue, keyed by the client's port,
and is joined to the client's there (:class:`ReverseResults`): host CPU is
the sending server's, receiver CPU the client's.

``openssl`` does not run reversed (``s_server -WWW`` takes no upload, and
the forward openssl mode already has the server sending); neither does a
remote ``serve --sink``, which only receives.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any, NoReturn

from OpenSSL import SSL

from tlsctl.benchrun.errors import BenchError, ModeUnavailable
from tlsctl.benchrun.intervals import IntervalClock
from tlsctl.benchrun.job import Job
from tlsctl.benchrun.modes import TLS_MAX_RECORD
from tlsctl.benchrun.procs import detach_signals, fork_per_connection
from tlsctl.benchrun.pump import pump_ranges, pump_reads
from tlsctl.benchrun.report import REPORT_SIZE, make_report, read_report
from tlsctl.benchrun.results import Result
from tlsctl.handshake import install_offload, run_handshake
from tlsctl.offloadmode import exact_reads
from tlsctl.session.channel import KtlsChannel, OpenSSLChannel, establish
from tlsctl.tlsconf import client_context, server_context

REVERSE_MODES = ("tcp", "tcp-sendfile", "userspace", "sw", "sim-nic", "kernel")
_BUF = 1 << 20
_UNAVAILABLE = "unavailable"
_FAILED = "failed"


# -- the server (sends) ---------------------------------------------------------


def reverse_server_main(conn: Any, template: Job, results: Any, parent: int) -> NoReturn:
    """Listen on one loopback port per mode (the ports go to the parent over
    ``conn``), fork per connection; each child puts ``(client port, Result
    or (kind, message))`` on ``results``.  Never returns."""
    detach_signals(parent)
    listeners: dict[socket.socket, str] = {}
    ports: dict[str, int] = {}
    for mode in REVERSE_MODES:
        new = socket.create_server(("127.0.0.1", 0), backlog=128)
        listeners[new] = mode
        ports[mode] = new.getsockname()[1]
    conn.send(ports)
    conn.close()

    def serve(mode: str, sock: socket.socket, addr: Any) -> None:
        try:
            results.put((addr[1], _serve(_job_for(template, mode), sock)))
        except ModeUnavailable as exc:
            results.put((addr[1], (_UNAVAILABLE, str(exc))))
        except BenchError as exc:
            results.put((addr[1], (_FAILED, str(exc))))
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                results.put((addr[1], (_FAILED, f"{type(exc).__name__}: {exc}")))
            raise

    fork_per_connection(listeners, serve)


def _job_for(template: Job, mode: str) -> Job:
    from dataclasses import replace

    return replace(template, mode=mode, faults=template.faults if mode == "sim-nic" else None)


def _serve(job: Job, sock: socket.socket) -> Result:
    """Send as ``job.mode`` sends; the Result as a forward sender's."""
    from tlsctl.benchrun.senders import recv_exact, tcp_pump

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = IntervalClock(None, None)
    if job.mode in ("tcp", "tcp-sendfile"):
        with sock, open(job.path, "rb") as f:
            cpu0, t0 = time.process_time(), clock.start()
            sent = tcp_pump(job, sock, f, t0, clock)
            sock.shutdown(socket.SHUT_WR)
            data = recv_exact(sock, REPORT_SIZE)
            t1, cpu1 = time.monotonic(), time.process_time()
        _got, rcpu = read_report(data, job.mode, sent)
        return Result(job.mode, sent, t0, t1, cpu1 - cpu0, receiver_cpu=rcpu, confirmed="count")
    ctx = server_context(job.opts, cert=job.cert_pem, key=job.key_pem)
    if job.mode == "userspace":
        return _serve_userspace(job, sock, ctx, clock)
    return _serve_ktls(job, sock, ctx, clock)


def _serve_userspace(
    job: Job, sock: socket.socket, ctx: SSL.Context, clock: IntervalClock
) -> Result:
    sock.settimeout(None)  # pyOpenSSL wants a blocking socket (no timeout)
    conn = SSL.Connection(ctx, sock)
    conn.set_accept_state()
    try:
        conn.do_handshake()
    except SSL.Error as exc:
        raise BenchError(f"userspace: TLS handshake failed: {exc}") from None
    each = _BUF if job.record_size == TLS_MAX_RECORD else job.record_size
    data = b""
    with sock, open(job.path, "rb") as f:
        cpu0, t0 = time.process_time(), clock.start()
        sent = pump_reads(job, f, t0, clock, each, conn.sendall)
        conn.shutdown()
        while True:
            try:
                data += conn.recv(1 << 16)
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
        t1, cpu1 = time.monotonic(), time.process_time()
    _got, rcpu = read_report(data, job.mode, sent)
    return Result(job.mode, sent, t0, t1, cpu1 - cpu0, receiver_cpu=rcpu, confirmed="count")


def _serve_ktls(job: Job, sock: socket.socket, ctx: SSL.Context, clock: IntervalClock) -> Result:
    """sw, sim-nic, kernel: the server's TX through this layer."""
    from tlsctl.benchrun.senders import kernel_max_payload, layer_for

    res = run_handshake(
        sock, ctx, "server", exact=job.mode == "kernel" or exact_reads("auto"), timeout=30
    )
    sock.settimeout(600)
    k = install_offload(layer_for(job, sock), res, kernel_max_payload(job))
    chan = KtlsChannel(k, res)
    try:
        if job.mode == "sim-nic" and k.tx_conf != "device":
            chan.close_notify()  # no data; the client's report still comes
            while chan.recv(1 << 16):
                pass
            raise ModeUnavailable(
                f"the NIC declined TLS_TX ({k.offload_refused}); try -tls1_2 or another cipher"
            )
        data = b""
        with open(job.path, "rb") as f:
            cpu0, t0 = time.process_time(), clock.start()
            sent = pump_ranges(job, f, t0, clock, chan.send_file)
            chan.close_notify()
            while len(data) < REPORT_SIZE and (d := chan.recv(1 << 16)):
                data += d
            t1, cpu1 = time.monotonic(), time.process_time()
        dev = k.device_seconds
        state = k.device_state() if job.mode == "sim-nic" else None
    finally:
        chan.close()
    _got, rcpu = read_report(data, job.mode, sent)
    return Result(
        job.mode,
        sent,
        t0,
        t1,
        cpu1 - cpu0,
        device_cpu=dev,
        receiver_cpu=rcpu,
        confirmed="count",
        device_counters=dict(state.report.stats) if state is not None else None,
    )


# -- the client (receives) --------------------------------------------------------


def receive(job: Job, clock: IntervalClock) -> Result:
    """One stream received from the bench's server; the Result holds the
    client's count, CPU and intervals and its port (``extra["port"]``), to
    be joined with the server's (:meth:`ReverseResults.join`)."""
    from tlsctl.benchrun.senders import connect

    sock = connect(job.target.host, job.target.tls_port)
    port = sock.getsockname()[1]
    view = memoryview(bytearray(_BUF))
    if job.mode in ("tcp", "tcp-sendfile"):
        sock.settimeout(None)
        with sock:
            total, t0, t1, cpu, intervals = _count(sock.recv_into, view, clock)
            sock.sendall(make_report(total, cpu))
    else:
        res = run_handshake(
            sock,
            client_context(job.opts, verify=False),
            "client",
            exact=job.mode == "kernel" or exact_reads("auto"),
        )
        sock.settimeout(None)
        chan: KtlsChannel | OpenSSLChannel = establish(sock, res, "auto", lambda _m: None)
        try:
            total, t0, t1, cpu, intervals = _count(chan.recv_into, view, clock)
            if not chan.peer_closed:
                raise BenchError(
                    f"{job.mode}: the server closed without close_notify after {total} bytes"
                )
            chan.send_all(make_report(total, cpu))
            chan.close_notify()
        finally:
            chan.close()
    return Result(job.mode, total, t0, t1, cpu, extra={"port": port}, intervals=intervals)


def _count(
    recv_into: Callable[[memoryview], int], view: memoryview, clock: IntervalClock
) -> tuple[int, float, float, float, list[dict[str, Any]] | None]:
    """Read to EOF, counting: (bytes, start, end, CPU seconds, intervals)."""
    total = 0
    cpu0, t0 = time.process_time(), clock.start()
    while n := recv_into(view):
        total += n
        clock.add(n)
    intervals = clock.finish()
    return total, t0, time.monotonic(), time.process_time() - cpu0, intervals


class ReverseResults:
    """The servers' halves of the reverse streams, as they arrive."""

    def __init__(self, queue: Any, ports: dict[str, int]) -> None:
        self.queue = queue
        self.ports = ports
        self._got: dict[int, Any] = {}

    def failure(self, wait: float) -> BenchError | None:
        """A client failed: did its server say why first (within ``wait`` s)?
        The server's reason is the better line (the client only saw a reset)."""
        deadline = time.monotonic() + wait
        while True:
            for port, item in list(self._got.items()):
                if isinstance(item, tuple):
                    del self._got[port]
                    kind, why = item
                    return (ModeUnavailable if kind == _UNAVAILABLE else BenchError)(why)
            if time.monotonic() > deadline:
                return None
            if self.queue.empty():
                time.sleep(0.01)
                continue
            p, got = self.queue.get()
            self._got[int(p)] = got

    def join(self, client: Result, deadline: float) -> Result:
        """The stream as a row counts it: the server's bytes, CPU and NIC,
        the client's times, CPU (as the receiver's) and intervals.
        :class:`BenchError` if the counts differ or the server failed."""
        port = int(client.extra["port"])
        while port not in self._got:
            if time.monotonic() > deadline:
                raise BenchError(f"{client.mode}: the reverse server did not report in time")
            if self.queue.empty():
                time.sleep(0.01)
                continue
            p, item = self.queue.get()
            self._got[int(p)] = item
        item = self._got.pop(port)
        if isinstance(item, tuple):
            kind, why = item
            raise (ModeUnavailable if kind == _UNAVAILABLE else BenchError)(why)
        server: Result = item
        if server.bytes != client.bytes:
            raise BenchError(f"{client.mode}: receiver got {client.bytes} of {server.bytes} bytes")
        return Result(
            client.mode,
            server.bytes,
            client.start,
            client.end,
            server.cpu,
            device_cpu=server.device_cpu,
            receiver_cpu=client.cpu,
            confirmed="count",
            intervals=client.intervals,
            device_counters=server.device_counters,
        )
