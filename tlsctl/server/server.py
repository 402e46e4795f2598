"""The TLS server behind ``tlsctl serve``: an accept loop, a thread per connection.

A thread per connection: the record layer releases the GIL in the AEAD and
socket calls, and a thread is the simplest way to keep one slow client from
holding up the others.  At most ``max_conns`` at once (by default what
RLIMIT_NOFILE allows with headroom): beyond that the accept loop waits and
new clients queue in the listen backlog, so a flood of idle connections
cannot make ``accept`` fail with EMFILE for everyone.  A client must finish
its handshake within ``handshake_timeout`` (a few seconds), separately
from the idle ``timeout`` after it, so connections that never speak TLS
free their slot quickly.

Every connection ends in exactly one record (a dict, handed to the
``on_record`` callback with the label its log line starts with); a failing
connection is recorded and never stops the server.  It is "ok" only if it
ended with the peer's close_notify; anything else (failed handshake, alert,
EOF without close_notify, cut by our own stop) is recorded as failed and
makes :attr:`Server.status` INCOMPLETE.  The server's own repeated errors
go to ``warn`` rate-limited (:mod:`.ratelog`).  :attr:`Server.stop` set
(``serve``'s SIGINT/SIGTERM): stop accepting, give running connections a
moment to finish, then cut them ("interrupted by server shutdown").

Nothing here prints: what to show, and how, is the caller's.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from tlsctl.addresses import format_addr
from tlsctl.control import Registrar
from tlsctl.exitcodes import ExitStatus
from tlsctl.handshake import HandshakeError, HandshakeResult, KeylogSink, run_handshake
from tlsctl.offloadmode import DeviceSpec, Offload, device_report, exact_reads
from tlsctl.server.handlers import Handler, HandlerError
from tlsctl.server.limits import default_max_conns
from tlsctl.server.ratelog import RepeatLimiter
from tlsctl.session.channel import (
    ChannelError,
    KtlsChannel,
    OpenSSLChannel,
    PeerError,
    establish,
)

__all__ = ["RecordSink", "Server", "ServerConfig"]

RecordSink = Callable[[dict[str, Any], str], None]
"""Takes one connection's record and the label its log line starts with."""


def _drop_record(_rec: dict[str, Any], _head: str) -> None:
    pass


def _drop(_msg: str) -> None:
    pass


_GRACE = 3.0  # seconds running connections get after SIGINT/SIGTERM
_POLL = 0.25  # how often the accept loop looks at the stop flag and the log
_BACKOFF = (0.05, 1.0)  # seconds to pause accepting when out of descriptors/memory
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


@dataclass(frozen=True)
class ServerConfig:
    """How each connection is run (``serve``'s options, parsed).

    ``closes_first``: we end the connection (``-WWW``: after the last
    response) instead of waiting for the client's close_notify.
    ``handshake_timeout`` defaults to ``timeout``; ``max_conns`` to
    :func:`default_max_conns`.
    """

    offload: Offload = "auto"
    device: DeviceSpec | None = None
    naccept: int | None = None
    timeout: float = 60.0
    handshake_timeout: float | None = None
    max_conns: int | None = None
    key_update_every: int | None = None
    closes_first: bool = False
    count_cpu: bool = False
    """Record each connection thread's CPU time (``host_cpu_seconds``): on
    the real wire (``--wire netns``) host and NIC CPU are reported apart."""


class Server:
    """Accept loop plus per-connection threads (see module docstring).

    ``worker`` (``--workers``) is this process's index, shown in log lines;
    ``records`` keeps the last ``naccept`` connection records (for
    in-process callers such as ``send --loopback``); a server without
    ``naccept`` keeps none, so a long run does not grow.  ``registrar``
    (the command's control server) lists every kTLS connection for
    ``inspect-context`` while it lives.
    """

    def __init__(
        self,
        listener: socket.socket,
        ctx: SSL.Context,
        handler: Handler,
        config: ServerConfig,
        *,
        keylog: KeylogSink | None = None,
        worker: int | None = None,
        registrar: Registrar | None = None,
        on_record: RecordSink = _drop_record,
        warn: Callable[[str], None] = _drop,
        connected: Callable[[HandshakeResult, str, str], None] | None = None,
    ) -> None:
        self.listener = listener
        self.ctx = ctx
        self.handler = handler
        self.config = config
        self.offload = config.offload
        self.device = config.device
        self.registrar = registrar
        self.naccept = config.naccept
        self.timeout = config.timeout
        self.handshake_timeout = (
            config.timeout if config.handshake_timeout is None else config.handshake_timeout
        )
        self.max_conns = config.max_conns or default_max_conns()
        self.worker = worker
        self.keylog = keylog
        self.closes_first = config.closes_first
        self.key_update_every = config.key_update_every
        self.on_record = on_record
        self.warn = warn
        self.connected = connected  # -brief: told once each connection is handed off
        self.stop = threading.Event()
        self.enough = threading.Event()
        """Stop accepting, as ``naccept`` does: the connections being
        served end by themselves (``stop`` cuts them after a grace)."""
        self.accepted = 0
        self.failed = 0
        self.interrupted = 0  # cut by our own stop
        self.records: deque[dict[str, Any]] = deque(maxlen=self.naccept or 0)
        self.log_limited = RepeatLimiter(warn)  # the server's own errors, not connections'
        self._slots = threading.BoundedSemaphore(self.max_conns)
        self._live: dict[int, threading.Thread] = {}
        self._socks: dict[int, socket.socket] = {}
        self._chans: dict[int, KtlsChannel] = {}  # live, for key updates on demand
        self._cut: set[int] = set()
        self._lock = threading.Lock()

    @property
    def status(self) -> ExitStatus:
        """OK when every connection handled ended cleanly, else INCOMPLETE."""
        return ExitStatus.INCOMPLETE if self.failed else ExitStatus.OK

    def serve_forever(self) -> None:
        """Accept until stopped (or ``naccept``), at most ``max_conns`` at a time.

        At the cap the loop stops calling ``accept``: new clients wait in the
        listen backlog (the kernel completes their TCP handshake) and are
        taken as slots free up.  Out of descriptors or memory anyway (other
        processes, ENFILE), it backs off exponentially and says so once per
        window instead of once per try.
        """
        self.listener.settimeout(_POLL)
        backoff = 0.0
        try:
            while not self.stop.is_set():
                self.log_limited.flush()
                if self.naccept is not None and self.accepted >= self.naccept:
                    break
                if self.enough.is_set():
                    break
                if not self._slots.acquire(timeout=_POLL):
                    continue
                try:
                    sock, addr = self.listener.accept()
                except TimeoutError:
                    self._slots.release()
                    continue
                except OSError as exc:
                    self._slots.release()
                    if self.stop.is_set():
                        break
                    self.log_limited(f"accept failed: {exc.strerror or exc}")
                    if exc.errno in _OUT_OF_RESOURCES:
                        backoff = min(_BACKOFF[1], max(_BACKOFF[0], backoff * 2))
                        self.stop.wait(backoff)
                    continue
                backoff = 0.0
                self._start(sock, addr)
        finally:
            self.listener.close()
            self._finish()
            self.log_limited.close()

    def _start(self, sock: socket.socket, addr: Any) -> None:
        """One thread for one accepted connection (it releases the slot)."""
        self.accepted += 1
        conn_id = self.accepted
        t = threading.Thread(
            target=self._conn, args=(sock, addr, conn_id), name=f"conn-{conn_id}", daemon=True
        )
        with self._lock:
            self._socks[conn_id] = sock
            self._live[conn_id] = t
        try:
            t.start()
        except RuntimeError as exc:  # "can't start new thread": out of memory/tasks
            with self._lock:
                self._socks.pop(conn_id, None)
                self._live.pop(conn_id, None)
                self.failed += 1
            sock.close()
            self._slots.release()
            self._log(
                self._new_record(conn_id, addr)
                | {"ok": False, "seconds": 0.0, "error": f"not served: {exc}"}
            )
            self.stop.wait(_BACKOFF[1])

    def _finish(self) -> None:
        """naccept: wait for all; a signal: wait ``_GRACE`` s, then cut them off.

        A connection cut here is logged as "interrupted by server shutdown"
        and counts as failed: it did not end with the peer's close_notify.
        """
        deadline: float | None = None
        while True:
            with self._lock:
                # A thread that ended without taking itself off (it cannot,
                # since its bookkeeping is in a finally; kept as a guard) is
                # never waited for: join() on it returns at once, and this
                # loop would spin.
                for cid in [c for c, t in self._live.items() if t.ident and not t.is_alive()]:
                    del self._live[cid]
                live = list(self._live.values())
            if not live:
                return
            if self.stop.is_set():
                deadline = deadline or time.monotonic() + _GRACE
                if time.monotonic() >= deadline:
                    break
            live[0].join(0.1)
        # First only our read side: a reader sees EOF and can still end
        # politely (an idle -WWW keep-alive connection sends close_notify);
        # what is still running a moment later loses both directions.
        for how, wait in ((socket.SHUT_RD, 1.0), (socket.SHUT_RDWR, 10.0)):
            with self._lock:
                for conn_id, s in self._socks.items():
                    self._cut.add(conn_id)
                    with contextlib.suppress(OSError):
                        s.shutdown(how)
            end = time.monotonic() + wait
            for t in live:
                t.join(max(0.0, end - time.monotonic()))

    def _new_record(self, conn_id: int, addr: Any) -> dict[str, Any]:
        return {
            "event": "connection",
            "conn": conn_id,
            "worker": self.worker or 0,
            "peer": format_addr(addr[0], addr[1]),
        }

    def _conn(self, sock: socket.socket, addr: Any, conn_id: int) -> None:
        rec = self._new_record(conn_id, addr)
        start = time.perf_counter()
        cpu0 = time.thread_time()
        chan: KtlsChannel | OpenSSLChannel | None = None
        try:
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see send.py
            res = run_handshake(
                sock,
                self.ctx,
                "server",
                keylog=self.keylog,
                timeout=self.handshake_timeout,
                exact=exact_reads(self.offload),
            )
            rec["handshake_seconds"] = round(time.perf_counter() - start, 6)
            sock.settimeout(self.timeout)
            chan = establish(
                sock,
                res,
                self.offload,
                lambda m: self.warn(f"{self._head(rec)}: {m}"),
                self.device,
                registrar=self.registrar,
            )
            rec.update(
                version=res.version_name,
                cipher=res.cipher_name,
                offload=chan.offload,
                tx_seq_at_handoff=res.tx_seq,
                rx_seq_at_handoff=res.rx_seq,
            )
            if res.alpn:
                rec["alpn"] = res.alpn
            if self.connected is not None:
                self.connected(res, chan.offload, self._head(rec))
            if isinstance(chan, KtlsChannel) and res.is_tls13:
                chan.key_update_every = self.key_update_every
                with self._lock:
                    self._chans[conn_id] = chan
            start = time.perf_counter()
            rec.update(self.handler(chan, conn_id))
            if not self.closes_first and not chan.peer_closed:
                rec["truncated"] = True
                raise PeerError(
                    f"truncated: the peer closed the connection without "
                    f"close_notify after {rec.get('bytes_in', 0)} bytes"
                )
            self._close(chan, rec)
            if isinstance(chan, KtlsChannel):
                tx_end, rx_end = chan.live_seqs()
                rec.update(
                    key_updates=chan.key_updates,
                    key_updates_sent=chan.key_updates_sent,
                    tx_seq_at_end=tx_end,
                    rx_seq_at_end=rx_end,
                )
                rec.update(device_report(chan.k))
            rec["ok"] = True
        except HandlerError as exc:
            rec.update(exc.facts, ok=False, error=str(exc))
        except (HandshakeError, ChannelError, OSError) as exc:
            text = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
            rec.update(ok=False, error=text)
        except Exception as exc:  # a bug must cost one connection, never the server
            rec.update(ok=False, error=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:  # from here on _finish can no longer cut this socket
                self._socks.pop(conn_id, None)
                self._chans.pop(conn_id, None)
                cut = conn_id in self._cut
            if not rec.get("ok"):
                if chan is not None and not self.closes_first:
                    rec["truncated"] = True  # the stream did not end with close_notify
                if cut:
                    rec.update(
                        interrupted=True,
                        error="interrupted by server shutdown "
                        + (
                            f"after {rec.get('bytes_in', 0)} bytes"
                            if chan is not None
                            else "during the handshake"
                        ),
                    )
            if isinstance(chan, KtlsChannel) and chan.alert_sent is not None:
                rec["alert_sent"] = chan.alert_sent
            rec["seconds"] = round(time.perf_counter() - start, 6)
            try:
                if chan is not None:
                    chan.close()
                else:
                    sock.close()
            except OSError:
                pass
            if rec.get("ok") and isinstance(chan, KtlsChannel):
                # Again after the close: its tls_dev_del is in the NIC's
                # counters now (tx_tls_del, rx_tls_del), as ethtool -S shows
                # them once the connection is gone.
                rec.update(device_report(chan.k))
            if self.config.count_cpu:
                rec["host_cpu_seconds"] = round(time.thread_time() - cpu0, 6)
            with self._lock:
                self.failed += not rec.get("ok")
                self.interrupted += cut and not rec.get("ok")
                self.records.append(rec)
            try:
                self._log(rec)  # may raise: e.g. EPIPE once stdout's reader is gone
            finally:
                with self._lock:
                    self._live.pop(conn_id, None)
                self._slots.release()

    def key_update_all(self) -> int:
        """SIGUSR1: every live TLS 1.3 connection sends a KeyUpdate (and
        switches TX keys) before the next record it sends."""
        # No lock: this runs in a signal handler on the main thread, which may
        # hold self._lock already; list() of a dict is atomic under the GIL.
        chans = list(self._chans.values())
        for chan in chans:
            chan.request_key_update()
        return len(chans)

    def _close(self, chan: KtlsChannel | OpenSSLChannel, rec: dict[str, Any]) -> None:
        """Answer the peer's close_notify with ours; for -WWW we close first."""
        if self.closes_first:
            chan.close_notify()
            try:
                if isinstance(chan, KtlsChannel):
                    chan.k.settimeout(2.0)
                else:
                    chan.sock.settimeout(2.0)
                while chan.recv(1 << 16):
                    pass
            except (ChannelError, OSError):
                pass
            return
        rec["clean_close"] = chan.peer_closed
        if chan.peer_closed:
            chan.close_notify()

    def _head(self, rec: dict[str, Any]) -> str:
        label = rec["conn"] if self.worker is None else f"w{self.worker}:{rec['conn']}"
        return f"[{label}] {rec['peer']}"

    def _log(self, rec: dict[str, Any]) -> None:
        self.on_record(rec, self._head(rec))
