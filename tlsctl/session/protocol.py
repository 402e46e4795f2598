"""The TLS protocol after the handshake, as a state machine without I/O.

Linux kTLS leaves to user space everything above the record layer: alerts,
post-handshake handshake messages (NewSessionTicket, KeyUpdate, TLS 1.2
renegotiation attempts), close_notify, and which alert answers a record the
layer refused.  :class:`Session` holds that logic and nothing else, in the
shape of h11's ``Connection`` and aioquic's ``tls.Context``: whole records
(content type and plaintext, as ``recvmsg`` returns them with the
``TLS_GET_RECORD_TYPE`` cmsg) and layer errors go in, events come out
(:mod:`tlsctl.session.events`), and the I/O shell (``KtlsChannel``) performs
them: sends alerts and records, installs keys.  No sockets here, so every
hostile record has a fast unit test.

Errors are split as h11 splits them.  A peer that breaks the protocol ends
the session with a :class:`RemoteProtocolError` naming the alert we answer
(OpenSSL 3's choice for the same bytes, checked against ``openssl
s_server``); a peer's own fatal alert ends it with a ``RemoteProtocolError``
without one.  Our own failures (a key that will not install) and misuse of
the machine are :class:`LocalProtocolError`.  ``failure`` keeps the one that
ended the session; every later event list is empty.

Records must be fed whole: one control record per call, as kTLS returns
them to a reader whose buffer holds 2^14 bytes.  That is what lets the
machine know record boundaries, which RFC 8446 5.1 makes matter for a key
change: handshake messages may be fragmented across records and several may
share one, but a KeyUpdate must end exactly at a record's end.

Threads: one reader (the ``receive_*``/``layer_error`` calls) and one
writer (``key_update``, ``close``, ``cancel``) may call at the same time, as
``tlsctl send`` reads while it sends.  They touch apart state, except the
two transitions both may make, which are atomic: the first failure wins, and
our direction closes once (so one close_notify or one fatal alert, never
both).  Several readers or several writers need the caller's own locking.
"""

from __future__ import annotations

import errno
import threading
from typing import Literal, TypeVar

from offload.errors import NoContentType, OuterTypeMismatch, ShortRecord
from offload.keys import Suite
from offload.record import Buffer
from tlsctl.session.codes import (
    AlertDescription,
    AlertLevel,
    ContentType,
    HandshakeType,
    KeyUpdateRequest,
    alert_name,
    handshake_name,
)
from tlsctl.session.events import (
    Event,
    InstallRxKey,
    InstallTxKey,
    KeyUpdateReceived,
    PeerAlert,
    PeerClosed,
    RenegotiationRefused,
    ResumeRx,
    SendAlert,
    SendKeyUpdate,
    SendRecord,
    TicketIgnored,
)
from tlsctl.session.keys import TrafficSecrets

__all__ = [
    "LAYER_ALERTS",
    "MAX_WARNINGS",
    "LocalProtocolError",
    "RemoteProtocolError",
    "Session",
    "SessionError",
    "layer_alert",
]

Side = Literal["client", "server"]

_DATA = int(ContentType.APPLICATION_DATA)
_ALERT = int(ContentType.ALERT)
_HANDSHAKE = int(ContentType.HANDSHAKE)
_KEY_UPDATE = int(HandshakeType.KEY_UPDATE)
_HEADER = 4  # handshake message: type (1) and length (3)

MAX_WARNINGS = 5
"""OpenSSL's MAX_WARN_ALERT_COUNT: the 5th warning alert in a row (no
application data between) is answered with unexpected_message; so is a
6th refused renegotiation."""

# The largest body OpenSSL's state machine accepts for each message a peer
# may send after the handshake (statem ``max_message_size``); a message type
# absent here is unexpected_message, a longer body illegal_parameter.
_MAX_BODY_13: dict[tuple[Side, int], int] = {
    ("client", HandshakeType.NEW_SESSION_TICKET): 131338,
    ("client", HandshakeType.KEY_UPDATE): 1,
    ("server", HandshakeType.KEY_UPDATE): 1,
}
_MAX_BODY_12: dict[tuple[Side, int], int] = {
    ("client", HandshakeType.HELLO_REQUEST): 0,
    ("server", HandshakeType.CLIENT_HELLO): 131396,
}

# errno from the record layer -> (our alert in TLS 1.2, in TLS 1.3, what the
# user reads).  The one place a layer error becomes an alert; the subclasses
# of offload.errors refine it in ``layer_alert``.
LAYER_ALERTS: dict[int, tuple[AlertDescription, AlertDescription, str]] = {
    errno.EBADMSG: (
        AlertDescription.BAD_RECORD_MAC,
        AlertDescription.BAD_RECORD_MAC,
        "record failed authentication (corrupted or forged data)",
    ),
    errno.EMSGSIZE: (
        AlertDescription.RECORD_OVERFLOW,
        AlertDescription.RECORD_OVERFLOW,
        "peer sent an oversized record",
    ),
    # RFC 8446 5.1 says to ignore legacy_record_version; Linux refuses a
    # record whose version is not 0x0303 (EINVAL, stream aborted) and
    # OpenSSL answers decode_error in TLS 1.3, protocol_version before it.
    errno.EINVAL: (
        AlertDescription.PROTOCOL_VERSION,
        AlertDescription.DECODE_ERROR,
        "peer sent a record with a wrong protocol version",
    ),
}


def layer_alert(exc: OSError, tls13: bool) -> tuple[AlertDescription, str] | None:
    """The alert (and one line why) for an error the record layer raised on
    receive, or None when it is not about a record (EAGAIN, EPIPE, ...).

    Linux reports only an errno; the layer's OSError subclasses carry what
    it does not distinguish: a TLS 1.3 record with no content type, and the
    header type of a record refused before or by its tag.  OpenSSL answers
    a TLS 1.3 record that is not application_data on the outside, and one
    with no inner type, with unexpected_message (RFC 8446 5 and 5.4).
    """
    if tls13:
        if isinstance(exc, NoContentType):
            return (
                AlertDescription.UNEXPECTED_MESSAGE,
                "peer sent a TLS 1.3 record with no content type (all-zero plaintext)",
            )
        if isinstance(exc, OuterTypeMismatch | ShortRecord) and exc.content_type != _DATA:
            return (
                AlertDescription.UNEXPECTED_MESSAGE,
                f"peer sent a TLS 1.3 record of outer type {_type_name(exc.content_type)} "
                "after the handshake",
            )
    elif isinstance(exc, ShortRecord):
        return (
            AlertDescription.BAD_RECORD_MAC,
            f"peer sent a record too short to be protected (type {_type_name(exc.content_type)})",
        )
    entry = LAYER_ALERTS.get(exc.errno or 0)
    if entry is None:
        return None
    return entry[1] if tls13 else entry[0], entry[2]


def _type_name(content_type: int) -> str:
    try:
        return f"{content_type} ({ContentType(content_type).name.lower()})"
    except ValueError:
        return str(content_type)


class SessionError(Exception):
    """Why the session ended; one line for the user."""


class LocalProtocolError(SessionError):
    """Our side: the machine was misused, or the shell could not do what it
    had to (``abort``)."""


class RemoteProtocolError(SessionError):
    """The peer's side: it broke the protocol (``alert`` is what we answer
    with) or ended the connection with its own fatal alert (``alert`` None)."""

    def __init__(self, reason: str, alert: AlertDescription | None) -> None:
        super().__init__(reason)
        self.alert = alert


class Session:
    """One TLS connection after the handshake, either version, either side.

    ``tx_secret``/``rx_secret`` and ``suite`` are needed for TLS 1.3 only
    (KeyUpdate).  Counters for the caller: ``tickets``,
    ``key_updates_received``, ``key_updates_sent``,
    ``renegotiations_refused``; state: ``peer_closed`` (its close_notify
    arrived), ``peer_canceled`` (its user_canceled arrived), ``tx_closed``
    (our close_notify or a fatal alert is out), ``failure``.
    """

    def __init__(
        self,
        side: Side,
        *,
        tls13: bool,
        suite: Suite | None = None,
        tx_secret: bytes = b"",
        rx_secret: bytes = b"",
    ) -> None:
        self.side: Side = side
        self.tls13 = tls13
        self._secrets = (
            TrafficSecrets(suite, tx_secret, rx_secret)
            if tls13 and suite is not None and tx_secret and rx_secret
            else None
        )
        self.peer_closed = False
        self.peer_canceled = False
        self.tx_closed = False
        self.failure: SessionError | None = None
        self._lock = threading.Lock()  # the failure and tx_closed transitions
        self.tickets = 0
        self.key_updates_received = 0
        self.key_updates_sent = 0
        self.renegotiations_refused = 0
        self._hs = bytearray()  # a post-handshake message split over records
        self._warnings = 0  # warning alerts in a row
        self._rx_paused = False  # the layer will answer EKEYEXPIRED (a KeyUpdate fragment)
        # Bounds the reassembly buffer: one record plus one message's body.
        self._max_body = _MAX_BODY_13 if tls13 else _MAX_BODY_12

    def __repr__(self) -> str:
        state = "failed" if self.failure else "open"
        return (
            f"Session({self.side}, {'TLS 1.3' if self.tls13 else 'TLS 1.2'}, {state}, "
            f"peer_closed={self.peer_closed}, tx_closed={self.tx_closed})"
        )

    # -- receiving -------------------------------------------------------

    def receive_record(self, content_type: int, data: Buffer) -> list[Event]:
        """One whole record from the layer: its type and plaintext.

        A data record's bytes are not looked at (they may be the caller's
        buffer, decrypted in place); only its length matters.
        """
        if self.failure is not None or self.peer_closed:
            raise LocalProtocolError("record fed to a session that has ended its receive side")
        if content_type == _DATA:
            if len(data):
                if self._hs and self.tls13:
                    return self._interleaved()
                self._warnings = 0
            return []
        if self._hs and self.tls13 and content_type != _HANDSHAKE:
            return self._interleaved()
        if content_type == _ALERT:
            return self._alert(bytes(data))
        if content_type == _HANDSHAKE:
            return self._handshake(bytes(data))
        return self._violation(
            AlertDescription.UNEXPECTED_MESSAGE,
            f"peer sent a record of unexpected type {_type_name(content_type)}",
        )

    def receive_eof(self, truncated: bool) -> list[Event]:
        """The peer's FIN.  In the middle of a record it is a broken record
        (OpenSSL: decode_error); at a record boundary without close_notify
        the stream may be truncated, which the caller reports."""
        if truncated and self.failure is None:
            return self._violation(
                AlertDescription.DECODE_ERROR,
                "peer closed the connection in the middle of a record",
            )
        return []

    def layer_error(self, exc: OSError) -> list[Event]:
        """The record layer refused to deliver: the alert its errno calls for.

        EKEYEXPIRED is the layer's pause after a handshake record that began
        with a KeyUpdate (``tls_check_pending_rekey``); when that record held
        only a fragment of it, RX resumes under the same key (``ResumeRx``).
        """
        if self.failure is not None:
            return []
        if exc.errno == errno.EKEYEXPIRED:
            if self._rx_paused:
                self._rx_paused = False
                return [ResumeRx()]
            return self.abort("the record layer paused RX with no KeyUpdate to explain it")
        found = layer_alert(exc, self.tls13)
        if found is None:
            self._fail(LocalProtocolError(f"receive failed: {exc.strerror or exc}"))
            return []
        return self._violation(*found)

    # -- alerts ----------------------------------------------------------

    def _alert(self, data: bytes) -> list[Event]:
        if len(data) != 2:
            # RFC 8446 5.1: an alert record holds exactly one alert; OpenSSL
            # answers an empty, split or coalesced one with unexpected_message.
            return self._violation(
                AlertDescription.UNEXPECTED_MESSAGE,
                f"malformed alert from peer ({len(data)} bytes, not one 2-byte alert)",
            )
        level, desc = _code(AlertLevel, data[0]), _code(AlertDescription, data[1])
        if desc == AlertDescription.CLOSE_NOTIFY and (self.tls13 or level == AlertLevel.WARNING):
            self.peer_closed = True
            return [PeerClosed()]
        canceled = desc == AlertDescription.USER_CANCELED
        if level == AlertLevel.WARNING or (self.tls13 and canceled):
            self._warnings += 1
            if self._warnings >= MAX_WARNINGS:
                return self._violation(
                    AlertDescription.UNEXPECTED_MESSAGE,
                    f"too many warning alerts from peer (last: {alert_name(desc)})",
                )
        if self.tls13 and canceled:
            self.peer_canceled = True
            return [PeerAlert(level, desc, fatal=False)]
        if level == AlertLevel.FATAL or self.tls13:
            # RFC 8446 6: in TLS 1.3 every other alert is fatal, whatever its level.
            self._fail(RemoteProtocolError(f"peer sent fatal alert: {alert_name(desc)}", None))
            return [PeerAlert(level, desc, fatal=True)]
        if desc == AlertDescription.NO_RENEGOTIATION:
            # We never ask to renegotiate; OpenSSL answers this one alike.
            return self._violation(
                AlertDescription.HANDSHAKE_FAILURE,
                "peer refused a renegotiation we never asked for",
            )
        if level == AlertLevel.WARNING:
            self.peer_canceled = self.peer_canceled or canceled
            return [PeerAlert(level, desc, fatal=False)]
        return self._violation(
            AlertDescription.ILLEGAL_PARAMETER, f"peer sent an alert with unknown level {level}"
        )

    # -- handshake messages ------------------------------------------------

    def _handshake(self, data: bytes) -> list[Event]:
        """Post-handshake messages, reassembled across records (bounded)."""
        if not data:
            if self.tls13:  # RFC 8446 5.1: no zero-length handshake fragments
                return self._violation(
                    AlertDescription.UNEXPECTED_MESSAGE, "peer sent an empty handshake record"
                )
            return []  # TLS 1.2: OpenSSL skips it
        # Mirror of Linux's tls_check_pending_rekey: a TLS 1.3 handshake
        # record whose first byte is KeyUpdate pauses RX after it.
        pauses = self.tls13 and data[0] == _KEY_UPDATE
        self._hs += data
        events: list[Event] = []
        rekeyed = False
        hs = self._hs
        while len(hs) >= _HEADER:
            mtype = hs[0]
            length = int.from_bytes(hs[1:_HEADER], "big")
            limit = self._max_body.get((self.side, mtype))
            if limit is None:
                return events + self._violation(
                    AlertDescription.UNEXPECTED_MESSAGE,
                    f"unexpected handshake message {handshake_name(mtype)} after the handshake",
                )
            if length > limit:
                if mtype == HandshakeType.HELLO_REQUEST:
                    return events + self._violation(
                        AlertDescription.DECODE_ERROR, "HelloRequest with a body"
                    )
                return events + self._violation(
                    AlertDescription.ILLEGAL_PARAMETER,
                    f"post-handshake {handshake_name(mtype)} of {length} bytes from peer",
                )
            if len(hs) < _HEADER + length:
                break
            body = bytes(hs[_HEADER : _HEADER + length])
            del hs[: _HEADER + length]
            got = self._message(HandshakeType(mtype), body, at_record_end=not hs)
            events += got
            if self.failure is not None:
                return events
            rekeyed = rekeyed or any(isinstance(e, InstallRxKey) for e in got)
        self._rx_paused = pauses and not rekeyed
        return events

    def _message(self, mtype: HandshakeType, body: bytes, at_record_end: bool) -> list[Event]:
        if mtype == HandshakeType.NEW_SESSION_TICKET:
            self.tickets += 1
            return [TicketIgnored()]
        if mtype == HandshakeType.KEY_UPDATE:
            return self._key_update(body, at_record_end)
        # TLS 1.2 renegotiation: HelloRequest to a client, ClientHello to a server.
        self.renegotiations_refused += 1
        if self.renegotiations_refused > MAX_WARNINGS:
            return self._violation(
                AlertDescription.UNEXPECTED_MESSAGE, "peer keeps trying to renegotiate"
            )
        events: list[Event] = [RenegotiationRefused(mtype)]
        if not self.tx_closed:
            events.append(SendAlert(AlertDescription.NO_RENEGOTIATION, AlertLevel.WARNING))
        return events

    def _key_update(self, body: bytes, at_record_end: bool) -> list[Event]:
        """RFC 8446 4.6.3, checks in OpenSSL's order (tls_process_key_update)."""
        if not at_record_end:
            # RFC 8446 5.1: a message that precedes a key change ends its record.
            return self._violation(
                AlertDescription.UNEXPECTED_MESSAGE, "KeyUpdate not at a record boundary"
            )
        if len(body) != 1:
            return self._violation(AlertDescription.DECODE_ERROR, "malformed KeyUpdate from peer")
        if body[0] > KeyUpdateRequest.UPDATE_REQUESTED:
            return self._violation(
                AlertDescription.ILLEGAL_PARAMETER, f"KeyUpdate with request_update={body[0]}"
            )
        if self._secrets is None:
            return self.abort("KeyUpdate without TLS 1.3 traffic secrets")
        requested = body[0] == KeyUpdateRequest.UPDATE_REQUESTED
        self.key_updates_received += 1
        events: list[Event] = [KeyUpdateReceived(requested), InstallRxKey(self._secrets.next_rx())]
        if requested and not self.tx_closed:
            events.append(SendKeyUpdate(update_requested=False))
        return events

    # -- sending ---------------------------------------------------------

    def key_update(self, request: bool = False) -> list[Event]:
        """Our KeyUpdate: the handshake record, then our next TX key.

        Call it (and perform the events) under the shell's TX lock, between
        records: nothing may be sent between the two events.
        """
        if self._secrets is None:
            raise LocalProtocolError("KeyUpdate needs TLS 1.3")
        if self.tx_closed or self.failure is not None:
            # A reader's fatal alert may close our side right after this
            # check; the alert then follows the KeyUpdate, under the new key.
            raise LocalProtocolError("KeyUpdate after our side of the connection closed")
        body = bytes((_KEY_UPDATE, 0, 0, 1, int(request)))
        self.key_updates_sent += 1
        return [SendRecord(_HANDSHAKE, body), InstallTxKey(self._secrets.next_tx())]

    def close(self) -> list[Event]:
        """Our close_notify (TLS 1.3: closes our direction only; we may go on
        reading).  Nothing once our side is closed."""
        if not self._close_tx():
            return []
        return [SendAlert(AlertDescription.CLOSE_NOTIFY, AlertLevel.WARNING)]

    def cancel(self) -> list[Event]:
        """user_canceled, and our direction closed *without* close_notify.

        RFC 8446 6.1 says a close_notify SHOULD follow user_canceled; it does
        not here, on purpose: a receiver that sees close_notify takes the
        stream as complete, and a cancelled transfer is not.
        """
        if not self._close_tx():
            return []
        return [SendAlert(AlertDescription.USER_CANCELED, AlertLevel.WARNING)]

    def finish(self) -> list[Event]:
        """What to send before the socket closes: our close_notify when the
        peer closed with one and we have not answered yet (RFC 8446 6.1:
        each side closes its write direction with close_notify)."""
        if self.peer_closed and self.failure is None:
            return self.close()
        return []

    def abort(
        self, reason: str, alert: AlertDescription | None = AlertDescription.INTERNAL_ERROR
    ) -> list[Event]:
        """Our side failed (``reason``): a fatal ``alert`` ends the session;
        ``alert`` None when nothing the peer could read may be sent (our
        KeyUpdate is out but our next key did not install)."""
        if not self._fail(LocalProtocolError(reason)):
            return []
        if alert is None:
            self._close_tx()
            return []
        return self._fatal(alert)

    def connection_lost(self, reason: str) -> None:
        """The transport failed under us (a reset): the peer's doing, and no
        alert can reach it."""
        self._fail(RemoteProtocolError(reason, None))
        self._close_tx()

    # -- endings ---------------------------------------------------------

    def _interleaved(self) -> list[Event]:
        # RFC 8446 5.1: a fragmented handshake message must not be interleaved
        # with other record types (TLS 1.2 has no such rule; OpenSSL allows it).
        return self._violation(
            AlertDescription.UNEXPECTED_MESSAGE,
            "record interleaved with a fragmented handshake message",
        )

    def _violation(self, alert: AlertDescription, reason: str) -> list[Event]:
        if not self._fail(RemoteProtocolError(reason, alert)):
            return []
        return self._fatal(alert)

    def _fatal(self, alert: AlertDescription) -> list[Event]:
        self._hs.clear()
        if not self._close_tx():  # nothing is sent after our close_notify
            return []
        return [SendAlert(alert, AlertLevel.FATAL)]

    def _fail(self, error: SessionError) -> bool:
        """Record why the session ended; False if it had ended already."""
        with self._lock:
            if self.failure is not None:
                return False
            self.failure = error
            return True

    def _close_tx(self) -> bool:
        """Close our direction; False if it was closed already."""
        with self._lock:
            if self.tx_closed:
                return False
            self.tx_closed = True
            return True


_E = TypeVar("_E", AlertLevel, AlertDescription)


def _code(enum: type[_E], value: int) -> _E | int:
    try:
        return enum(value)
    except ValueError:
        return value
