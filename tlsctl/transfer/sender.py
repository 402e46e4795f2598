"""Sending one file (or a stream) to a TLS server, and knowing it arrived.

What ``tlsctl send`` does, as a library that prints nothing.  The
handshake runs in pyOpenSSL (:mod:`tlsctl.handshake`), the keys go to the
record layer (:func:`tlsctl.session.channel.establish`) and the file goes
out through its ``sendfile`` (the file is never read into memory).  The end
is a close_notify and the wait for the peer's close_notify and TCP close:
only then do we know the server got every byte (:mod:`.confirm`), so the
time and throughput include it.  :func:`send_to` returns the summary only
then; a transfer that started and was not confirmed raises
:class:`TransferFailed` (status INCOMPLETE) saying what was sent and what
the peer did.

The file goes out in steps of whole records; the caller's
:class:`~tlsctl.signals.StopSignals` take effect between steps, after
which the peer gets a user_canceled alert and no close_notify, and
:class:`TransferFailed` carries the signal's status (130/143).

What the caller is told goes through :class:`SendHooks`: a status line
when connected, details (``-v``), warnings, and a progress callback for
regular files.
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
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography import x509
from OpenSSL import SSL, crypto

from tlsctl.addresses import is_ip
from tlsctl.certs import sha256_fingerprint
from tlsctl.control import Registrar
from tlsctl.exitcodes import ExitStatus
from tlsctl.handshake import HandshakeResult, KeylogFile, KeylogSink, run_handshake
from tlsctl.offloadmode import DeviceSpec, Offload, device_report, exact_reads
from tlsctl.session.channel import (
    ChannelError,
    ChannelTimeout,
    KtlsChannel,
    LocalError,
    OpenSSLChannel,
    PeerError,
    establish,
)
from tlsctl.signals import Interrupted, StopSignals
from tlsctl.tlsconf import ConfigError, TlsOptions, client_context
from tlsctl.transfer.confirm import (
    NO_CLOSE_NOTIFY,
    Drain,
    await_tcp_close,
    peer_hung_up,
    reset_by_peer,
)
from tlsctl.transfer.filehash import FileHasher

__all__ = ["NO_HOOKS", "ClientOptions", "Progress", "SendHooks", "TransferFailed", "send_to"]

_STREAM_CHUNK = 256 * 1024  # at most this much per read from a pipe (less as it arrives)
_STEP = 1 << 20  # bytes per uninterruptible send: whole records, then signals are seen
_STREAM_POLL = 0.5  # seconds between looks at the peer while stdin has nothing
_CANCEL_WAIT = 2.0  # seconds the user_canceled alert may wait for room in the socket

Chan = KtlsChannel | OpenSSLChannel

Progress = Callable[[int | None], AbstractContextManager[Callable[[int], None]]]
"""Given a regular file's size (None for a stream), a context for the
sending loop that yields the function called with the bytes sent so far
after each step (``send`` shows a progress bar on a terminal; the context
ends it)."""


Connector = Callable[[tuple[str, int], float], socket.socket]
"""``(host, port), timeout`` -> a connected TCP socket (``socket.create_connection``)."""


def _drop(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class ClientOptions:
    """How to reach the server (``send``'s options, OpenSSL's spellings in comments).

    ``insecure`` (``-k``) turns certificate verification off; ``pin_sha256``
    accepts exactly the server certificate with that SHA-256 instead of the
    CA and name checks (:mod:`tlsctl.verify`); ``trust``
    (``--loopback``) trusts exactly this certificate, held in memory.
    """

    servername: str | None = None  # -servername (default: the host, unless an IP)
    cert: str | None = None  # -cert: a client certificate
    key: str | None = None  # -key (default: the -cert file)
    insecure: bool = False  # -k
    pin_sha256: bytes | None = None  # --pin-sha256: exactly this server certificate
    timeout: float = 30.0  # connect, handshake, and each network step
    tls: TlsOptions = field(default_factory=TlsOptions)
    offload: Offload = "auto"
    device: DeviceSpec | None = None
    keylogfile: str | None = None  # -keylogfile
    key_update_every: int | None = None
    trust: x509.Certificate | None = None


@dataclass(frozen=True)
class SendHooks:
    """What the caller is told while sending, and what it lends.

    ``status``: one line once connected; ``detail``: who the peer is and
    the numbers handed to the layer (``-v``; never keys); ``warn``: shown
    whatever the verbosity; ``progress``: see :data:`Progress`;
    ``registrar``: lists the kTLS connection (the command's control server);
    ``connect``: makes the TCP connection (``socket.create_connection``;
    ``--wire netns`` lends one that connects from the host namespace);
    ``keylog``: also gets the session's key log lines (``--pcap`` embeds
    them in the capture), beside ``-keylogfile``.
    """

    status: Callable[[str], None] = _drop
    detail: Callable[[str], None] = _drop
    warn: Callable[[str], None] = _drop
    progress: Progress | None = None
    registrar: Registrar | None = None
    connect: Connector = socket.create_connection
    keylog: KeylogSink | None = None
    connected: Callable[[HandshakeResult, str], None] | None = None
    """Once the layer has the connection: the handshake and the offload in
    use (``-brief``, ``-showcerts``)."""


NO_HOOKS = SendHooks()
"""Tell nothing, lend nothing."""


class _PeerStopped(PeerError):
    """What the peer did that ends the transfer unconfirmed (already the line to show)."""


class TransferFailed(Exception):
    """The run failed: one line, the exit status, and the facts for ``--json``
    (``bytes_sent`` and what is known of the connection)."""

    def __init__(self, message: str, status: ExitStatus, facts: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.facts = facts


@dataclass
class _Sent:
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


def _context(opts: ClientOptions) -> SSL.Context:
    if opts.trust is None:
        return client_context(
            opts.tls, verify=not opts.insecure, cert=opts.cert, key=opts.key, pin=opts.pin_sha256
        )
    # --loopback: trust exactly the built-in server's certificate, held in memory.
    ctx = client_context(opts.tls, verify=False)
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always makes one for a context
        raise ConfigError("no certificate store in the TLS context")
    store.add_cert(crypto.X509.from_cryptography(opts.trust))
    ctx.set_verify(SSL.VERIFY_PEER)
    return ctx


def send_to(
    file: str | BinaryIO,
    host: str,
    port: int,
    opts: ClientOptions,
    stop: StopSignals,
    hooks: SendHooks = NO_HOOKS,
    hasher: FileHasher | None = None,
) -> dict[str, Any]:
    """Send ``file`` (a path, ``-`` for stdin, or an open file) to
    ``host:port``; the summary once the peer confirmed every byte.

    ``hasher``: a :class:`~tlsctl.transfer.filehash.FileHasher` already
    hashing the open regular file ``file`` (``send`` starts one before it
    loads the TLS stack: :func:`~tlsctl.transfer.filehash.start_early`);
    without it a regular file is hashed from the start of the transfer.
    The caller keeps it (and stops it).

    Raises :class:`TransferFailed` (the transfer started and was not
    confirmed, or was interrupted), :class:`~tlsctl.signals.Interrupted`
    (before it started), ``ConfigError``, ``HandshakeError`` or
    :class:`~tlsctl.session.channel.ChannelError` (no transfer).
    """
    if opts.insecure:
        hooks.warn(
            "warning: -k/--insecure: the server certificate is NOT verified; "
            "anyone on the path can read and change this transfer"
        )
    ctx = _context(opts)
    keylog = _keylog_sink(KeylogFile(opts.keylogfile) if opts.keylogfile else None, hooks.keylog)
    f, size = _open(file)
    try:
        try:
            sock = hooks.connect((host, port), opts.timeout)
        except OSError as exc:
            raise ChannelError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        # Records are written whole; without NODELAY a small final record
        # (close_notify) waits for a delayed ACK (~40 ms on Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sni = opts.servername or (None if is_ip(host) else host)
        try:
            checked = opts.insecure or opts.pin_sha256 is not None
            res = run_handshake(
                sock,
                ctx,
                "client",
                server_name=sni,
                verify_host=None if checked else (opts.servername or host),
                keylog=keylog,
                timeout=opts.timeout,
                exact=exact_reads(opts.offload),
            )
            sock.settimeout(opts.timeout)
            chan = establish(
                sock, res, opts.offload, hooks.warn, opts.device, registrar=hooks.registrar
            )
        except BaseException:
            sock.close()
            raise
        try:
            if opts.key_update_every:
                if not (isinstance(chan, KtlsChannel) and res.is_tls13):
                    raise LocalError(
                        f"--key-update-every needs TLS 1.3 through the kTLS "
                        f"layer (this connection: {res.version_name}, "
                        f"offload {chan.offload})"
                    )
                chan.key_update_every = opts.key_update_every
            hooks.status(
                f"connected to {host}:{port}: {res.version_name} {res.cipher_name}, "
                f"offload {chan.offload}{f', ALPN {res.alpn}' if res.alpn else ''}"
            )
            _verbose(res, opts, hooks.detail)
            if hooks.connected is not None:
                hooks.connected(res, chan.offload)
            # A second Ctrl-C while a step is being written: stop at once,
            # and make sure no byte of a half-written record follows.
            stop.abandon = lambda: _raw(chan).shutdown(socket.SHUT_RDWR)
            summary = _Transfer(
                chan, res, f, size, opts.offload, stop, hooks.progress, hasher
            ).run()
        finally:
            stop.abandon = None
            with stop.critical(check=False):
                chan.close()
        if isinstance(chan, KtlsChannel) and "device_counters" in summary:
            # Again after the close: its tls_dev_del is in the NIC's counters
            # now (tx_tls_del, rx_tls_del), as ethtool -S shows them then.
            summary.update(device_report(chan.k))
        return summary
    finally:
        if f is not sys.stdin.buffer and isinstance(file, str):
            f.close()


def _keylog_sink(*sinks: KeylogSink | None) -> KeylogSink | None:
    """One sink feeding every given one (None when there is none)."""
    given = [s for s in sinks if s is not None]
    if len(given) <= 1:
        return given[0] if given else None

    def tee(line: bytes) -> None:
        for sink in given:
            sink(line)

    return tee


def _raw(chan: Chan) -> socket.socket:
    return chan.k.sock if isinstance(chan, KtlsChannel) else chan.sock


def _verbose(res: HandshakeResult, opts: ClientOptions, detail: Callable[[str], None]) -> None:
    """-v: who we talk to (the certificate's SHA-256 as ``serve`` prints it,
    to paste into --pin-sha256) and the numbers handed to the layer (never keys)."""
    peer = res.conn.get_peer_certificate(as_cryptography=True)
    if peer is not None:
        state = (
            "NOT verified (-k)"
            if opts.insecure
            else "pinned (--pin-sha256)"
            if opts.pin_sha256 is not None
            else "verified"
        )
        detail(
            f"server certificate: {peer.subject.rfc4514_string()} "
            f"(issuer {peer.issuer.rfc4514_string()}), {state}, "
            f"SHA-256 fingerprint {sha256_fingerprint(peer)}"
        )
    detail(
        f"handshake {res.seconds * 1000:.1f} ms; record sequence numbers at handoff: "
        f"tx {res.tx_seq}, rx {res.rx_seq}; {len(res.leftover)} bytes read past the "
        "handshake handed to the layer"
    )


class _Transfer:
    """One established connection: send everything, close, judge the close."""

    def __init__(
        self,
        chan: Chan,
        res: HandshakeResult,
        f: BinaryIO,
        size: int | None,
        offload: Offload,
        stop: StopSignals,
        progress: Progress | None,
        hasher: FileHasher | None = None,
    ) -> None:
        self.chan, self.res, self.f, self.stop = chan, res, f, stop
        self.offload, self.progress = offload, progress
        self.p = _Sent(size)
        self.sock = _raw(chan)
        # The kTLS layer reads and writes from two threads (as a socket does);
        # the OpenSSL fallback's Connection is not thread-safe: it reads after.
        self.drain = Drain(chan) if isinstance(chan, KtlsChannel) else None
        self.closed = False  # our close_notify is out
        self.given_hasher = hasher  # started by the caller (before the handshake)
        self.hasher: FileHasher | None = None  # a regular file's SHA-256, beside the sending

    def facts(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.p.sent,
            "seconds": round(self.p.seconds, 6),
            "version": self.res.version_name,
            "cipher": self.res.cipher_name,
            "offload": self.chan.offload,
        }

    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            if self.hasher is not None and self.hasher is not self.given_hasher:
                self.hasher.stop()

    def _run(self) -> dict[str, Any]:
        if self.drain is not None:
            self.drain.start()
        self.p.start = time.perf_counter()
        try:
            if self.p.size is None:
                self._send_stream()
            else:
                self._send_regular()
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
                what = (
                    f"sent {self.p.amount()} and close_notify in {self.p.seconds:.2f} s; "
                    "the server had not confirmed them yet"
                )
            else:
                what = (
                    f"sent {self.p.amount()} in {self.p.seconds:.2f} s; the server was "
                    "sent user_canceled (no close_notify)"
                )
            raise TransferFailed(
                f"interrupted by {exc.name}: {what}", exc.status, self.facts()
            ) from None
        except ChannelError as exc:
            self._cancel()
            why = str(exc) if isinstance(exc, _PeerStopped) else self._why(exc)
            raise self._incomplete(why) from None
        try:
            return self._summary()
        except Interrupted as exc:
            raise TransferFailed(
                f"interrupted by {exc.name} after the server confirmed "
                f"{self.p.amount()} (no summary)",
                exc.status,
                self.facts(),
            ) from None

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
            with contextlib.suppress(OSError, ChannelError):
                self.chan.sock.settimeout(1.0)
                try:
                    while self.chan.recv(1 << 16):
                        pass
                except PeerError as stop:
                    if stop.alert is not None:  # its fatal alert says why
                        return str(stop)
        return reset_by_peer(self.sock) or str(exc)

    def _incomplete(self, why: str) -> TransferFailed:
        return TransferFailed(
            f"transfer incomplete: sent {self.p.amount()}; {why}",
            ExitStatus.INCOMPLETE,
            self.facts(),
        )

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

    def _send_regular(self) -> None:
        """sendfile in steps of whole records, progress reported after each."""
        size = self.p.size
        assert size is not None
        given = self.given_hasher
        self.hasher = (
            given
            if given is not None and given.fd == self.f.fileno()
            else FileHasher(self.f.fileno(), size)
        )
        with self.progress(size) if self.progress else contextlib.nullcontext(None) as update:
            while self.p.sent < size:
                self._peer_check()
                with self.stop.critical():
                    self.p.in_step = True
                    n = self.chan.send_file(self.f, self.p.sent, min(_STEP, size - self.p.sent))
                    self.p.sent += n
                    self.p.in_step = False
                if n == 0:
                    break  # the file shrank: what was sent is what the hash covers
                if update is not None:
                    update(self.p.sent)

    def _send_stream(self) -> None:
        """A pipe or terminal: forward what arrives, as it arrives.

        ``os.read`` returns what the pipe holds (up to ``_STREAM_CHUNK``)
        instead of waiting for a full buffer, so a burst followed by a pause
        goes out at once, in smaller records.  While stdin is quiet the
        peer is watched, and a signal interrupts the wait.
        """
        fd = self.f.fileno()
        with self.progress(None) if self.progress else contextlib.nullcontext(None) as update:
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
                if update is not None:
                    update(self.p.sent)

    # -- the end ---------------------------------------------------------------

    def _confirm(self) -> None:
        """Our close_notify is out: wait for the peer's, then for its TCP close."""
        timeout = self.sock.gettimeout()
        if self.drain is not None:
            self.drain.join(None if timeout is None else timeout + 5)
            why = (
                "the peer sent no close_notify within --timeout of ours"
                if self.drain.is_alive()
                else self.drain.verdict()
            )
        else:
            why = _await_close(self.chan)
        why = why or await_tcp_close(self.sock, timeout)
        if why:
            raise _PeerStopped(why)

    def _summary(self) -> dict[str, Any]:
        seconds = self.p.seconds
        chan = self.chan
        tx_end, rx_end = chan.live_seqs()  # after close_notify and the peer's records
        sha256 = (
            self.hasher.digest(self.p.sent) if self.hasher is not None else self.p.hash.hexdigest()
        )
        rate = self.p.sent / seconds if seconds > 0 else None
        out: dict[str, Any] = {
            "ok": True,
            "bytes": self.p.sent,
            "bytes_sent": self.p.sent,
            "seconds": round(seconds, 6),
            # Numbers with their unit in the name (iperf3's JSON names).
            "bytes_per_second": round(rate, 1) if rate is not None else None,
            "bits_per_second": round(rate * 8, 1) if rate is not None else None,
            "sha256": sha256,
            "version": self.res.version_name,
            "cipher": self.res.cipher_name,
            "offload": chan.offload,  # what ran
            "offload_requested": self.offload,  # what was asked (auto picks)
            "handshake_ms": round(self.res.seconds * 1000, 2),
            **({"alpn": self.res.alpn} if self.res.alpn else {}),
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


def _await_close(chan: Chan) -> str | None:
    """The OpenSSL fallback (one thread): read until the peer's close_notify.

    Data the server sends is discarded; TLS 1.3 tickets are handled by
    OpenSSL.  Returns what went wrong, or None.
    """
    try:
        while chan.recv(1 << 16):
            pass
    except ChannelTimeout:
        return "the peer sent no close_notify within --timeout of ours"
    except ChannelError as exc:
        return str(exc)
    return None if chan.peer_closed else NO_CLOSE_NOTIFY
