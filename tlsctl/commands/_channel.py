"""A TLS connection after the handshake: offloaded to the kTLS layer, or not.

``send`` and ``serve`` move bytes through a :class:`Channel` and do not care
whether the record layer is ``offload.KTLSSocket`` (``--offload sw|kernel``)
or pyOpenSSL itself (``--offload none``, or a suite the layer cannot take).

The kTLS side has to do what the kernel leaves to user space: read control
records through the ``TLS_GET_RECORD_TYPE`` cmsg, skip the NewSessionTickets
a TLS 1.3 server sends after the handshake, answer a KeyUpdate by installing
the next secret, and turn close_notify into end-of-stream.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NoReturn, Protocol

from OpenSSL import SSL

from offload.errors import NoContentType
from offload.kernel import kernel_has_ktls
from offload.keys import crypto_info_tls13, tls13_next_secret
from offload.ktls_socket import KTLSSocket
from offload.netdev import create_device
from offload.record import Buffer
from offload.uapi import (
    SOL_TLS,
    TLS_GET_RECORD_TYPE,
    TLS_RX,
    TLS_SET_RECORD_TYPE,
    TLS_TX,
    ContentType,
    CryptoInfo,
)
from offload.wiremodel import FaultSpec
from tlsctl.control import register
from tlsctl.handshake import HandshakeError, HandshakeResult, install_offload

Offload = str
"""``auto``, ``sw``, ``kernel``, ``none`` or a NIC driver name (``sim-nic``)."""
BASE_OFFLOADS = ("auto", "sw", "kernel", "none")
_BACKENDS: dict[str, Literal["auto", "user", "kernel"]] = {
    "auto": "auto",
    "sw": "user",
    "kernel": "kernel",
}

_ALERT = int(ContentType.ALERT)
_HANDSHAKE = int(ContentType.HANDSHAKE)
_DATA = int(ContentType.APPLICATION_DATA)
_HELLO_REQUEST = 0
_CLIENT_HELLO = 1
_NEW_SESSION_TICKET = 4
_KEY_UPDATE = 24
_MAX_WARNINGS = 5  # OpenSSL's MAX_WARN_ALERT_COUNT: consecutive warning alerts allowed
# How much the sending thread pushes per hold of the TX lock (4 layer batches).
_TX_STEP = 4 << 20
_MAX_HS_BUFFER = 1 << 16  # a post-handshake message split over records, at most this big
_MAX_PAYLOAD = 1 << 14
# errno from the layer -> the fatal alert we send before closing (RFC 8446 6.2).
_ERRNO_ALERTS = {
    errno.EBADMSG: 20,  # bad_record_mac
    errno.EMSGSIZE: 22,  # record_overflow
    errno.EINVAL: 70,  # protocol_version (the record header's version field)
}
_CLOSE_NOTIFY = b"\x01\x00"  # warning, close_notify
_CHUNK = 256 * 1024

# RFC 8446 6: the names users see when a peer aborts.
_ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}


class ChannelError(Exception):
    """The connection failed after the handshake; one line for the user."""


class ChannelTimeout(ChannelError):
    """A read waited longer than the socket timeout (nothing is lost: the
    read may be retried)."""


class Channel(Protocol):
    """What the commands need from an established TLS connection."""

    mode: str

    def send_all(self, data: Buffer, more: bool = False) -> None: ...
    def send_file(self, f: BinaryIO, offset: int, count: int) -> int: ...
    def recv(self, n: int) -> bytes: ...
    def recv_into(self, buf: memoryview) -> int: ...
    def close_notify(self) -> None: ...
    def close(self) -> None: ...
    def live_seqs(self) -> tuple[int | None, int | None]: ...


def alert_name(desc: int) -> str:
    return _ALERT_NAMES.get(desc, f"alert {desc}")


_HANDSHAKE_NAMES = {
    0: "hello_request",
    1: "client_hello",
    2: "server_hello",
    4: "new_session_ticket",
    8: "encrypted_extensions",
    11: "certificate",
    13: "certificate_request",
    15: "certificate_verify",
    20: "finished",
    24: "key_update",
}


class KtlsChannel:
    """The connection with its record layer in ``offload.KTLSSocket``.

    What it does above the layer (the kernel leaves all of it to user space):

    * alerts: close_notify is end-of-stream (TLS 1.3: only our read side
      closes, we may still send); a fatal alert from the peer is a one-line
      error naming it; up to ``_MAX_WARNINGS`` consecutive TLS 1.2 warning
      alerts are tolerated (OpenSSL's limit), more is unexpected_message.
    * errors from the layer become the matching fatal alert on the wire
      before the connection closes: EBADMSG bad_record_mac (a TLS 1.3
      record with no content type: unexpected_message), EMSGSIZE
      record_overflow, EINVAL (header version) protocol_version, an unknown
      record type unexpected_message, an empty alert decode_error, an empty
      handshake record unexpected_message.
    * post-handshake handshake messages: TLS 1.3 NewSessionTicket (client
      side) is counted and dropped, KeyUpdate rekeys RX (and TX if asked);
      anything else is unexpected_message.  TLS 1.2 renegotiation (a
      HelloRequest to a client, a ClientHello to a server) is refused with a
      warning no_renegotiation alert and the connection goes on, as OpenSSL
      does with renegotiation disabled (repeated: unexpected_message).
    * KeyUpdate on our side: every ``key_update_every`` bytes sent, or at
      the next send after :meth:`request_key_update` (thread-safe; serve's
      SIGUSR1).  We send update_not_requested: the peer need not answer, so
      a one-way sender never has to read while it sends.
    """

    def __init__(self, k: KTLSSocket, res: HandshakeResult,
                 key_update_every: int | None = None) -> None:
        self.k = k
        self.res = res
        # Visible to `tlsctl inspect-context` while the connection lives.
        self._control = register(k, label=res.side, extra={"cipher_suite": res.cipher_name})
        # What the layer actually uses: "sw", "kernel", or the NIC driver's name.
        self.mode = k.device.driver.name if k.tx_conf == "device" and k.device else k.tx_conf
        self.peer_closed = False
        self.tickets = 0
        self.key_updates = 0  # received from the peer
        self.key_updates_sent = 0
        self.renegotiations_refused = 0
        self.alert_sent: int | None = None
        self.tx_closed = False  # our close_notify (or a fatal alert) is out
        # Why the connection died, once a fatal alert went either way: the
        # sending thread stops at its next step, so no record follows the
        # alert (send reads from a second thread while the file goes out).
        self.failed: str | None = None
        self.key_update_every = key_update_every
        self._since_update = 0
        self._update_wanted = False
        self._warnings = 0  # consecutive warning alerts
        self._hs_buf = bytearray()
        self._tx_lock = threading.RLock()
        self._tx_secret = res.tx_secret
        self._rx_secret = res.rx_secret

    # -- sending ------------------------------------------------------------

    def request_key_update(self) -> None:
        """Ask for a KeyUpdate before the next record we send (any thread)."""
        self._update_wanted = True

    def _budget(self, left: int) -> int:
        """Rekey if due; how many of ``left`` bytes go out next (at most
        ``_TX_STEP``, so a fatal alert from the reading thread waits for one
        step, not for the whole file)."""
        if self.failed is not None:
            raise ChannelError(self.failed)
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
        while sent < count:
            got = 0
            with self._tx_lock:
                n = self._budget(count - sent)
                with self._tx_errors():
                    got = self.k.sendfile(f, offset + sent, n)
                self._since_update += got
            if got == 0:
                break
            sent += got
        return sent

    @contextlib.contextmanager
    def _tx_errors(self) -> Iterator[None]:
        """Socket errors while sending, as one line for the user; when the
        peer hung up, the fatal alert it sent first (if we can still read it)
        says why."""
        try:
            yield
        except (BrokenPipeError, ConnectionResetError):
            raise ChannelError(self._peer_alert()
                               or "peer closed the connection while we were sending") from None
        except OSError as exc:
            raise ChannelError(f"send failed: {exc.strerror or exc}") from None

    def _peer_alert(self) -> str | None:
        """Look through what the peer sent (without waiting) for an alert."""
        for _ in range(4096):  # bounded: records already received only
            try:
                data, anc, _f, _a = self.k.recvmsg(1 << 14, socket.CMSG_SPACE(1),
                                                   socket.MSG_DONTWAIT)
            except OSError:
                return None
            if not data and not anc:
                return None
            ctype = next((v[0] for lv, kd, v in anc
                          if lv == SOL_TLS and kd == TLS_GET_RECORD_TYPE and v), _DATA)
            if ctype == _ALERT and len(data) == 2 and data[1] != 0:
                return f"peer sent fatal alert: {alert_name(data[1])}"
        return None

    def send_key_update(self, request: bool = False) -> None:
        """RFC 8446 4.6.3: our KeyUpdate as a handshake record, then TX rekey."""
        suite = self.res.suite
        if not self.res.is_tls13 or suite is None or not self._tx_secret:
            raise ChannelError(f"KeyUpdate needs TLS 1.3 (this connection is "
                               f"{self.res.version_name})")
        with self._tx_lock:
            self._update_wanted = False
            with self._tx_errors():
                self.k.sendmsg([bytes([_KEY_UPDATE, 0, 0, 1, int(request)])],
                               [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x16")])
            secret = tls13_next_secret(self._tx_secret, suite)
            try:
                self.k.setsockopt(SOL_TLS, TLS_TX, crypto_info_tls13(secret, suite, 0).pack())
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise ChannelError("the record layer cannot change TLS 1.3 TX keys "
                                       "(Linux before 6.14 answers EBUSY)") from None
                raise ChannelError(f"KeyUpdate failed: {exc.strerror or exc}") from None
            self._tx_secret = secret
            self.key_updates_sent += 1
            self._since_update = 0

    # -- receiving ----------------------------------------------------------

    def recv(self, n: int) -> bytes:
        """Application data, or b"" at close_notify / EOF; control records handled."""
        buf = bytearray(max(n, 1 << 14))
        with memoryview(buf) as mv:
            got = self.recv_into(mv)
            return bytes(mv[:got])

    def recv_into(self, buf: memoryview) -> int:
        """``recv`` into ``buf`` (records are decrypted straight into it): 0 at
        close_notify / EOF.  Control records land there too and are handled."""
        while True:
            if self.peer_closed:
                return 0
            try:
                n, anc, _flags, _addr = self.k.recvmsg_into([buf], socket.CMSG_SPACE(1))
            except ConnectionResetError:
                raise ChannelError("peer reset the connection") from None
            except TimeoutError:
                raise ChannelTimeout("receive timed out") from None
            except OSError as exc:
                self._layer_error(exc)
            ctype = _DATA
            for level, kind, value in anc:
                if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and value:
                    ctype = value[0]
            if self._hs_buf and ctype != _HANDSHAKE and (n or ctype != _DATA):
                # RFC 8446 5.1: a split handshake message must not be interleaved.
                self._fatal(10, "record interleaved with a fragmented handshake message")
            if ctype == _DATA:
                if not n and self.k.rx_truncated:
                    raise ChannelError("peer closed the connection in the middle of a record")
                if n:
                    self._warnings = 0
                return n
            if ctype == _ALERT:
                self._on_alert(bytes(buf[:n]))
            elif ctype == _HANDSHAKE:
                self._on_handshake(bytes(buf[:n]))
            else:
                self._fatal(10, f"peer sent a record of unexpected type {ctype}")

    def _layer_error(self, exc: OSError) -> NoReturn:
        """A bad record: the alert the layer's errno calls for, then stop."""
        detail = exc.strerror or str(exc)
        if isinstance(exc, NoContentType):
            self._fatal(10, "peer sent a TLS 1.3 record with no content type "
                            "(all-zero plaintext)")
        if exc.errno == errno.EBADMSG:
            self._fatal(20, "record failed authentication (corrupted or forged data)")
        if exc.errno == errno.EMSGSIZE:
            self._fatal(22, "peer sent an oversized record")
        if exc.errno == errno.EINVAL:
            self._fatal(70, "peer sent a record with a wrong protocol version")
        if exc.errno == errno.EKEYEXPIRED:
            # The layer paused at a record starting with KeyUpdate that did not
            # hold a whole KeyUpdate message (RFC 8446 5.1: it must).
            self._fatal(10, "peer sent a KeyUpdate split across records")
        raise ChannelError(f"receive failed: {detail}") from None

    def _fatal(self, desc: int, why: str) -> NoReturn:
        # Marked failed first: a sender in another thread stops at its next
        # step (see _budget) and leaves the TX lock to the alert; nothing
        # follows the alert.
        self.failed = why
        with self._tx_lock:
            if self._alert(desc):
                self.failed = why = f"{why}; sent fatal alert {alert_name(desc)}"
        raise ChannelError(why)

    def _on_alert(self, data: bytes) -> None:
        if len(data) != 2:
            self._fatal(50, f"malformed alert from peer ({len(data)} bytes)")
        level, desc = data[0], data[1]
        if desc == 0:
            self.peer_closed = True
            return
        if level == 2 or (self.res.is_tls13 and desc != 90):
            self.failed = f"peer sent fatal alert: {alert_name(desc)}"
            raise ChannelError(self.failed)
        if level != 1:
            self._fatal(47, f"peer sent an alert with unknown level {level}")
        self._warnings += 1  # a warning (user_canceled: a close_notify follows)
        if self._warnings > _MAX_WARNINGS:
            self._fatal(10, f"too many warning alerts from peer (last: {alert_name(desc)})")

    def _on_handshake(self, data: bytes) -> None:
        """Post-handshake messages, reassembled across records (bounded)."""
        if not data:
            self._fatal(10, "peer sent an empty handshake record")
        self._hs_buf += data
        while len(self._hs_buf) >= 4:
            length = int.from_bytes(self._hs_buf[1:4], "big")
            if length > _MAX_HS_BUFFER:
                self._fatal(50, f"post-handshake message of {length} bytes from peer")
            if len(self._hs_buf) < 4 + length:
                return
            mtype = self._hs_buf[0]
            body = bytes(self._hs_buf[4 : 4 + length])
            del self._hs_buf[: 4 + length]
            self._handshake_message(mtype, body)

    def _handshake_message(self, mtype: int, body: bytes) -> None:
        name = _HANDSHAKE_NAMES.get(mtype, f"type {mtype}")
        if self.res.is_tls13:
            if mtype == _NEW_SESSION_TICKET and self.res.side == "client":
                self.tickets += 1
                return
            if mtype == _KEY_UPDATE:
                if len(body) != 1:
                    self._fatal(50, "malformed KeyUpdate from peer")
                if body[0] > 1:
                    self._fatal(47, f"KeyUpdate with request_update={body[0]}")
                if self._hs_buf:
                    self._fatal(10, "KeyUpdate not at a record boundary")
                self._key_update(request=body[0] == 1)
                return
        else:
            renego = _HELLO_REQUEST if self.res.side == "client" else _CLIENT_HELLO
            if mtype == renego:
                self.renegotiations_refused += 1
                if self.renegotiations_refused > _MAX_WARNINGS:
                    self._fatal(10, "peer keeps trying to renegotiate")
                self._alert(100, level=1)  # warning no_renegotiation, then go on
                return
        self._fatal(10, f"unexpected handshake message {name} after the handshake")

    def _key_update(self, request: bool) -> None:
        """RFC 8446 4.6.3: next RX secret; if asked, send ours and switch TX."""
        suite = self.res.suite
        if suite is None or not self._rx_secret:
            raise ChannelError("KeyUpdate without TLS 1.3 secrets")
        self._rx_secret = tls13_next_secret(self._rx_secret, suite)
        try:
            self.k.setsockopt(SOL_TLS, TLS_RX,
                              crypto_info_tls13(self._rx_secret, suite, 0).pack())
        except OSError as exc:
            self._fatal(80, f"cannot install the next RX key: {exc.strerror or exc}")
        self.key_updates += 1
        if request and not self.tx_closed:
            self.send_key_update(request=False)

    def _alert(self, desc: int, level: int = 2) -> bool:
        """Best effort alert (fatal by default): the peer learns why we stop.

        Nothing is sent after our close_notify (our write side is closed).
        """
        if self.tx_closed:
            return False
        with contextlib.suppress(OSError), self._tx_lock:
            self.k.sendmsg([bytes([level, desc])], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")])
            if level == 2:
                self.alert_sent = desc
                self.tx_closed = True  # nothing is sent after a fatal alert
            return True
        return False

    def close_notify(self) -> None:
        """Close our write side (TLS 1.3: the peer may go on sending)."""
        try:
            with self._tx_lock:
                if self.failed is not None:
                    raise ChannelError(self.failed)
                self.k.sendmsg([_CLOSE_NOTIFY], [(SOL_TLS, TLS_SET_RECORD_TYPE, b"\x15")])
                self.tx_closed = True
            self.k.flush(timeout=10)
        except OSError as exc:
            raise ChannelError(f"cannot send close_notify: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._control.close()
        self.k.close()

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

        A user_canceled alert (RFC 5246 7.2.1 / RFC 8446 6.1: a warning in
        TLS 1.2, allowed as it is in 1.3) and then nothing: no close_notify
        follows, so the peer reports a cancelled or truncated transfer.
        Call it between whole sends only, never with a record half written.
        """
        user_canceled, warning = 90, 1
        self._alert(user_canceled, level=warning)
        self.tx_closed = True


class OpenSSLChannel:
    """The connection kept in pyOpenSSL (``--offload none`` or no kTLS cipher).

    The memory BIOs stay in use: OpenSSL seals and opens, this class moves
    bytes between them and the socket.
    """

    mode = "none"

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
                raise ChannelError("peer closed the connection while we were sending") from None

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
                raise ChannelError(f"send failed: {exc}") from None
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
                raise ChannelError(_openssl_error_text(exc)) from None
            try:
                chunk = self.sock.recv(_CHUNK)
            except ConnectionResetError:
                raise ChannelError("peer reset the connection") from None
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


def _openssl_error_text(exc: SSL.Error) -> str:
    """OpenSSL's "sslv3 alert handshake failure" as the kTLS path says it."""
    m = re.search(r"(?:sslv3|tlsv1[0-9]*|tls) alert ([a-z ]+)", str(exc))
    if m:
        return f"peer sent fatal alert: {m.group(1).strip().replace(' ', '_')}"
    return f"TLS error from peer: {exc}"


@functools.cache
def _kernel_ktls() -> bool:
    return kernel_has_ktls()[0]


def exact_reads(offload: str) -> bool:
    """Should the handshake avoid reading past its last record?

    Yes when the kernel may take RX: bytes already read cannot be handed
    back to it (the software layer takes them through ``inject_rx``).
    """
    return offload == "kernel" or (offload == "auto" and _kernel_ktls())


@dataclass(frozen=True)
class DeviceSpec:
    """How to build the simulated NIC path for ``--offload <driver>``."""

    faults: FaultSpec | None = None
    mss: int | None = None

    def layer_kwargs(self, driver: str) -> dict[str, Any]:
        """KTLSSocket arguments: a fresh device per connection (its own
        counters), and a second one without the context for redirects."""
        kw: dict[str, Any] = {"device": create_device(driver), "mss": self.mss}
        if self.faults is not None:
            kw["faults"] = self.faults
            kw["fallback_device"] = create_device(driver, f"{driver}1")
        return kw


def device_report(chan: KtlsChannel) -> dict[str, Any]:
    """What the NIC did for this connection: counters (ethtool names, zeros
    left out), device CPU time, and the faults that made it take slow paths."""
    k = chan.k
    dev = k.describe().get("device")
    if not dev:
        return {}
    out: dict[str, Any] = {
        "device_cpu_seconds": round(dev["device_cpu_seconds"], 6),
        "device_counters": {n: v for n, v in dev["stats"].items() if v},
    }
    if dev["faults"]:
        out["faults"] = dev["faults"]
        out["faults_injected"] = {n: v for n, v in dev["faults_injected"].items() if v}
    if k.wire is not None and k.wire.fallback_device is not None:
        fb = k.wire.fallback_device.stats.snapshot()
        out["fallback_device_counters"] = {n: v for n, v in fb.items() if v}
    return out


def establish(
    sock: socket.socket,
    res: HandshakeResult,
    offload: Offload,
    warn: Callable[[str], None],
    device: DeviceSpec | None = None,
) -> KtlsChannel | OpenSSLChannel:
    """Hand the keys to the layer, or keep the connection in pyOpenSSL.

    ``auto`` falls back to pyOpenSSL with a warning when the suite has no
    kTLS cipher; ``sw``/``kernel`` asked for offload explicitly, so that
    is an error instead.
    """
    if offload == "none":
        return OpenSSLChannel(sock, res)
    if res.tx_info is None or res.rx_info is None:
        reason = res.unsupported_reason or f"{res.cipher_name} cannot be offloaded"
        if offload == "auto":
            warn(f"warning: {reason}; the connection stays in pyOpenSSL (--offload none)")
            return OpenSSLChannel(sock, res)
        raise ChannelError(f"--offload {offload}: {reason}")
    try:
        if offload in _BACKENDS:
            k = install_offload(sock, res, _BACKENDS[offload])
        else:  # a NIC driver: the user-space layer with TX on a simulated device
            k = install_offload(sock, res, "user", **(device or DeviceSpec()).layer_kwargs(offload))
            if k.offload_refused:
                warn(f"warning: {offload} declined TLS_TX ({k.offload_refused}); software TX")
    except LookupError as exc:
        raise ChannelError(str(exc).strip("'\"")) from None
    except HandshakeError as exc:
        raise ChannelError(str(exc)) from None
    except OSError as exc:
        raise ChannelError(f"cannot install the keys: {exc.strerror or exc}") from None
    return KtlsChannel(k, res)
