"""The TLS protocol after the handshake, without I/O.

:class:`Session` (``protocol.py``) takes whole records and layer errors and
returns events (``events.py``); ``codes.py`` names the wire code points,
``keys.py`` advances the TLS 1.3 traffic secrets.  ``channel.py`` is the
I/O shell that performs the events (``KtlsChannel``); it is not imported
here, so the machine stays usable without the socket layer.
"""

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
from tlsctl.session.protocol import (
    LAYER_ALERTS,
    MAX_WARNINGS,
    LocalProtocolError,
    RemoteProtocolError,
    Session,
    SessionError,
    layer_alert,
)

__all__ = [
    "LAYER_ALERTS",
    "MAX_WARNINGS",
    "AlertDescription",
    "AlertLevel",
    "ContentType",
    "Event",
    "HandshakeType",
    "InstallRxKey",
    "InstallTxKey",
    "KeyUpdateReceived",
    "KeyUpdateRequest",
    "LocalProtocolError",
    "PeerAlert",
    "PeerClosed",
    "RemoteProtocolError",
    "RenegotiationRefused",
    "ResumeRx",
    "SendAlert",
    "SendKeyUpdate",
    "SendRecord",
    "Session",
    "SessionError",
    "TicketIgnored",
    "alert_name",
    "handshake_name",
    "layer_alert",
]
