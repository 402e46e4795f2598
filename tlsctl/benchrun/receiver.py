"""The loopback receiver: a process that forks one child per connection.

It listens on two ports: plain TCP (count and discard) and TLS (a real
handshake with the run's ephemeral certificate, then the kTLS layer, or the
host kernel, decrypts: the receive path of ``serve --sink``).  When the
sender has finished, the child sends the 16-byte report (:mod:`.report`).
It and its connection children end with the bench (:mod:`.procs`),
whatever ends the bench.
"""

from __future__ import annotations

import socket
import time
from typing import Any, NoReturn

from OpenSSL import SSL

from tlsctl.benchrun.procs import detach_signals, fork_per_connection
from tlsctl.benchrun.report import make_report
from tlsctl.handshake import run_handshake
from tlsctl.offloadmode import exact_reads
from tlsctl.server.handlers import sink
from tlsctl.session.channel import KtlsChannel, OpenSSLChannel, establish
from tlsctl.tlsconf import TlsOptions, server_context

_BUF = 1 << 20


def receiver_main(
    conn: Any,
    opts: TlsOptions,
    cert_pem: str,
    key_pem: str,
    parent: int,
    *,
    host: str = "127.0.0.1",
    netns: str | None = None,
) -> NoReturn:
    """Listen on a TLS and a plain port of ``host`` (sent to the parent over
    the pipe ``conn``), fork per connection; never returns.  ``netns``: the
    namespace to listen in (``--wire netns``: the receiver side)."""
    from tlsctl.benchrun.wire import enter_namespace

    detach_signals(parent)
    enter_namespace(netns)
    ctx = server_context(opts, cert=cert_pem, key=key_pem)
    tls_l = socket.create_server((host, 0), backlog=128)
    tcp_l = socket.create_server((host, 0), backlog=128)
    conn.send((tls_l.getsockname()[1], tcp_l.getsockname()[1]))
    conn.close()

    def serve(tag: str, sock: socket.socket, _addr: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tag == "tcp":
            _recv_tcp(sock)
        else:
            _recv_tls(sock, ctx)

    fork_per_connection({tls_l: "tls", tcp_l: "tcp"}, serve)


def _recv_tcp(sock: socket.socket) -> None:
    buf = bytearray(_BUF)
    total = 0
    cpu0 = time.process_time()
    while n := sock.recv_into(buf):
        total += n
    cpu = time.process_time() - cpu0
    sock.sendall(make_report(total, cpu))
    sock.close()


def _recv_tls(sock: socket.socket, ctx: SSL.Context) -> None:
    res = run_handshake(sock, ctx, "server", exact=exact_reads("auto"), timeout=30)
    sock.settimeout(600)
    chan: KtlsChannel | OpenSSLChannel = establish(sock, res, "auto", lambda _m: None)
    cpu0 = time.process_time()
    total = sink(chan, 0)["bytes_in"]  # the receive path of 'serve --sink'
    cpu = time.process_time() - cpu0
    if chan.peer_closed:
        chan.send_all(make_report(total, cpu))
        chan.close_notify()
    chan.close()
