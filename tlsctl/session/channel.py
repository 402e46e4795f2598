"""A TLS connection after the handshake: offloaded to the kTLS layer, or not.

``send`` and ``serve`` move bytes through a :class:`Channel` and do not care
whether the record layer is ``offload.KTLSSocket`` (``--offload sw|kernel``)
or pyOpenSSL itself (``--offload none``, or a suite the layer cannot take).

On the kTLS side the protocol after the handshake is the sans-I/O
:class:`tlsctl.session.Session`; :class:`KtlsChannel` is its I/O shell: it
reads records through the layer's ``recvmsg`` and the
``TLS_GET_RECORD_TYPE`` cmsg, feeds them to the session and performs what
the session asks (alerts, KeyUpdate records, ``setsockopt`` of keys).
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

from OpenSSL import SSL

from offload.ktls_socket import KTLSSocket
from offload.record import Buffer
from offload.uapi import (
    SOL_TLS,
    TLS_GET_RECORD_TYPE,
    TLS_MAX_PAYLOAD_SIZE,
    TLS_RX,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    ContentType,
    CryptoInfo,
)
from tlsctl.control import Registrar, Registration
from tlsctl.handshake import HandshakeError, HandshakeResult, install_offload
from tlsctl.offloadmode import DeviceSpec, Offload, is_nic, layer_offload, open_layer
from tlsctl.session import (
    AlertDescription,
    AlertLevel,
    Event,
    InstallRxKey,
    InstallTxKey,
    LocalProtocolError,
    PeerAlert,
    RemoteProtocolError,
    ResumeRx,
    SendAlert,
    SendKeyUpdate,
    SendRecord,
    Session,
    alert_name,
)
from tlsctl.tlsconf import max_send_frag_of
from tlsctl.tracing import TapSocket, tracer_of

__all__ = [
    "Channel",
    "ChannelError",
    "ChannelTimeout",
    "KtlsChannel",
    "LocalError",
    "OpenSSLChannel",
    "PeerError",
    "establish",
]

_DATA = int(ContentType.APPLICATION_DATA)
_ALERT = int(ContentType.ALERT)
_ALERT_LEN = 2  # an alert record's plaintext: level and description
_CMSG = socket.CMSG_SPACE(1)
# How much the sending thread pushes per hold of the TX lock (4 layer batches).
_TX_STEP = 4 << 20
# A reader's buffer of at least one record's plaintext gets every control
# record whole in one recvmsg (kTLS returns control records alone): the
# session needs record boundaries (a KeyUpdate must end one).
_WHOLE_RECORD = TLS_MAX_PAYLOAD_SIZE
# After our fatal alert: how long we read (and drop) what the peer still
# sends, so it reads the alert instead of a reset (see KtlsChannel._linger).
_LINGER = 1.0
_CHUNK = 256 * 1024


class ChannelError(Exception):
    """The connection failed after the handshake; one line for the user.

    The channels raise one of its kinds, so a caller can tell whose doing it
    was (the session's :class:`~tlsctl.session.RemoteProtocolError` and
    :class:`~tlsctl.session.LocalProtocolError`, carried to the I/O):
    :class:`PeerError`, :class:`LocalError` or :class:`ChannelTimeout`.
    """


class PeerError(ChannelError):
    """The peer's doing: it broke the protocol (we answered with a fatal
    alert), sent its own fatal alert (``alert``: its name, e.g.
    ``handshake_failure``), or closed or reset the connection under a send."""

    def __init__(self, message: str, alert: str | None = None) -> None:
        super().__init__(message)
        self.alert = alert


class LocalError(ChannelError):
    """Our side: the socket or the record layer failed under us (a key that
    will not install, a send the kernel refused), or the connection cannot
    do what was asked (a KeyUpdate in TLS 1.2, an offload the suite rules out)."""


class ChannelTimeout(ChannelError):
    """A read or send waited longer than the socket timeout (nothing is lost:
    a read may be retried)."""


def _os_error(exc: OSError, what: str) -> ChannelError:
    """A socket error as the channel's kind of error, with one line."""
    text = f"{what}: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return ChannelTimeout(text)
    if isinstance(exc, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
        return PeerError(text)
    return LocalError(text)


class Channel(Protocol):
    """What the commands need from an established TLS connection."""

    offload: Offload
    """What carries the records: ``sw``, ``kernel``, a NIC driver's name, or
    ``none`` (pyOpenSSL) -- the ``--offload`` vocabulary, as chosen."""

    def send_all(self, data: Buffer, more: bool = False) -> None: ...
    def send_file(self, f: BinaryIO, offset: int, count: int) -> int: ...
    def recv(self, n: int) -> bytes: ...
    def recv_into(self, buf: memoryview) -> int: ...
    def close_notify(self) -> None: ...
    def close(self) -> None: ...
    def live_seqs(self) -> tuple[int | None, int | None]: ...


class KtlsChannel:
    """The connection with its record layer in ``offload.KTLSSocket``.

    The protocol (alerts, tickets, KeyUpdate, renegotiation refusals, which
    alert answers which bad record) is :class:`tlsctl.session.Session`'s;
    this class does the I/O around it and keeps the policy that is ours:

    * reads: every record goes through the session; data is decrypted
      straight into the caller's buffer.  A layer error becomes the alert
      the session names.  ``EKEYEXPIRED`` after a KeyUpdate *fragment* (the
      layer, like Linux, pauses at any handshake record that starts with
      KeyUpdate) is answered by installing the live RX key again.
    * KeyUpdate on our side: every ``key_update_every`` bytes sent, or at
      the next send after :meth:`request_key_update` (thread-safe; serve's
      SIGUSR1).  We send update_not_requested: the peer need not answer, so
      a one-way sender never has to read while it sends.
    * closing: a peer's close_notify is answered with ours before the socket
      closes; after our fatal alert the socket lingers (bounded) so the
      peer reads the alert rather than a reset.

    One thread may read while another sends (``tlsctl send`` does; the
    session allows one of each), and a fatal alert from the reader stops the
    sender at its next step (``_TX_STEP``), so nothing follows it.
    """

    def __init__(
        self,
        k: KTLSSocket,
        res: HandshakeResult,
        key_update_every: int | None = None,
        registrar: Registrar | None = None,
    ) -> None:
        self.k = k
        self.res = res
        # Visible to `tlsctl inspect-context` (the command's control server)
        # while the connection lives.
        self._control: Registration | None = None
        if registrar is not None:
            self._control = registrar.register(
                k, label=res.side, extra={"cipher_suite": res.cipher_name}
            )
        # What the layer actually uses: "sw", "kernel", or the NIC driver's name.
        self.offload: Offload = layer_offload(k)
        self.session = Session(
            res.side,
            tls13=res.is_tls13,
            suite=res.suite,
            tx_secret=res.tx_secret,
            rx_secret=res.rx_secret,
        )
        self.alert_sent: int | None = None  # the fatal alert we sent, if any
        self.alert_received: int | None = None  # the peer's fatal alert, if any
        self.key_update_every = key_update_every
        self._since_update = 0
        self._update_wanted = False
        self._tx_lock = threading.RLock()
        self._left = memoryview(b"")  # plaintext read past a small caller buffer
        self._tx_cut = False  # a send did not finish: never close_notify after it
        self.closed = False  # close() began: a reader in another thread may meet a torn-down layer
        self._trace = tracer_of(res.conn.get_context())  # -msg: control records' content

    # -- what the session counts ---------------------------------------------

    @property
    def peer_closed(self) -> bool:
        """The peer's close_notify arrived (clean end of its direction)."""
        return self.session.peer_closed

    @property
    def tx_closed(self) -> bool:
        """Our close_notify (or a fatal alert) is out: nothing more is sent."""
        return self.session.tx_closed

    @property
    def tickets(self) -> int:
        return self.session.tickets

    @property
    def key_updates(self) -> int:
        """KeyUpdates received from the peer."""
        return self.session.key_updates_received

    @property
    def key_updates_sent(self) -> int:
        return self.session.key_updates_sent

    @property
    def renegotiations_refused(self) -> int:
        return self.session.renegotiations_refused

    @property
    def failed(self) -> str | None:
        """Why the connection died (a fatal alert went either way), or None."""
        failure = self.session.failure
        if failure is None:
            return None
        if self.alert_sent is not None:
            return f"{failure}; sent fatal alert {alert_name(self.alert_sent)}"
        return str(failure)

    def _error(self) -> ChannelError:
        """The session's end as the channel's error: the peer's or ours."""
        why = self.failed or "connection failed"
        if isinstance(self.session.failure, RemoteProtocolError):
            received = self.alert_received
            return PeerError(why, alert_name(received) if received is not None else None)
        return LocalError(why)

    # -- sending ------------------------------------------------------------

    def request_key_update(self) -> None:
        """Ask for a KeyUpdate before the next record we send (any thread)."""
        self._update_wanted = True

    def _budget(self, left: int) -> int:
        """Rekey if due; how many of ``left`` bytes go out next (at most
        ``_TX_STEP``, so a fatal alert from the reading thread waits for one
        step, not for the whole file)."""
        if self.session.failure is not None:
            raise self._error()
        every = self.key_update_every
        if self._update_wanted or (every and self._since_update >= every):
            self.send_key_update()
        step = min(left, _TX_STEP)
        return min(step, every - self._since_update) if every else step

    def send_all(self, data: Buffer, more: bool = False) -> None:
        """All of ``data``; with ``more`` the last record stays open (MSG_MORE)
        for the next write to fill, e.g. an HTTP header and its body."""
        mv = memoryview(data)
        flags = socket.MSG_MORE if more else 0
        pos = 0
        with self._sending():
            while True:
                with self._tx_lock:
                    n = self._budget(len(mv) - pos)
                    with self._tx_errors():
                        self.k.sendall(mv[pos : pos + n], flags)
                    self._since_update += n
                pos += n
                if pos >= len(mv):
                    return

    def send_file(self, f: BinaryIO, offset: int, count: int) -> int:
        sent = 0
        with self._sending():
            while sent < count:
                got = 0
                with self._tx_lock:
                    n = self._budget(count - sent)
                    with self._tx_errors():
                        got = self.k.sendfile(f, offset + sent, n)
                    self._since_update += got
                if got == 0:
                    self._tx_cut = True  # the file ended early
                    break
                sent += got
        return sent

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """A send that does not finish (an error, an interrupt) leaves the
        stream cut: then ``close`` never says close_notify for it."""
        try:
            yield
        except BaseException:
            self._tx_cut = True
            raise

    @contextlib.contextmanager
    def _tx_errors(self) -> Iterator[None]:
        """Socket errors while sending, as one line for the user; when the
        peer hung up, the fatal alert it sent first (if we can still read it)
        says why."""
        try:
            yield
        except (BrokenPipeError, ConnectionResetError):
            alert = self._peer_alert()
            if alert is None:
                raise PeerError("peer closed the connection while we were sending") from None
            self.alert_received = alert
            raise PeerError(
                f"peer sent fatal alert: {alert_name(alert)}", alert_name(alert)
            ) from None
        except OSError as exc:
            raise _os_error(exc, "send failed") from None

    def _peer_alert(self) -> int | None:
        """Look through what the peer sent (without waiting) for a fatal
        alert (anything but close_notify); its description."""
        for _ in range(4096):  # bounded: records already received only
            try:
                data, anc, _f, _a = self.k.recvmsg(1 << 14, _CMSG, socket.MSG_DONTWAIT)
            except OSError:
                return None
            if not data and not anc:
                return None
            if (
                _record_type(anc) == _ALERT
                and len(data) == _ALERT_LEN
                and data[1] != AlertDescription.CLOSE_NOTIFY
            ):
                return data[1]
        return None

    def send_key_update(self, request: bool = False) -> None:
        """RFC 8446 4.6.3: our KeyUpdate as a handshake record, then TX rekey."""
        if not self.res.is_tls13:
            raise LocalError(
                f"KeyUpdate needs TLS 1.3 (this connection is {self.res.version_name})"
            )
        with self._tx_lock:
            self._update_wanted = False
            try:
                events = self.session.key_update(request)
            except LocalProtocolError as exc:
                raise LocalError(f"cannot send a KeyUpdate: {exc}") from None
            self._perform(events)
            self._since_update = 0

    def close_notify(self) -> None:
        """Close our write side (TLS 1.3: the peer may go on sending)."""
        try:
            with self._tx_lock:
                if self.session.failure is not None:
                    raise self._error()
                events = self.session.close()
                for ev in events:
                    if isinstance(ev, SendAlert):
                        self._send_control(_ALERT, ev.record)
            self.k.flush(timeout=10)
        except OSError as exc:
            raise _os_error(exc, "cannot send close_notify") from None

    def _send_control(self, content_type: int, data: bytes) -> None:
        if self._trace is not None:
            self._trace.inner(True, self.res.version_name, content_type, data)
        self.k.sendmsg([data], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes((content_type,)))])

    # -- receiving ----------------------------------------------------------

    def recv(self, n: int) -> bytes:
        """At most ``n`` bytes of application data; b"" at close_notify / EOF."""
        if n <= 0:
            return b""
        buf = memoryview(bytearray(n))
        got = self.recv_into(buf)
        return bytes(buf[:got])

    def recv_into(self, buf: memoryview) -> int:
        """``recv`` into ``buf``: 0 at close_notify / EOF.  Records are
        decrypted straight into ``buf`` when it holds a whole record's
        plaintext; control records land there too and are handled."""
        if not len(buf):
            return 0
        if self._left:
            k = min(len(buf), len(self._left))
            buf[:k] = self._left[:k]
            self._left = self._left[k:]
            return k
        if len(buf) >= _WHOLE_RECORD:
            return self._read(buf)
        scratch = memoryview(bytearray(_WHOLE_RECORD))
        n = self._read(scratch)
        k = min(n, len(buf))
        buf[:k] = scratch[:k]
        self._left = scratch[k:n]
        return k

    def _read(self, buf: memoryview) -> int:
        """One recvmsg after another until application data, EOF or an error."""
        while True:
            if self.session.peer_closed:
                return 0
            if self.session.failure is not None:
                raise self._error()
            try:
                n, anc, _flags, _addr = self.k.recvmsg_into([buf], _CMSG)
            except ConnectionResetError:
                self.session.connection_lost("peer reset the connection")
                raise self._error() from None
            except TimeoutError:
                raise ChannelTimeout("receive timed out") from None
            except OSError as exc:
                events = self.session.layer_error(exc)
                self._perform(events)
                continue
            ctype = _record_type(anc)
            if ctype == _DATA and not n:
                events = self.session.receive_eof(self.k.rx_truncated)
                self._perform(events)
                return 0
            if ctype != _DATA and self._trace is not None:
                self._trace.inner(False, self.res.version_name, ctype, bytes(buf[:n]))
            events = self.session.receive_record(ctype, buf[:n])
            if events or self.session.failure is not None:
                self._perform(events)
            if ctype == _DATA:
                return n

    # -- performing the session's events ------------------------------------

    def _perform(self, events: list[Event]) -> None:
        """Do what the session asked, in order; then raise if it ended."""
        for ev in events:
            if isinstance(ev, SendAlert):
                self._send_alert(ev)
            elif isinstance(ev, InstallRxKey):
                self._install(TLS_RX, ev.info)
            elif isinstance(ev, ResumeRx):
                self._resume_rx()
            elif isinstance(ev, SendKeyUpdate):
                with self._tx_lock:
                    if not self.session.tx_closed and self.session.failure is None:
                        self.send_key_update(request=ev.update_requested)
            elif isinstance(ev, SendRecord):
                with self._tx_errors():
                    self._send_control(ev.content_type, ev.data)
            elif isinstance(ev, InstallTxKey):
                self._install(TLS_TX, ev.info)
            elif isinstance(ev, PeerAlert) and ev.fatal:
                self.alert_received = int(ev.description)
            # PeerClosed, TicketIgnored, KeyUpdateReceived, RenegotiationRefused
            # and warning alerts are counted by the session: nothing to do.
        if self.session.failure is not None:
            raise self._error()

    def _send_alert(self, ev: SendAlert) -> None:
        """Best effort: the peer learns why we stop, if it still listens.

        A warning the reading thread's session asked for while our side was
        open is dropped when the sending thread closed it in between (its
        close_notify is out: nothing may follow it, RFC 8446 6.1); the
        check is under the TX lock every close takes."""
        with contextlib.suppress(OSError), self._tx_lock:
            if not ev.closes_tx and self.session.tx_closed:
                return
            self._send_control(_ALERT, ev.record)
            if ev.level == AlertLevel.FATAL:
                self.alert_sent = int(ev.description)

    def _install(self, direction: int, info: CryptoInfo) -> None:
        """``setsockopt`` of the next key; a failure ends the connection."""
        try:
            self.k.setsockopt(SOL_TLS, direction, info.pack())
        except OSError as exc:
            if direction == TLS_TX:
                # The KeyUpdate is out under the old key: nothing the peer
                # could read may follow it, not even an alert.
                why = (
                    f"KeyUpdate failed: {exc.strerror or exc}"
                    if exc.errno != errno.EBUSY
                    else "the record layer cannot change TLS 1.3 TX keys "
                    "(Linux before 6.14 answers EBUSY)"
                )
                self.session.abort(why, alert=None)
            else:
                events = self.session.abort(
                    f"cannot install the next RX key: {exc.strerror or exc}"
                )
                self._perform(events)
            raise self._error() from None

    def _resume_rx(self) -> None:
        """Install the live RX key again (same key, same rec_seq): a TLS 1.3
        rekey to itself, which ends the layer's KeyUpdate pause (Linux 6.14+
        and this layer) without changing anything else."""
        info = self.res.rx_info
        try:
            size = info.spec.struct_size if info is not None else 0
            live = self.k.getsockopt(SOL_TLS, TLS_RX, size)
            if not isinstance(live, bytes):
                raise OSError(errno.EINVAL, "no RX crypto_info")
            self.k.setsockopt(SOL_TLS, TLS_RX, live)
        except OSError as exc:
            events = self.session.abort(
                f"cannot resume RX after a KeyUpdate fragment: {exc.strerror or exc}"
            )
            self._perform(events)

    # -- closing --------------------------------------------------------------

    def close(self) -> None:
        """Answer a close_notify we have not answered, linger after a fatal
        alert we sent, then close the socket.

        The answer is not sent when one of our sends did not finish: a
        close_notify tells a TLS 1.3 peer (which may read on after its own)
        that our stream is complete, and a cut one is not.  A caller that
        abandons a transfer without an error says so with user_canceled
        (the session's ``cancel``) before closing.
        """
        self.closed = True
        with contextlib.suppress(OSError):
            with self._tx_lock:
                events = [] if self._tx_cut else self.session.finish()
            for ev in events:
                if isinstance(ev, SendAlert):
                    self._send_alert(ev)
            if events:
                self.k.flush(timeout=2)
        if self.alert_sent is not None:
            self._linger()
        if self._control is not None:
            self._control.close()
        self.k.close()

    def _linger(self) -> None:
        """After our fatal alert: send FIN behind it and read (and drop) what
        the peer still sends, until its EOF or ``_LINGER`` seconds.

        Closing a socket with unread bytes makes TCP send a reset and drop
        what it has not sent yet; a peer still writing then sees a reset,
        not our alert.  The bytes are read from the TCP socket under the
        layer (the session is over): with the kernel's kTLS that read fails
        once an error is sticky, and the wait simply ends.
        """
        raw = self.k.sock
        deadline = time.monotonic() + _LINGER
        shut = False
        while (left := deadline - time.monotonic()) > 0:
            try:
                if not shut and not self.k.pending_tx_bytes:
                    raw.shutdown(socket.SHUT_WR)
                    shut = True
                ready, _, _ = select.select([raw], [], [], left if shut else min(left, 0.05))
                if ready and not raw.recv(1 << 16, socket.MSG_DONTWAIT):
                    return
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):
                return

    def live_seqs(self) -> tuple[int | None, int | None]:
        """The next record numbers, read back as Linux offers: getsockopt."""
        out: list[int | None] = []
        for opt, info in ((TLS_TX, self.res.tx_info), (TLS_RX, self.res.rx_info)):
            try:
                size = info.spec.struct_size if info else 0
                raw = self.k.getsockopt(SOL_TLS, opt, size)
                out.append(CryptoInfo.unpack(raw).seq if isinstance(raw, bytes) else None)
            except OSError:
                out.append(None)
        return out[0], out[1]

    def cancel(self) -> None:
        """Stop sending without claiming the stream is complete (send's Ctrl-C).

        A user_canceled alert and then nothing: no close_notify follows, so
        the peer reports a cancelled or truncated transfer (``Session.cancel``).
        Call it between whole sends only, never with a record half written.
        """
        with self._tx_lock:
            self._perform(self.session.cancel())


def _record_type(anc: list[tuple[int, int, bytes]]) -> int:
    """The TLS_GET_RECORD_TYPE cmsg's type; application data without one."""
    for level, kind, value in anc:
        if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and value:
            return value[0]
    return _DATA


class OpenSSLChannel:
    """The connection kept in pyOpenSSL (``--offload none`` or no kTLS cipher).

    The memory BIOs stay in use: OpenSSL seals and opens, this class moves
    bytes between them and the socket.
    """

    offload: Offload = "none"

    def __init__(self, sock: socket.socket, res: HandshakeResult) -> None:
        self.sock = sock
        self.conn = res.conn
        self.res = res
        self.peer_closed = False
        self._plain = res.plaintext
        self._held = bytearray()  # send_all(more=True) bytes, for the next write
        if res.leftover:
            self.conn.bio_write(res.leftover)

    def _flush(self) -> None:
        out = bytearray()
        while True:
            try:
                chunk = self.conn.bio_read(_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        if out:
            try:
                self.sock.sendall(out)
            except (BrokenPipeError, ConnectionResetError):
                raise PeerError("peer closed the connection while we were sending") from None
            except OSError as exc:
                raise _os_error(exc, "send failed") from None

    def send_all(self, data: Buffer, more: bool = False) -> None:
        """All of ``data``; with ``more`` it is held and goes out with the
        next write (pyOpenSSL has no MSG_MORE: one SSL_write, one record)."""
        if more:
            self._held += data
            return
        if self._held:
            data, self._held = bytes(self._held) + bytes(data), bytearray()
        mv = memoryview(data)
        for pos in range(0, len(mv), _CHUNK):
            try:
                self.conn.sendall(bytes(mv[pos : pos + _CHUNK]))
            except SSL.Error as exc:
                raise LocalError(f"send failed: {exc}") from None
            self._flush()

    def send_file(self, f: BinaryIO, offset: int, count: int) -> int:
        f.seek(offset)
        sent = 0
        while sent < count:
            chunk = f.read(min(_CHUNK, count - sent))
            if not chunk:
                break
            self.send_all(chunk)
            sent += len(chunk)
        if self._held:
            self.send_all(b"")
        return sent

    def recv_into(self, buf: memoryview) -> int:
        data = self.recv(len(buf))
        buf[: len(data)] = data
        return len(data)

    def recv(self, n: int) -> bytes:
        if self._plain:
            data, self._plain = self._plain[:n], self._plain[n:]
            return data
        while True:
            try:
                data = self.conn.recv(n)
                self._flush()
                return bytes(data)
            except SSL.WantReadError:
                self._flush()
            except SSL.ZeroReturnError:
                self.peer_closed = True
                return b""
            except SSL.Error as exc:
                raise _openssl_error(exc) from None
            try:
                chunk = self.sock.recv(_CHUNK)
            except ConnectionResetError:
                raise PeerError("peer reset the connection") from None
            except TimeoutError:
                raise ChannelTimeout("receive timed out") from None
            if not chunk:
                return b""
            self.conn.bio_write(chunk)

    def close_notify(self) -> None:
        if self._held:
            self.send_all(b"")
        with contextlib.suppress(SSL.Error):
            self.conn.shutdown()
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def live_seqs(self) -> tuple[int | None, int | None]:
        return None, None


def _openssl_error(exc: SSL.Error) -> PeerError:
    """OpenSSL's "sslv3 alert handshake failure" as the kTLS path says it."""
    m = re.search(r"(?:sslv3|tlsv1[0-9]*|tls) alert ([a-z ]+)", str(exc))
    if m:
        name = m.group(1).strip().replace(" ", "_")
        return PeerError(f"peer sent fatal alert: {name}", name)
    return PeerError(f"TLS error from peer: {exc}")


def establish(
    sock: socket.socket,
    res: HandshakeResult,
    offload: Offload,
    warn: Callable[[str], None],
    device: DeviceSpec | None = None,
    registrar: Registrar | None = None,
) -> KtlsChannel | OpenSSLChannel:
    """Hand the keys to the layer, or keep the connection in pyOpenSSL.

    ``auto`` falls back to pyOpenSSL with a warning when the suite has no
    kTLS cipher; ``sw``/``kernel`` asked for offload explicitly, so that
    is an error instead.  A kTLS connection is registered with
    ``registrar`` (the command's control server) while it lives.
    """
    max_payload = max_send_frag_of(res.conn.get_context())
    if offload == "none":
        return OpenSSLChannel(sock, res)
    if res.tx_info is None or res.rx_info is None:
        reason = res.unsupported_reason or f"{res.cipher_name} cannot be offloaded"
        if offload == "auto":
            warn(f"warning: {reason}; the connection stays in pyOpenSSL (--offload none)")
            if max_payload is not None:
                warn("warning: -max_send_frag applies to the kTLS layer only; not applied")
            return OpenSSLChannel(sock, res)
        raise LocalError(f"--offload {offload}: {reason}")
    tracer = tracer_of(res.conn.get_context())
    tap = TapSocket(sock, tracer) if tracer is not None and tracer.msg is not None else None
    try:
        k = install_offload(open_layer(tap or sock, offload, device), res, max_payload)
        if tap is not None and k.backend == "kernel":
            tap.shown = False  # the kernel frames the records: plaintext passes here
            warn("-msg: the kernel frames the records after the handoff; not shown")
        if is_nic(offload) and k.offload_refused:
            warn(f"warning: {offload} declined TLS_TX ({k.offload_refused}); software TX")
    except BaseException as exc:
        if tap is not None:
            tap.release()
        if isinstance(exc, LookupError):
            raise LocalError(str(exc).strip("'\"")) from None
        if isinstance(exc, HandshakeError):
            raise LocalError(str(exc)) from None
        if isinstance(exc, OSError):
            raise _os_error(exc, "cannot install the keys") from None
        raise
    return KtlsChannel(k, res, registrar=registrar)
