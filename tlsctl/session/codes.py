"""Wire code points of the post-handshake protocol, as ``IntEnum``\\ s.

Alert levels and descriptions (RFC 8446 6, RFC 5246 7.2), handshake message
types (RFC 8446 4 and B.3, with the TLS 1.2 ones a peer may still send) and
the KeyUpdate request values.  Record content types are the layer's
(:class:`offload.uapi.ContentType`).  ``alert_name`` and ``handshake_name``
give the names users see, also for code points no enum member has.
"""

from __future__ import annotations

from enum import IntEnum

from offload.uapi import ContentType

__all__ = [
    "AlertDescription",
    "AlertLevel",
    "ContentType",
    "HandshakeType",
    "KeyUpdateRequest",
    "alert_name",
    "handshake_name",
]


class AlertLevel(IntEnum):
    """RFC 5246 7.2 ``AlertLevel``; TLS 1.3 ignores it for every alert but
    close_notify and user_canceled (RFC 8446 6)."""

    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    """RFC 8446 6 ``AlertDescription`` (plus the TLS 1.2 ones still met)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    NO_CERTIFICATE = 41
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110
    UNRECOGNIZED_NAME = 112
    BAD_CERTIFICATE_STATUS_RESPONSE = 113
    UNKNOWN_PSK_IDENTITY = 115
    CERTIFICATE_REQUIRED = 116
    NO_APPLICATION_PROTOCOL = 120


class HandshakeType(IntEnum):
    """RFC 8446 B.3 ``HandshakeType`` and the TLS 1.2 messages (RFC 5246 7.4)."""

    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    NEW_SESSION_TICKET = 4
    END_OF_EARLY_DATA = 5
    ENCRYPTED_EXTENSIONS = 8
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20
    CERTIFICATE_STATUS = 22
    KEY_UPDATE = 24
    MESSAGE_HASH = 254


class KeyUpdateRequest(IntEnum):
    """RFC 8446 4.6.3 ``KeyUpdateRequest``."""

    UPDATE_NOT_REQUESTED = 0
    UPDATE_REQUESTED = 1


def alert_name(description: int) -> str:
    """``bad_record_mac`` for 20; ``alert 201`` for a code point RFC 8446 lacks."""
    try:
        return AlertDescription(description).name.lower()
    except ValueError:
        return f"alert {description}"


def handshake_name(msg_type: int) -> str:
    """``key_update`` for 24; ``type 238`` for an unknown message type."""
    try:
        return HandshakeType(msg_type).name.lower()
    except ValueError:
        return f"type {msg_type}"
