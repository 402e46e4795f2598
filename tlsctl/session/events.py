"""What the post-handshake state machine reports, and what it asks the shell to do.

Small immutable objects, as h11's events.  Two kinds:

* what happened on the peer's side, for the caller to count or show:
  :class:`PeerClosed`, :class:`PeerAlert`, :class:`TicketIgnored`,
  :class:`KeyUpdateReceived`, :class:`RenegotiationRefused`;
* what the I/O shell must do now, in order, before it reads again:
  :class:`SendAlert`, :class:`SendRecord`, :class:`SendKeyUpdate`,
  :class:`InstallRxKey`, :class:`InstallTxKey`, :class:`ResumeRx`.

Key material travels in ``InstallRxKey``/``InstallTxKey`` only, kept out of
their ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from offload.uapi import CryptoInfo
from tlsctl.session.codes import AlertDescription, AlertLevel, HandshakeType, alert_name

__all__ = [
    "Event",
    "InstallRxKey",
    "InstallTxKey",
    "KeyUpdateReceived",
    "PeerAlert",
    "PeerClosed",
    "RenegotiationRefused",
    "ResumeRx",
    "SendAlert",
    "SendKeyUpdate",
    "SendRecord",
    "TicketIgnored",
]


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's close_notify: its direction is closed (TLS 1.3: ours is not)."""


@dataclass(frozen=True, slots=True)
class PeerAlert:
    """An alert from the peer other than close_notify.

    ``fatal`` is the machine's reading, not the level byte: in TLS 1.3 every
    alert but user_canceled ends the connection whatever its level says.
    ``description`` is an int when the code point is unknown.
    """

    level: AlertLevel | int
    description: AlertDescription | int
    fatal: bool

    @property
    def name(self) -> str:
        return alert_name(self.description)


@dataclass(frozen=True, slots=True)
class TicketIgnored:
    """A TLS 1.3 NewSessionTicket: counted and dropped (no resumption here)."""


@dataclass(frozen=True, slots=True)
class KeyUpdateReceived:
    """The peer switched its keys (RFC 8446 4.6.3); ``InstallRxKey`` follows."""

    update_requested: bool


@dataclass(frozen=True, slots=True)
class RenegotiationRefused:
    """TLS 1.2 renegotiation (HelloRequest / ClientHello) refused with a
    warning no_renegotiation; the connection goes on, as OpenSSL does."""

    message: HandshakeType


@dataclass(frozen=True, slots=True)
class SendAlert:
    """Put this alert on the wire.  A fatal one is the last thing we send."""

    description: AlertDescription
    level: AlertLevel = AlertLevel.FATAL

    @property
    def record(self) -> bytes:
        """The alert record's plaintext: level, description."""
        return bytes((self.level, self.description))

    @property
    def closes_tx(self) -> bool:
        """Does this alert close our direction (a fatal alert, close_notify,
        user_canceled)?  The session closes it when it asks for one; any
        other alert (a warning such as no_renegotiation) is asked for while
        our side is open and must not go out if it closed meanwhile."""
        return self.level == AlertLevel.FATAL or self.description in (
            AlertDescription.CLOSE_NOTIFY,
            AlertDescription.USER_CANCELED,
        )


@dataclass(frozen=True, slots=True)
class SendRecord:
    """Send one control record of ``content_type`` holding ``data``."""

    content_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SendKeyUpdate:
    """Send our KeyUpdate now (the answer to the peer's update_requested):
    the shell calls the machine's ``key_update`` under its TX lock."""

    update_requested: bool = False


@dataclass(frozen=True, slots=True)
class InstallRxKey:
    """``setsockopt(SOL_TLS, TLS_RX, info)``: the peer's next key, before the
    next record is read (a TLS 1.3 rekey)."""

    info: CryptoInfo = field(repr=False)


@dataclass(frozen=True, slots=True)
class InstallTxKey:
    """``setsockopt(SOL_TLS, TLS_TX, info)``: our next key, after the
    KeyUpdate record went out."""

    info: CryptoInfo = field(repr=False)


@dataclass(frozen=True, slots=True)
class ResumeRx:
    """The layer paused RX (EKEYEXPIRED) at a record that began with a
    KeyUpdate fragment, not a whole KeyUpdate: install the *live* RX key
    again (getsockopt then setsockopt of the same crypto_info), which ends
    the pause without changing keys.

    Linux's ``tls_check_pending_rekey`` looks at the first byte of a
    handshake record only, so a KeyUpdate split over records (legal, RFC
    8446 5.1, as long as it ends at a record boundary) pauses RX one record
    early.
    """


Event = (
    PeerClosed
    | PeerAlert
    | TicketIgnored
    | KeyUpdateReceived
    | RenegotiationRefused
    | SendAlert
    | SendRecord
    | SendKeyUpdate
    | InstallRxKey
    | InstallTxKey
    | ResumeRx
)
