"""``tlsctl serve``: a TLS server whose connections run on the kTLS layer.

A thread per connection: the record layer releases the GIL in the AEAD and
socket calls, and a thread is the simplest way to keep one slow client from
holding up the others.  At most ``--max-conns`` at once (by default what
RLIMIT_NOFILE allows with headroom): beyond that the accept loop waits and
new clients queue in the listen backlog, so a flood of idle connections
cannot make ``accept`` fail with EMFILE for everyone.  A client must finish
its handshake within ``--handshake-timeout`` (a few seconds), separately
from the idle ``--timeout`` after it, so connections that never speak TLS
free their slot quickly.

Every connection ends in exactly one log line (or one JSON object with
``--json``); a failing connection is logged and never stops the server.
It is "ok" only if it ended with the peer's close_notify; anything else
(failed handshake, alert, EOF without close_notify, cut by our own stop)
is logged as failed and makes the exit status 3 (INCOMPLETE).  The
server's own repeated errors are rate-limited (``_ratelog``).
SIGINT/SIGTERM stop accepting, give running connections a moment to
finish, then cut them ("interrupted by server shutdown").
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import resource
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
from cryptography import x509
from OpenSSL import SSL

from tlsctl.addresses import format_addr
from tlsctl.certs import PrivateKey, ephemeral_server_cert
from tlsctl.commands._options import (
    control_socket_option,
    device_spec_from,
    key_update_option,
    parse_hostport,
    start_control_server,
    tls_options,
    tls_options_from,
)
from tlsctl.commands._output import emit_json, human_rate, info, warn
from tlsctl.control import ControlServer, Registrar
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.handshake import HandshakeError, KeylogFile, KeylogSink, run_handshake
from tlsctl.offloadmode import DeviceSpec, Offload, device_report, exact_reads
from tlsctl.server.handlers import PARTIAL, Handler, HandlerError, Store, echo, sink
from tlsctl.server.ratelog import RepeatLimiter
from tlsctl.server.workers import run_workers
from tlsctl.server.www import Www
from tlsctl.session.channel import (
    ChannelError,
    KtlsChannel,
    OpenSSLChannel,
    establish,
)
from tlsctl.tlsconf import ConfigError, server_context

_GRACE = 3.0  # seconds running connections get after SIGINT/SIGTERM
_POLL = 0.25  # how often the accept loop looks at the stop flag and the log
_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
_FD_HEADROOM = 64  # descriptors kept free for the listener, logs, control socket, ...
_FDS_PER_CONN = 2  # the connection's socket and, with --save-dir/-o, its file
_MAX_CONNS_CEILING = 4096  # a thread and up to 1 MiB of receive buffer each
_BACKOFF = (0.05, 1.0)  # seconds to pause accepting when out of descriptors/memory
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
HANDSHAKE_TIMEOUT = 10.0


def default_max_conns() -> int:
    """Connections one process can hold without running out of descriptors.

    Half of what RLIMIT_NOFILE leaves free after the descriptors already
    open and some headroom (each connection needs its socket and, when
    storing, its file), at most ``_MAX_CONNS_CEILING``.  Beyond the cap new
    clients wait in the listen backlog instead of being accepted and failed.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own
    except OSError:
        in_use = 16
    free = soft - in_use - _FD_HEADROOM
    return max(1, min(_MAX_CONNS_CEILING, free // _FDS_PER_CONN))


class Server:
    """Accept loop plus per-connection threads (see module docstring).

    ``worker`` (``--workers``) is this process's index, shown in log lines;
    ``records`` keeps the last ``naccept`` connection records (for
    in-process callers such as ``send --loopback``); a server without
    ``naccept`` keeps none, so a long run does not grow.
    """

    def __init__(self, listener: socket.socket, ctx: SSL.Context, handler: Handler,
                 *, mode: str, offload: Offload, naccept: int | None, timeout: float,
                 keylog: KeylogSink | None, quiet: bool, as_json: bool,
                 closes_first: bool, verbose: int = 0,
                 device: DeviceSpec | None = None,
                 key_update_every: int | None = None,
                 handshake_timeout: float | None = None,
                 max_conns: int | None = None,
                 worker: int | None = None,
                 registrar: Registrar | None = None) -> None:
        self.listener = listener
        self.ctx = ctx
        self.handler = handler
        self.mode = mode
        self.offload = offload
        self.device = device
        self.registrar = registrar  # the control server: inspect-context lists our connections
        self.naccept = naccept
        self.timeout = timeout
        self.handshake_timeout = timeout if handshake_timeout is None else handshake_timeout
        self.max_conns = max_conns or default_max_conns()
        self.worker = worker
        self.keylog = keylog
        self.quiet = quiet
        self.as_json = as_json
        self.closes_first = closes_first
        self.verbose = verbose
        self.key_update_every = key_update_every
        self.stop = threading.Event()
        self.accepted = 0
        self.failed = 0
        self.interrupted = 0  # cut by our own stop
        self.records: deque[dict[str, Any]] = deque(maxlen=naccept or 0)
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
        t = threading.Thread(target=self._conn, args=(sock, addr, conn_id),
                             name=f"conn-{conn_id}", daemon=True)
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
            self._log(self._new_record(conn_id, addr) | {"ok": False, "seconds": 0.0,
                                                         "error": f"not served: {exc}"})
            self.stop.wait(_BACKOFF[1])

    def _finish(self) -> None:
        """naccept: wait for all; a signal: wait ``_GRACE`` s, then cut them off.

        A connection cut here is logged as "interrupted by server shutdown"
        and counts as failed: it did not end with the peer's close_notify.
        """
        deadline: float | None = None
        while True:
            with self._lock:
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
        return {"event": "connection", "conn": conn_id, "worker": self.worker or 0,
                "peer": format_addr(addr[0], addr[1])}

    def _conn(self, sock: socket.socket, addr: Any, conn_id: int) -> None:
        rec = self._new_record(conn_id, addr)
        start = time.perf_counter()
        chan: KtlsChannel | OpenSSLChannel | None = None
        try:
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see send.py
            res = run_handshake(sock, self.ctx, "server", keylog=self.keylog,
                                timeout=self.handshake_timeout,
                                exact=exact_reads(self.offload))
            rec["handshake_seconds"] = round(time.perf_counter() - start, 6)
            sock.settimeout(self.timeout)
            chan = establish(sock, res, self.offload,
                             lambda m: warn(f"{self._head(rec)}: {m}"), self.device,
                             registrar=self.registrar)
            rec.update(version=res.version_name, cipher=res.cipher_name, offload=chan.mode,
                       tx_seq_at_handoff=res.tx_seq, rx_seq_at_handoff=res.rx_seq)
            if isinstance(chan, KtlsChannel) and res.is_tls13:
                chan.key_update_every = self.key_update_every
                with self._lock:
                    self._chans[conn_id] = chan
            start = time.perf_counter()
            rec.update(self.handler(chan, conn_id))
            if not self.closes_first and not chan.peer_closed:
                rec["truncated"] = True
                raise ChannelError(f"truncated: the peer closed the connection without "
                                   f"close_notify after {rec.get('bytes_in', 0)} bytes")
            self._close(chan, rec)
            if isinstance(chan, KtlsChannel):
                tx_end, rx_end = chan.live_seqs()
                rec.update(key_updates=chan.key_updates,
                           key_updates_sent=chan.key_updates_sent,
                           tx_seq_at_end=tx_end, rx_seq_at_end=rx_end)
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
                    rec.update(interrupted=True, error="interrupted by server shutdown "
                               + (f"after {rec.get('bytes_in', 0)} bytes" if chan is not None
                                  else "during the handshake"))
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
            with self._lock:
                self.failed += not rec.get("ok")
                self.interrupted += cut and not rec.get("ok")
                self.records.append(rec)
            self._log(rec)
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
        if self.as_json:
            emit_json(rec)
            return
        head = self._head(rec)
        if not rec.get("ok"):
            kept = ""
            if rec.get("file"):
                kept = f"; {rec.get('bytes_in', 0)} bytes kept in {rec['file']}"
            elif rec.get("file_removed"):
                kept = f"; removed {rec['file_removed']}"
            warn(f"{head}: error: {rec.get('error')}{kept}")
            return
        nbytes = int(rec.get("bytes_in", 0)) + int(rec.get("bytes_out", 0))
        parts = [f"{head} {rec.get('version')} {rec.get('cipher')} offload {rec.get('offload')}:",
                 f"{nbytes} bytes in {rec['seconds']:.3f} s ({human_rate(nbytes, rec['seconds'])})"]
        if "sha256" in rec:
            parts.append(f"sha256 {rec['sha256']}")
        if "file" in rec:
            parts.append(f"-> {rec['file']}")
        if "http" in rec:
            parts.append(rec["http"])
        if self.verbose and "tx_seq_at_handoff" in rec:
            parts.append(f"seq at handoff tx={rec['tx_seq_at_handoff']} "
                         f"rx={rec['rx_seq_at_handoff']}, at end tx={rec.get('tx_seq_at_end')} "
                         f"rx={rec.get('rx_seq_at_end')}, key updates received "
                         f"{rec.get('key_updates', 0)} sent {rec.get('key_updates_sent', 0)}")
        info(" ".join(parts), quiet=self.quiet)


def _listen(host: str, port: int) -> socket.socket:
    """Listen on ``host``; ``"::"`` (the default, like s_server) is dual-stack,
    so clients resolving ``localhost`` to ::1 or 127.0.0.1 both get in.

    Never SO_REUSEPORT: with it a second ``serve`` (of the same user) binding
    the same port would silently join the group and take a share of the
    connections.  ``--workers`` share this one socket instead (inherited over
    fork), so a port in use is EADDRINUSE here, decided by the kernel's bind
    with no window for a race.
    """
    if host == "::" and not socket.has_ipv6:
        host = "0.0.0.0"
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if host == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only
        s.bind((host, port))
        s.listen(_BACKLOG)
    except OSError as exc:
        s.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return s


def _open_dir(path: str, what: str) -> int:
    """A descriptor of the directory files are created in (see Store)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except NotADirectoryError:
        raise ConfigError(f"{what}: not a directory") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot write in {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        os.close(fd)
        raise ConfigError(f"{what}: cannot write in {path}")
    return fd


def _store_for_output(output: str, mode: int, keep_partial: bool) -> Store:
    """``-o FILE``: refuse at start-up what would fail (or overwrite) later."""
    if os.path.isdir(output):
        raise ConfigError(f"-o {output}: is a directory (use --save-dir {output} to store "
                          f"one file per connection)")
    parent, name = os.path.split(os.path.abspath(output))
    fd = _open_dir(parent, f"-o {output}")
    for taken in (name, name + PARTIAL):
        with contextlib.suppress(FileNotFoundError):
            os.lstat(taken, dir_fd=fd)
            os.close(fd)
            raise ConfigError(f"-o {output}: {os.path.join(parent, taken)} exists "
                              f"(not overwritten: remove it or choose another name)")
    return Store(dir_fd=fd, dir_path=parent, name=name, mode=mode, keep_partial=keep_partial)


def _run_id() -> str:
    """Start time (UTC) plus a random tag: unique across runs on one directory,
    even two in the same second, and not guessable in advance by someone
    who would plant a file under the next name."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def _pick_handler(sink_: bool, output: str | None, save_dir: str | None, echo_: bool,
                  www: str | None, file_mode: int, keep_partial: bool) -> tuple[str, Handler]:
    chosen = [n for n, on in (("--sink", sink_), ("-o", output), ("--save-dir", save_dir),
                              ("--echo", echo_), ("-WWW", www)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of {', '.join(chosen)}")
    if output:
        return "output", _store_for_output(output, file_mode, keep_partial)
    if save_dir:
        fd = _open_dir(save_dir, f"--save-dir {save_dir}")
        return "save-dir", Store(dir_fd=fd, dir_path=save_dir, run=_run_id(), mode=file_mode,
                                 keep_partial=keep_partial)
    if echo_:
        return "echo", echo
    if www:
        if not os.path.isdir(www):
            raise ConfigError(f"-WWW {www}: not a directory")
        return "www", Www(www)
    return "sink", sink


class FileMode(click.ParamType[int]):
    """An octal permission mode (``600``, ``0640``, ``0o644``)."""

    name = "MODE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            mode = int(str(value).lower().removeprefix("0o"), 8)
        except ValueError:
            self.fail(f"{value!r} is not an octal mode (e.g. 600, 640)", param, ctx)
        if not 0 <= mode <= 0o777:
            self.fail(f"{value!r}: permission bits only (at most 777)", param, ctx)
        return mode


@click.command()
@click.option("-accept", "--accept", "accept", default="4433", show_default=True,
              metavar="[HOST:]PORT", help="Address to listen on (port 0: any free port).")
@click.option("-cert", "--cert", "cert", metavar="PEM", type=click.Path(dir_okay=False),
              help="Certificate chain (default: an ephemeral self-signed one).")
@click.option("-key", "--key", "key", metavar="PEM", type=click.Path(dir_okay=False),
              help="Private key (default: the -cert file).")
@click.option("--sink", "sink_", is_flag=True, help="Count and discard (the default).")
@click.option("-o", "--output", "output", metavar="FILE",
              help="Store one connection's stream in FILE, then exit (implies -naccept 1). "
                   "FILE must not exist: it is never overwritten.")
@click.option("--save-dir", metavar="DIR",
              help="Store each connection in its own new file "
                   "DIR/conn-<start time>-<tag>-w<worker>-<n>.bin (named in its log line).")
@click.option("--file-mode", type=FileMode(), default="600", show_default=True,
              help="Permissions of stored files (exactly: the umask is not applied).")
@click.option("--partial", type=click.Choice(["keep", "delete"]), default="keep",
              show_default=True,
              help="A stream that does not end with the client's close_notify (truncated, "
                   "failed, cut by our stop) stays in NAME.partial (keep) or is removed.")
@click.option("--echo", "echo_", is_flag=True, help="Send everything back.")
@click.option("-WWW", "--WWW", "--www", "www", metavar="DIR",
              help="Serve the regular files in DIR over HTTP/1.x (GET, HEAD, keep-alive; "
                   "symlinks and special files are refused).")
@click.option("-naccept", "--naccept", type=click.IntRange(min=1), metavar="N",
              help="Exit after N connections have been handled.")
@click.option("-verify", "--verify", "verify_depth", type=int, default=0, metavar="DEPTH",
              help="Ask for a client certificate (verified against -CAfile).")
@click.option("-Verify", "--Verify", "require_depth", type=int, default=0, metavar="DEPTH",
              help="Require a client certificate.")
@click.option("--timeout", default=60.0, show_default=True, type=float, metavar="SECONDS",
              help="Seconds a connection may be idle after the handshake.")
@click.option("--handshake-timeout", default=HANDSHAKE_TIMEOUT, show_default=True,
              type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Seconds a client has to complete the TLS handshake.")
@click.option("--max-conns", type=click.IntRange(min=1), metavar="N",
              help="Connections handled at once per process; more wait in the listen "
                   "backlog (default: from RLIMIT_NOFILE, 2 descriptors per connection).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes accepting on the one listening socket; -naccept counts per "
                   "worker.")
@key_update_option
@tls_options
@control_socket_option
def serve(accept: str, cert: str | None, key: str | None, sink_: bool, output: str | None,
          save_dir: str | None, file_mode: int, partial: str, echo_: bool, www: str | None,
          naccept: int | None, verify_depth: int, require_depth: int, timeout: float,
          handshake_timeout: float, max_conns: int | None, workers: int,
          **kw: Any) -> None:
    """Accept TLS connections; move their data through the kTLS layer.

    \b
    Examples:
      tlsctl serve -accept 4433 --sink          # ephemeral cert, count bytes
      tlsctl serve -accept 4433 -cert c.pem -key k.pem --save-dir ./in
      tlsctl serve -accept 8443 -WWW ./public   # curl -k https://localhost:8443/f
      tlsctl serve --echo -tls1_3 &  kill -USR1 $!   # KeyUpdate on every live connection

    SIGUSR1: every live TLS 1.3 connection sends a KeyUpdate (update_not_requested)
    and switches to its next TX key before the next record it sends.
    SIGINT/SIGTERM: stop accepting, give running connections 3 s, then cut them
    (logged as interrupted by server shutdown).

    \b
    Exit status: 0 every connection handled ended with the client's close_notify
    (also after SIGINT/SIGTERM with nothing in flight); 3 at least one did not
    (failed handshake, alert, truncated, cut by our stop); 1 serve itself failed
    (cannot listen, bad certificate, a worker died); 2 bad options.
    """
    control = start_control_server(kw.pop("control_socket", None))  # for inspect-context
    try:
        status = _serve(accept, cert, key, sink_, output, save_dir, echo_, www, naccept,
                        verify_depth, require_depth, timeout, workers, control, kw,
                        _Limits(file_mode, partial == "keep", handshake_timeout, max_conns))
    except (ConfigError, HandshakeError) as exc:
        raise click.ClickException(str(exc)) from None
    if status is ExitStatus.INCOMPLETE:
        raise CommandFailed("not every connection ended cleanly (see the log)", status)
    if status is not ExitStatus.OK:
        raise CommandFailed("a worker failed (see the log)", status)


@dataclass(frozen=True)
class _Limits:
    file_mode: int
    keep_partial: bool
    handshake_timeout: float
    max_conns: int | None


def _serve(accept: str, cert: str | None, key: str | None, sink_: bool, output: str | None,
           save_dir: str | None, echo_: bool, www: str | None, naccept: int | None,
           verify_depth: int, require_depth: int, timeout: float, workers: int,
           control: ControlServer, kw: dict[str, Any], limits: _Limits) -> ExitStatus:
    quiet, as_json = bool(kw["quiet"]), bool(kw["as_json"])
    if output and (naccept or 1) > 1:
        raise click.UsageError("-o FILE stores one connection; use --save-dir DIR for more")
    if output and workers > 1:
        raise click.UsageError("-o FILE stores one connection; it takes no --workers")
    if output:
        naccept = 1
    mode, handler = _pick_handler(sink_, output, save_dir, echo_, www, limits.file_mode,
                                  limits.keep_partial)
    opts = tls_options_from(kw)
    device = device_spec_from(kw)
    fingerprint = None
    cert_src: x509.Certificate | str
    key_src: PrivateKey | str
    if cert is None and key is not None:
        raise ConfigError("-key given without -cert")
    if cert is None:
        ck = ephemeral_server_cert()
        cert_src, key_src = ck.cert, ck.key
        fingerprint = ck.fingerprint
    else:
        cert_src, key_src = cert, key or cert
    ctx = server_context(opts, cert=cert_src, key=key_src,
                         verify_client=max(verify_depth, require_depth),
                         require_client=require_depth > 0)
    keylog = KeylogFile(kw["keylogfile"]) if kw.get("keylogfile") else None
    host, port = parse_hostport(accept, default_host="::")
    listener = _listen(host, port)
    bound = listener.getsockname()
    max_conns = limits.max_conns or default_max_conns()

    def make_server(worker: int | None) -> Server:
        h = handler
        if isinstance(h, Store) and worker is not None:
            h = dataclasses.replace(h, worker=worker)
        return Server(listener, ctx, h, mode=mode, offload=kw["offload"], naccept=naccept,
                      timeout=timeout, keylog=keylog, quiet=quiet, as_json=as_json,
                      closes_first=mode == "www", verbose=int(kw["verbose"]), device=device,
                      key_update_every=kw.get("key_update_every"),
                      handshake_timeout=limits.handshake_timeout, max_conns=max_conns,
                      worker=worker, registrar=control)

    files = None
    if isinstance(handler, Store):
        files = handler.path(handler.name or f"conn-{handler.run}-w*-NNNNNN.bin")
    if as_json:
        emit_json({"event": "listening", "host": bound[0], "port": bound[1], "mode": mode,
                   "offload": kw["offload"], "fingerprint": fingerprint, "workers": workers,
                   "pid": os.getpid(), "max_conns": max_conns,
                   "handshake_timeout": limits.handshake_timeout, "files": files,
                   "run": getattr(handler, "run", None) or None})
    else:
        info(f"ACCEPT {format_addr(bound[0], bound[1])} ({mode}, offload {kw['offload']}, "
             f"{f'{workers} workers, ' if workers > 1 else ''}"
             f"up to {max_conns} connections at once{' each' if workers > 1 else ''})",
             quiet=quiet)
        if files:
            info(f"storing in {files} (NAME.partial until the client's close_notify)",
                 quiet=quiet)
        if fingerprint:
            info(f"ephemeral self-signed certificate, SHA-256 fingerprint {fingerprint}",
                 quiet=quiet)
    if workers > 1:
        def prepare(worker: int) -> Callable[[], ExitStatus]:
            server = make_server(worker)
            _install_signals(server)
            return lambda: _run_one(server, quiet or as_json)

        # A worker's first registration starts its own socket (<pid>.sock);
        # os._exit skips atexit, so the worker stops it on the way out.
        return run_workers(workers, listener, prepare, on_exit=control.stop)
    server = make_server(None)
    _install_signals(server)
    return _run_one(server, quiet or as_json)


def _run_one(server: Server, quiet: bool) -> ExitStatus:
    """Serve; then one summary line on stderr (shown even with -quiet/--json
    when a connection failed)."""
    server.serve_forever()
    cut = f" ({server.interrupted} cut by shutdown)" if server.interrupted else ""
    who = "" if server.worker is None else f"worker {server.worker} "
    line = f"{who}done: {server.accepted} connection(s), {server.failed} failed{cut}"
    if server.failed:
        warn(line)
    else:
        info(line, quiet=quiet)
    return server.status


def _install_signals(server: Server) -> None:
    """SIGINT/SIGTERM/SIGHUP: stop accepting (the loop notices within 0.25 s);
    SIGUSR1: rekey every live TLS 1.3 connection."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_sig: int, _frame: object) -> None:
        server.stop.set()

    def key_update(_sig: int, _frame: object) -> None:
        server.key_update_all()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.signal(signal.SIGUSR1, key_update)
