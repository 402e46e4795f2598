"""``tlsctl serve``: a TLS server whose connections run on the kTLS layer.

A thread per connection: the record layer releases the GIL in the AEAD and
socket calls, and a thread is the simplest way to keep one slow client from
holding up the others.  Every connection ends in exactly one log line (or
one JSON object with ``--json``); a failing connection is logged and never
stops the server.  SIGINT/SIGTERM stop accepting, give running connections
a moment to finish, then exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from typing import Any

import click
from cryptography import x509
from OpenSSL import SSL

from tlsctl.commands._certs import PrivateKey, ephemeral_server_cert
from tlsctl.commands._channel import (
    ChannelError,
    DeviceSpec,
    KtlsChannel,
    Offload,
    OpenSSLChannel,
    device_report,
    establish,
    exact_reads,
)
from tlsctl.commands._handlers import Handler, Store, echo, sink
from tlsctl.commands._options import (
    device_spec_from,
    key_update_option,
    parse_hostport,
    tls_options,
    tls_options_from,
)
from tlsctl.commands._output import emit_json, human_rate, info, warn
from tlsctl.commands._tlsconf import ConfigError, server_context
from tlsctl.commands._workers import run_workers
from tlsctl.commands._www import Www
from tlsctl.control import ControlServer, control_socket_option
from tlsctl.handshake import HandshakeError, KeylogFile, KeylogSink, run_handshake

_GRACE = 3.0  # seconds running connections get after SIGINT/SIGTERM


class Server:
    """Accept loop plus per-connection threads (see module docstring)."""

    def __init__(self, listener: socket.socket, ctx: SSL.Context, handler: Handler,
                 *, mode: str, offload: Offload, naccept: int | None, timeout: float,
                 keylog: KeylogSink | None, quiet: bool, as_json: bool,
                 closes_first: bool, verbose: int = 0,
                 device: DeviceSpec | None = None,
                 key_update_every: int | None = None) -> None:
        self.listener = listener
        self.ctx = ctx
        self.handler = handler
        self.mode = mode
        self.offload = offload
        self.device = device
        self.naccept = naccept
        self.timeout = timeout
        self.keylog = keylog
        self.quiet = quiet
        self.as_json = as_json
        self.closes_first = closes_first
        self.verbose = verbose
        self.key_update_every = key_update_every
        self.stop = threading.Event()
        self.accepted = 0
        self.failed = 0
        self.records: list[dict[str, Any]] = []  # one per finished connection
        self._threads: list[threading.Thread] = []
        self._socks: dict[int, socket.socket] = {}
        self._chans: dict[int, KtlsChannel] = {}  # live, for key updates on demand
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        self.listener.settimeout(0.25)
        while not self.stop.is_set():
            if self.naccept is not None and self.accepted >= self.naccept:
                break
            try:
                sock, addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stop.is_set():
                    break
                warn(f"accept failed: {exc.strerror or exc}")
                time.sleep(0.1)
                continue
            self.accepted += 1
            conn_id = self.accepted
            sock.setblocking(True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see send.py
            with self._lock:
                self._socks[conn_id] = sock
            t = threading.Thread(target=self._conn, args=(sock, addr, conn_id),
                                 name=f"conn-{conn_id}", daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        self.listener.close()
        self._finish()

    def _finish(self) -> None:
        """naccept: wait for all; a signal: wait briefly, then cut them off."""
        deadline = time.monotonic() + _GRACE if self.stop.is_set() else None
        for t in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)
        with self._lock:
            for s in self._socks.values():
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(1.0)

    def _conn(self, sock: socket.socket, addr: Any, conn_id: int) -> None:
        peer = _fmt_addr(addr[0], addr[1])
        rec: dict[str, Any] = {"event": "connection", "conn": conn_id, "peer": peer}
        start = time.perf_counter()
        chan: KtlsChannel | OpenSSLChannel | None = None
        try:
            res = run_handshake(sock, self.ctx, "server", keylog=self.keylog,
                                timeout=self.timeout, exact=exact_reads(self.offload))
            sock.settimeout(self.timeout)
            chan = establish(sock, res, self.offload,
                             lambda m: warn(f"[{conn_id}] {peer}: {m}"), self.device)
            rec.update(version=res.version_name, cipher=res.cipher_name, offload=chan.mode,
                       tx_seq_at_handoff=res.tx_seq, rx_seq_at_handoff=res.rx_seq)
            if isinstance(chan, KtlsChannel) and res.is_tls13:
                chan.key_update_every = self.key_update_every
                with self._lock:
                    self._chans[conn_id] = chan
            start = time.perf_counter()
            rec.update(self.handler(chan, conn_id))
            self._close(chan, rec)
            if isinstance(chan, KtlsChannel):
                tx_end, rx_end = chan.live_seqs()
                rec.update(key_updates=chan.key_updates,
                           key_updates_sent=chan.key_updates_sent,
                           tx_seq_at_end=tx_end, rx_seq_at_end=rx_end)
                rec.update(device_report(chan))
            rec["ok"] = True
        except (HandshakeError, ChannelError, OSError) as exc:
            text = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
            rec.update(ok=False, error=text)
            with self._lock:
                self.failed += 1
        except Exception as exc:  # a bug must cost one connection, never the server
            rec.update(ok=False, error=f"internal error: {type(exc).__name__}: {exc}")
            with self._lock:
                self.failed += 1
        finally:
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
                self._socks.pop(conn_id, None)
                self._chans.pop(conn_id, None)
                self.records.append(rec)
            self._log(rec)

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

    def _log(self, rec: dict[str, Any]) -> None:
        if self.as_json:
            emit_json(rec)
            return
        head = f"[{rec['conn']}] {rec['peer']}"
        if not rec.get("ok"):
            warn(f"{head}: error: {rec.get('error')}")
            return
        nbytes = int(rec.get("bytes_in", 0)) + int(rec.get("bytes_out", 0))
        parts = [f"{head} {rec.get('version')} {rec.get('cipher')} offload {rec.get('offload')}:",
                 f"{nbytes} bytes in {rec['seconds']:.3f} s ({human_rate(nbytes, rec['seconds'])})"]
        if "sha256" in rec:
            parts.append(f"sha256 {rec['sha256']}")
        if "http" in rec:
            parts.append(rec["http"])
        if rec.get("clean_close") is False:
            parts.append("(peer sent no close_notify: the stream may be truncated)")
        if self.verbose and "tx_seq_at_handoff" in rec:
            parts.append(f"seq at handoff tx={rec['tx_seq_at_handoff']} "
                         f"rx={rec['rx_seq_at_handoff']}, at end tx={rec.get('tx_seq_at_end')} "
                         f"rx={rec.get('rx_seq_at_end')}, key updates received "
                         f"{rec.get('key_updates', 0)} sent {rec.get('key_updates_sent', 0)}")
        info(" ".join(parts), quiet=self.quiet)


def _fmt_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int, reuseport: bool) -> socket.socket:
    """Listen on ``host``; ``"::"`` (the default, like s_server) is dual-stack,
    so clients resolving ``localhost`` to ::1 or 127.0.0.1 both get in."""
    if host == "::" and not socket.has_ipv6:
        host = "0.0.0.0"
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if host == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((host, port))
        s.listen(256)
    except OSError as exc:
        s.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return s


def _pick_handler(sink_: bool, output: str | None, save_dir: str | None, echo_: bool,
                  www: str | None) -> tuple[str, Handler]:
    chosen = [n for n, on in (("--sink", sink_), ("-o", output), ("--save-dir", save_dir),
                              ("--echo", echo_), ("-WWW", www)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of {', '.join(chosen)}")
    if output:
        parent = os.path.dirname(os.path.abspath(output))
        if not os.access(parent, os.W_OK):
            raise ConfigError(f"-o {output}: cannot write in {parent}")
        return "output", Store(output=output)
    if save_dir:
        if not os.path.isdir(save_dir):
            raise ConfigError(f"--save-dir {save_dir}: not a directory")
        return "save-dir", Store(save_dir=save_dir)
    if echo_:
        return "echo", echo
    if www:
        if not os.path.isdir(www):
            raise ConfigError(f"-WWW {www}: not a directory")
        return "www", Www(www)
    return "sink", sink


@click.command()
@click.option("-accept", "--accept", "accept", default="4433", show_default=True,
              metavar="[HOST:]PORT", help="Address to listen on (port 0: any free port).")
@click.option("-cert", "--cert", "cert", metavar="PEM", type=click.Path(dir_okay=False),
              help="Certificate chain (default: an ephemeral self-signed one).")
@click.option("-key", "--key", "key", metavar="PEM", type=click.Path(dir_okay=False),
              help="Private key (default: the -cert file).")
@click.option("--sink", "sink_", is_flag=True, help="Count and discard (the default).")
@click.option("-o", "--output", "output", metavar="FILE",
              help="Store the stream in FILE (each connection overwrites it).")
@click.option("--save-dir", metavar="DIR", help="Store each connection in DIR/conn-N.bin.")
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
@click.option("--timeout", default=60.0, show_default=True, type=float,
              help="Seconds a connection may be idle (handshake included).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes sharing the port (SO_REUSEPORT); -naccept counts per worker.")
@key_update_option
@tls_options
@control_socket_option
def serve(accept: str, cert: str | None, key: str | None, sink_: bool, output: str | None,
          save_dir: str | None, echo_: bool, www: str | None, naccept: int | None,
          verify_depth: int, require_depth: int, timeout: float, workers: int,
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
    """
    ControlServer.start(kw.pop("control_socket", None))  # for inspect-context
    try:
        _serve(accept, cert, key, sink_, output, save_dir, echo_, www, naccept,
               verify_depth, require_depth, timeout, workers, kw)
    except (ConfigError, HandshakeError) as exc:
        raise click.ClickException(str(exc)) from None


def _serve(accept: str, cert: str | None, key: str | None, sink_: bool, output: str | None,
           save_dir: str | None, echo_: bool, www: str | None, naccept: int | None,
           verify_depth: int, require_depth: int, timeout: float, workers: int,
           kw: dict[str, Any]) -> None:
    quiet, as_json = bool(kw["quiet"]), bool(kw["as_json"])
    mode, handler = _pick_handler(sink_, output, save_dir, echo_, www)
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
    listener = _listen(host, port, reuseport=workers > 1)
    bound = listener.getsockname()

    def make_server(lst: socket.socket) -> Server:
        return Server(lst, ctx, handler, mode=mode, offload=kw["offload"], naccept=naccept,
                      timeout=timeout, keylog=keylog, quiet=quiet, as_json=as_json,
                      closes_first=mode == "www", verbose=int(kw["verbose"]), device=device,
                      key_update_every=kw.get("key_update_every"))

    if as_json:
        emit_json({"event": "listening", "host": bound[0], "port": bound[1], "mode": mode,
                   "offload": kw["offload"], "fingerprint": fingerprint, "workers": workers})
    else:
        info(f"ACCEPT {_fmt_addr(bound[0], bound[1])} ({mode}, offload {kw['offload']}"
             f"{f', {workers} workers' if workers > 1 else ''})", quiet=quiet)
        if fingerprint:
            info(f"ephemeral self-signed certificate, SHA-256 fingerprint {fingerprint}",
                 quiet=quiet)
    if workers > 1:
        run_workers(workers, listener, lambda: _listen(host, bound[1], reuseport=True),
                    lambda lst: _run_one(make_server(lst), quiet or as_json))
    else:
        _run_one(make_server(listener), quiet or as_json)


def _run_one(server: Server, quiet: bool) -> None:
    _install_signals(server)
    server.serve_forever()
    info(f"done: {server.accepted} connection(s), {server.failed} failed", quiet=quiet)


def _install_signals(server: Server) -> None:
    """Ctrl-C / SIGTERM: stop accepting; the loop notices within 0.25 s."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_sig: int, _frame: object) -> None:
        server.stop.set()

    def key_update(_sig: int, _frame: object) -> None:
        server.key_update_all()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGUSR1, key_update)
