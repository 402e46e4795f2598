"""``tlsctl send FILE``: one file to a TLS server through the kTLS layer.

The handshake runs in pyOpenSSL (:mod:`tlsctl.handshake`), the keys go to
``offload.KTLSSocket`` and the file goes out through its ``sendfile`` (the
file is never read into memory).  The end is a close_notify and the wait for
the peer's close_notify and TCP close: only then do we know the server got
every byte (:mod:`tlsctl.transfer.confirm`), so the time and throughput
include it.  Exit 0 means exactly that; a transfer that started and was not
confirmed exits 3 with one line saying what was sent and what the peer did.

The file goes out in steps of whole records; SIGINT/SIGTERM take effect
between steps (:mod:`tlsctl.signals`), after which the peer gets
a user_canceled alert and no close_notify, and the command exits 130/143
saying what it had sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import click
from cryptography import x509
from OpenSSL import SSL, crypto

from tlsctl.addresses import is_ip
from tlsctl.commands._options import (
    ByteSize,
    control_socket_option,
    device_spec_from,
    key_update_option,
    parse_hostport,
    start_control_server,
    tls_options,
    tls_options_from,
)
from tlsctl.commands._output import emit_json, emit_summary, human_rate, info, warn
from tlsctl.exitcodes import CommandFailed, ExitStatus
from tlsctl.handshake import HandshakeError, HandshakeResult, KeylogFile, run_handshake
from tlsctl.offloadmode import device_report, exact_reads
from tlsctl.session.channel import (
    ChannelError,
    ChannelTimeout,
    KtlsChannel,
    OpenSSLChannel,
    establish,
)
from tlsctl.signals import Interrupted, StopSignals
from tlsctl.tlsconf import ConfigError, client_context
from tlsctl.transfer.confirm import (
    NO_CLOSE_NOTIFY,
    Drain,
    await_tcp_close,
    peer_hung_up,
    reset_by_peer,
)

_STREAM_CHUNK = 256 * 1024  # at most this much per read from a pipe (less as it arrives)
_STEP = 1 << 20  # bytes per uninterruptible send: whole records, then signals are seen
_STREAM_POLL = 0.5  # seconds between looks at the peer while stdin has nothing
_BAR_MIN = 8 << 20  # files this big get a progress bar on a terminal
_CANCEL_WAIT = 2.0  # seconds the user_canceled alert may wait for room in the socket

Chan = KtlsChannel | OpenSSLChannel


class _PeerStopped(ChannelError):
    """What the peer did that ends the transfer unconfirmed (already the line to show)."""


class TransferFailed(Exception):
    """The run failed: one line, the exit status, and the facts for ``--json``."""

    def __init__(self, message: str, status: ExitStatus, facts: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.facts = facts


@dataclass
class _Progress:
    """What has gone out so far (counted inside each uninterruptible step)."""

    size: int | None
    sent: int = 0
    in_step: bool = False  # a step failed half-way: more than ``sent`` may be out
    start: float = field(default_factory=time.perf_counter)
    hash: Any = field(default_factory=hashlib.sha256)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def amount(self) -> str:
        if self.size is not None and self.sent == self.size:
            return f"all {self.size} bytes"
        total = f" of {self.size}" if self.size is not None else ""
        if self.in_step and not self.sent:
            return f"part of the first step{total} bytes"
        return f"{'at least ' if self.in_step else ''}{self.sent}{total} bytes"


@click.command()
@click.argument("file", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("-connect", "--connect", "connect", metavar="HOST:PORT",
              help="Server to send to.")
@click.option("--loopback", is_flag=True,
              help="Start a server in this process (127.0.0.1, ephemeral certificate, "
                   "verified) and send to it; it checks the SHA-256 of what arrived.")
@click.option("--size", default="64M", show_default=True, type=ByteSize(minimum=0),
              help="With --loopback and no FILE: bytes of random data to send (K/M/G suffixes).")
@click.option("-servername", "--servername", "servername", metavar="NAME",
              help="SNI name and the name checked in the certificate (default: HOST).")
@click.option("-cert", "--cert", "cert", metavar="PEM", type=click.Path(dir_okay=False),
              help="Client certificate, for servers that ask for one.")
@click.option("-key", "--key", "key", metavar="PEM", type=click.Path(dir_okay=False),
              help="Private key of -cert (default: the -cert file).")
@click.option("-k", "--insecure", is_flag=True,
              help="Do NOT verify the server certificate (anyone can intercept).")
@click.option("--timeout", default=30.0, show_default=True, type=float,
              help="Seconds to wait for connect, handshake, and each network step.")
@key_update_option
@tls_options
@control_socket_option
def send(file: str | None, connect: str | None, loopback: bool, size: int,
         servername: str | None, insecure: bool, timeout: float, **kw: Any) -> None:
    """Send FILE (- for stdin) to a TLS server through the kTLS layer.

    Verifies the server certificate against the system trust store (or
    -CAfile); prints bytes, time, throughput, SHA-256, TLS version, cipher,
    offload mode and the record sequence numbers handed to the layer.

    Exit status 0 only when the server confirmed every byte: its
    close_notify came after ours and it closed the connection cleanly.  3:
    the transfer started and was not confirmed (the server closed early,
    reset, sent an alert, or never answered our close_notify).  1: no
    transfer (connection, certificate, handshake, file).  130/143: SIGINT/
    SIGTERM; the server was sent user_canceled and no close_notify.  With
    --json the verdict is a JSON object either way ("ok", "error",
    "bytes_sent").

    \b
    Examples:
      openssl s_server -quiet -accept 4433 -cert c.pem -key k.pem > got.bin
      tlsctl send big.iso -connect localhost:4433 -CAfile ca.pem
      tlsctl send --loopback              # no set-up: 64 MiB to a built-in server
      tlsctl send --loopback --offload sim-nic --faults reorder=0.05,drop=0.05,seed=7
      tlsctl send big.iso -connect localhost:4433 -tls1_3 --key-update-every 1M
      producer | tlsctl send - -connect localhost:4433   # sent as it arrives
    """
    if loopback == bool(connect):
        raise click.UsageError("give exactly one of -connect HOST:PORT and --loopback")
    if file is None and not loopback:
        raise click.UsageError("missing FILE (use - for stdin)")
    kw["device"] = device_spec_from(kw)
    with StopSignals() as stop:
        # For inspect-context: every kTLS connection of this process registers with it.
        control = kw["control"] = start_control_server(kw.pop("control_socket", None))
        try:
            if loopback:
                _run_loopback(file, size, servername, timeout, kw, stop)
            else:
                assert connect is not None
                host, port = parse_hostport(connect)
                result = _run(file or "-", host, port, servername, insecure, timeout, kw, stop)
                _report(result, f"{host}:{port}", kw)
        except TransferFailed as exc:
            _fail(str(exc), exc.status, exc.facts, kw)
        except Interrupted as exc:  # before the transfer started (or a second signal)
            _fail(f"interrupted by {exc.name}", exc.status, {}, kw)
        except (ConfigError, HandshakeError, ChannelError) as exc:
            _fail(str(exc), ExitStatus.FAILED, {}, kw)
        finally:
            with stop.critical(check=False):
                control.stop()


def _fail(message: str, status: ExitStatus, facts: dict[str, Any], kw: dict[str, Any]) -> None:
    """The verdict of a failed run: a JSON object with --json, one line on stderr."""
    if kw["as_json"]:
        emit_json({"ok": False, "error": message, "bytes_sent": facts.pop("bytes_sent", 0),
                   **facts})
    raise CommandFailed(message, status)


def _report(result: dict[str, Any], target: str, kw: dict[str, Any]) -> None:
    if kw["as_json"]:
        emit_json(result)
    elif not kw["quiet"]:
        emit_summary(f"tlsctl send → {target}", result)


def _run_loopback(file: str | None, size: int, servername: str | None, timeout: float,
                  kw: dict[str, Any], stop: StopSignals) -> None:
    """--loopback: serve in a thread, send to it, compare the hashes."""
    from tlsctl.transfer.loopback import loopback_server, random_file

    opts = tls_options_from(kw)
    with contextlib.ExitStack() as stack:
        src: str | BinaryIO = file if file is not None else stack.enter_context(random_file(size))
        port, cert, server = stack.enter_context(
            loopback_server(opts, kw["offload"], kw["device"], registrar=kw["control"])
        )
        result = _run(src, "localhost", port, servername, False, timeout, kw, stop, trust=cert)
    rec = server.records[0] if server.records else {}
    result["server_sha256"] = rec.get("sha256")
    result["server_offload"] = rec.get("offload")
    result["match"] = rec.get("sha256") == result["sha256"]
    if not result["match"]:
        why = rec.get("error") or "the server received different bytes"
        result.update(ok=False, error=why)
        _report(result, f"built-in server on 127.0.0.1:{port}", kw)
        raise CommandFailed(why, ExitStatus.INCOMPLETE)
    _report(result, f"built-in server on 127.0.0.1:{port}", kw)


def _open(file: str | BinaryIO) -> tuple[BinaryIO, int | None]:
    """The input and its size (None: a stream, e.g. stdin or a pipe)."""
    if not isinstance(file, str):
        f = file
    elif file == "-":
        f = sys.stdin.buffer
    else:
        try:
            f = open(file, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            raise ConfigError(f"cannot open {file}: {exc.strerror}") from None
    st = os.fstat(f.fileno())
    return f, (st.st_size if stat.S_ISREG(st.st_mode) else None)


def _context(kw: dict[str, Any], insecure: bool, trust: x509.Certificate | None) -> SSL.Context:
    opts = tls_options_from(kw)
    if trust is None:
        return client_context(opts, verify=not insecure, cert=kw.get("cert"), key=kw.get("key"))
    # --loopback: trust exactly the built-in server's certificate, held in memory.
    ctx = client_context(opts, verify=False)
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always makes one for a context
        raise ConfigError("no certificate store in the TLS context")
    store.add_cert(crypto.X509.from_cryptography(trust))
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


def _run(file: str | BinaryIO, host: str, port: int, servername: str | None, insecure: bool,
         timeout: float, kw: dict[str, Any], stop: StopSignals,
         trust: x509.Certificate | None = None) -> dict[str, Any]:
    quiet: bool = kw["quiet"]
    if insecure:
        warn("WARNING: -k/--insecure: the server certificate is NOT verified; "
             "anyone on the path can read and change this transfer")
    ctx = _context(kw, insecure, trust)
    keylog = KeylogFile(kw["keylogfile"]) if kw.get("keylogfile") else None
    f, size = _open(file)
    try:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ChannelError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        # Records are written whole; without NODELAY a small final record
        # (close_notify) waits for a delayed ACK (~40 ms on Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sni = servername or (None if is_ip(host) else host)
        try:
            res = run_handshake(sock, ctx, "client", server_name=sni,
                                verify_host=None if insecure else (servername or host),
                                keylog=keylog, timeout=timeout,
                                exact=exact_reads(kw["offload"]))
            sock.settimeout(timeout)
            chan = establish(sock, res, kw["offload"], warn, kw["device"],
                             registrar=kw["control"])
        except BaseException:
            sock.close()
            raise
        try:
            if kw.get("key_update_every"):
                if not (isinstance(chan, KtlsChannel) and res.is_tls13):
                    raise ChannelError(f"--key-update-every needs TLS 1.3 through the kTLS "
                                       f"layer (this connection: {res.version_name}, "
                                       f"offload {chan.mode})")
                chan.key_update_every = kw["key_update_every"]
            info(f"connected to {host}:{port}: {res.version_name} {res.cipher_name}, "
                 f"offload {chan.mode}", quiet=quiet or kw["as_json"])
            if kw["verbose"]:
                _verbose(res, insecure)
            # A second Ctrl-C while a step is being written: stop at once,
            # and make sure no byte of a half-written record follows.
            stop.abandon = lambda: _raw(chan).shutdown(socket.SHUT_RDWR)
            return _Transfer(chan, res, f, size, kw, stop).run()
        finally:
            stop.abandon = None
            with stop.critical(check=False):
                chan.close()
    finally:
        if f is not sys.stdin.buffer and isinstance(file, str):
            f.close()


def _raw(chan: Chan) -> socket.socket:
    return chan.k.sock if isinstance(chan, KtlsChannel) else chan.sock


def _verbose(res: HandshakeResult, insecure: bool) -> None:
    """-v: who we talk to and the numbers handed to the layer (never keys)."""
    peer = res.conn.get_peer_certificate(as_cryptography=True)
    if peer is not None:
        state = "NOT verified (-k)" if insecure else "verified"
        info(f"server certificate: {peer.subject.rfc4514_string()} "
             f"(issuer {peer.issuer.rfc4514_string()}), {state}")
    info(f"handshake {res.seconds * 1000:.1f} ms; record sequence numbers at handoff: "
         f"tx {res.tx_seq}, rx {res.rx_seq}; {len(res.leftover)} bytes read past the "
         "handshake handed to the layer")


class _Transfer:
    """One established connection: send everything, close, judge the close."""

    def __init__(self, chan: Chan, res: HandshakeResult, f: BinaryIO, size: int | None,
                 kw: dict[str, Any], stop: StopSignals) -> None:
        self.chan, self.res, self.f, self.kw, self.stop = chan, res, f, kw, stop
        self.p = _Progress(size)
        self.sock = _raw(chan)
        # The kTLS layer reads and writes from two threads (as a socket does);
        # the OpenSSL fallback's Connection is not thread-safe: it reads after.
        self.drain = Drain(chan) if isinstance(chan, KtlsChannel) else None
        self.closed = False  # our close_notify is out

    def facts(self) -> dict[str, Any]:
        return {"bytes_sent": self.p.sent, "seconds": round(self.p.seconds, 6),
                "version": self.res.version_name, "cipher": self.res.cipher_name,
                "offload": self.chan.mode}

    def run(self) -> dict[str, Any]:
        if self.drain is not None:
            self.drain.start()
        self.p.start = time.perf_counter()
        try:
            if self.p.size is None:
                self._send_stream()
            else:
                self._send_regular(show=not (self.kw["quiet"] or self.kw["as_json"]))
            self._peer_check()
            if self.drain is not None:
                self.drain.closing = True
            with self.stop.critical():
                self.chan.close_notify()
                self.closed = True
            self._confirm()
        except Interrupted as exc:
            self._cancel()
            if self.closed:
                what = (f"sent {self.p.amount()} and close_notify in {self.p.seconds:.2f} s; "
                        "the server had not confirmed them yet")
            else:
                what = (f"sent {self.p.amount()} in {self.p.seconds:.2f} s; the server was "
                        "sent user_canceled (no close_notify)")
            raise TransferFailed(f"interrupted by {exc.name}: {what}", exc.status,
                                 self.facts()) from None
        except ChannelError as exc:
            self._cancel()
            why = str(exc) if isinstance(exc, _PeerStopped) else self._why(exc)
            raise self._incomplete(why) from None
        try:
            return self._summary()
        except Interrupted as exc:
            raise TransferFailed(f"interrupted by {exc.name} after the server confirmed "
                                 f"{self.p.amount()} (no summary)", exc.status,
                                 self.facts()) from None

    def _why(self, exc: ChannelError) -> str:
        """What the peer did, when a send failed: the reading thread may know
        better than the writer (the fatal alert the peer sent before it hung
        up), else the socket (a reset)."""
        drain = self.drain
        if drain is not None and drain is not threading.current_thread():
            drain.join(2)
            if drain.error is not None and not isinstance(drain.error, ChannelTimeout):
                return str(drain.error)
        if isinstance(self.chan, OpenSSLChannel):
            # No reading thread here: look at what the peer sent before it hung up.
            with contextlib.suppress(OSError, TimeoutError):
                self.chan.sock.settimeout(1.0)
                try:
                    while self.chan.recv(1 << 16):
                        pass
                except ChannelError as alert:
                    if "alert" in str(alert):
                        return str(alert)
        return reset_by_peer(self.sock) or str(exc)

    def _incomplete(self, why: str) -> TransferFailed:
        return TransferFailed(f"transfer incomplete: sent {self.p.amount()}; {why}",
                              ExitStatus.INCOMPLETE, self.facts())

    def _cancel(self) -> None:
        """Tell the peer we stopped (user_canceled; never a close_notify), unless
        the connection already died of a fatal alert."""
        if isinstance(self.chan, KtlsChannel) and not self.closed and self.chan.failed is None:
            with self.stop.critical(check=False):
                # A server that stopped reading must not hold the exit up long.
                self.chan.k.settimeout(_CANCEL_WAIT)
                self.chan.cancel()

    # -- sending -------------------------------------------------------------

    def _peer_check(self) -> None:
        """Between steps: stop when the peer has already ended the connection."""
        self.stop.check()
        why = self.drain.stopped_early() if self.drain is not None else None
        why = why or peer_hung_up(self.sock)
        if why:
            raise _PeerStopped(why)

    def _send_regular(self, show: bool) -> None:
        """sendfile in steps of whole records; a progress bar on a terminal."""
        size = self.p.size
        assert size is not None
        bar = None
        with contextlib.ExitStack() as stack:
            if show and sys.stderr.isatty() and size >= _BAR_MIN:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TransferSpeedColumn,
                )

                bar = stack.enter_context(Progress(BarColumn(), DownloadColumn(),
                                                   TransferSpeedColumn(), transient=True))
                task = bar.add_task("send", total=size)
            while self.p.sent < size:
                self._peer_check()
                with self.stop.critical():
                    self.p.in_step = True
                    n = self.chan.send_file(self.f, self.p.sent, min(_STEP, size - self.p.sent))
                    self.p.sent += n
                    self.p.in_step = False
                if n == 0:
                    break  # the file shrank: what was sent is what the hash covers
                if bar is not None:
                    bar.update(task, completed=self.p.sent)

    def _send_stream(self) -> None:
        """A pipe or terminal: forward what arrives, as it arrives.

        ``os.read`` returns what the pipe holds (up to ``_STREAM_CHUNK``)
        instead of waiting for a full buffer, so a burst followed by a pause
        goes out at once, in smaller records.  While stdin is quiet the
        peer is watched, and a signal interrupts the wait.
        """
        fd = self.f.fileno()
        while True:
            self._peer_check()
            if not select.select([fd], [], [], _STREAM_POLL)[0]:
                continue
            chunk = os.read(fd, _STREAM_CHUNK)
            if not chunk:
                return
            with self.stop.critical():
                self.p.in_step = True
                self.chan.send_all(chunk)
                self.p.hash.update(chunk)
                self.p.sent += len(chunk)
                self.p.in_step = False

    # -- the end ---------------------------------------------------------------

    def _confirm(self) -> None:
        """Our close_notify is out: wait for the peer's, then for its TCP close."""
        timeout = self.sock.gettimeout()
        if self.drain is not None:
            self.drain.join(None if timeout is None else timeout + 5)
            why = ("the peer sent no close_notify within --timeout of ours"
                   if self.drain.is_alive() else self.drain.verdict())
        else:
            why = _await_close(self.chan)
        why = why or await_tcp_close(self.sock, timeout)
        if why:
            raise _PeerStopped(why)

    def _summary(self) -> dict[str, Any]:
        seconds = self.p.seconds
        chan = self.chan
        tx_end, rx_end = chan.live_seqs()  # after close_notify and the peer's records
        if self.p.size is not None:
            _hash_file(self.p.hash, self.f, self.p.sent)
        offload = chan.mode if self.kw["offload"] != "auto" else f"auto ({chan.mode})"
        out: dict[str, Any] = {
            "ok": True,
            "bytes": self.p.sent,
            "bytes_sent": self.p.sent,
            "seconds": round(seconds, 6),
            "throughput": human_rate(self.p.sent, seconds),
            "sha256": self.p.hash.hexdigest(),
            "version": self.res.version_name,
            "cipher": self.res.cipher_name,
            "offload": offload,
            "handshake_ms": round(self.res.seconds * 1000, 2),
            "tx_seq_at_handoff": self.res.tx_seq,
            "rx_seq_at_handoff": self.res.rx_seq,
            "tx_seq_at_end": tx_end,
            "rx_seq_at_end": rx_end,
        }
        if isinstance(chan, KtlsChannel):
            out["session_tickets_ignored"] = chan.tickets
            out["key_updates_sent"] = chan.key_updates_sent
            out["key_updates_received"] = chan.key_updates
            if self.drain is not None:
                out["bytes_received"] = self.drain.received  # what the server sent (discarded)
            out.update(device_report(chan.k))
        return out


def _hash_file(h: Any, f: BinaryIO, count: int) -> None:
    """SHA-256 of what was sent; regular files are hashed after the transfer
    (from the page cache) so hashing does not slow the measured part."""
    f.seek(0)
    left = count
    while left > 0:
        chunk = f.read(min(1 << 20, left))
        if not chunk:
            break
        h.update(chunk)
        left -= len(chunk)


def _await_close(chan: Chan) -> str | None:
    """The OpenSSL fallback (one thread): read until the peer's close_notify.

    Data the server sends is discarded; TLS 1.3 tickets are handled by
    OpenSSL.  Returns what went wrong, or None.
    """
    try:
        while chan.recv(1 << 16):
            pass
    except TimeoutError:
        return "the peer sent no close_notify within --timeout of ours"
    except ChannelError as exc:
        if "timed out" in str(exc):
            return "the peer sent no close_notify within --timeout of ours"
        return str(exc)
    return None if chan.peer_closed else NO_CLOSE_NOTIFY
