"""The post-handshake state machine (``tlsctl.session``) without sockets.

The hostile-peer table of ``test_hostile_peers.py`` (whose every row is
also ``openssl s_server``'s answer) runs here with no process or socket
(about 10 s for all 63 rows, the two floods of 30000 records most of it,
against minutes through ``tlsctl serve``): the same
records, sealed with a test key, go through the layer's sans-I/O receive
context (``offload.tls_sw.SwRx``, as the socket layer drives it) into a
``Session``; the events it returns are performed the way ``KtlsChannel``
performs them.  Then the client side (what a hostile server may send), and
the machine's own rules one by one.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from offload.errors import NoContentType, OuterTypeMismatch, ShortRecord, abort_error
from offload.keys import Suite, crypto_info_tls13, tls13_next_secret
from offload.tls_sw import RxRecord, SwRx
from offload.uapi import TLS_1_2_VERSION, CipherType, CryptoInfo
from tests.interop import test_hostile_peers as hostile
from tests.interop.test_hostile_peers import ALERT, DATA, HANDSHAKE, KEY_UPDATE, RecordWriter
from tlsctl.session import (
    AlertDescription,
    AlertLevel,
    HandshakeType,
    InstallRxKey,
    InstallTxKey,
    KeyUpdateReceived,
    LocalProtocolError,
    PeerAlert,
    PeerClosed,
    RemoteProtocolError,
    RenegotiationRefused,
    ResumeRx,
    SendAlert,
    SendKeyUpdate,
    SendRecord,
    Session,
    TicketIgnored,
    layer_alert,
)
from tlsctl.session.events import Event

SUITE = Suite.TLS_AES_128_GCM_SHA256
CLOSE = SendAlert(AlertDescription.CLOSE_NOTIFY, AlertLevel.WARNING)
NST = b"\x04\x00\x00\x0a" + bytes(range(10))  # a (content-free) NewSessionTicket


class SansIoPeer(RecordWriter):
    """The hostile peer of ``test_hostile_peers`` with a test key, no socket."""

    def __init__(self, version: str) -> None:
        if version == "1.3":
            self.suite = SUITE
            self.secret = os.urandom(32)
            self.tx = crypto_info_tls13(self.secret, SUITE, 0)
        else:
            self.suite, self.secret = None, b""
            self.tx = CryptoInfo.create(
                TLS_1_2_VERSION,
                CipherType.AES_GCM_128,
                key=os.urandom(16),
                iv=os.urandom(8),
                salt=os.urandom(4),
                seq=1,
            )
        self.seq = self.tx.seq


class Host:
    """The receiving end: the layer's RX context and a ``Session``, with the
    shell's part done inline (as ``KtlsChannel`` does it over a socket)."""

    def __init__(self, side: str, peer: SansIoPeer) -> None:
        tls13 = peer.suite is not None
        self.rx = SwRx(peer.tx)
        self.session = Session(
            "server" if side == "server" else "client",
            tls13=tls13,
            suite=peer.suite,
            rx_secret=peer.secret,
            tx_secret=os.urandom(32) if tls13 else b"",
        )
        self.data = bytearray()
        self.events: list[Event] = []
        self.resumed = 0

    @property
    def alerts(self) -> list[SendAlert]:
        return [e for e in self.events if isinstance(e, SendAlert)]

    @property
    def fatal(self) -> list[int]:
        return [a.description for a in self.alerts if a.level == AlertLevel.FATAL]

    def feed(self, wire: bytes, eof: bool = False) -> None:
        self.rx.feed(wire)
        s = self.session
        while s.failure is None and not s.peer_closed:
            try:
                rec = self.rx.decrypt_next()
            except OSError as exc:  # the socket layer's recvmsg raises it
                self._do(s.layer_error(exc))
                continue
            if rec is None:
                if not self.rx.key_update_pending:
                    break
                self._do(s.layer_error(OSError(errno.EKEYEXPIRED, "waiting for the next RX key")))
                continue
            assert isinstance(rec, RxRecord)
            self.rx.ready.popleft()
            if rec.content_type == DATA and not rec.data:
                continue  # recvmsg never returns an empty data record
            events = s.receive_record(rec.content_type, rec.data)
            if rec.content_type == DATA and s.failure is None:
                self.data += rec.data  # the shell returns data only if all is well
            self._do(events)
        if eof and s.failure is None and not s.peer_closed:
            self._do(s.receive_eof(truncated=self.rx.parser.buffered > 0))

    def _do(self, events: list[Event]) -> None:
        for ev in events:
            self.events.append(ev)
            if isinstance(ev, InstallRxKey):
                self.rx.rekey(ev.info)  # setsockopt(TLS_RX): a TLS 1.3 rekey
            elif isinstance(ev, ResumeRx):
                self.rx.rekey(self.rx.live_info())  # getsockopt, then the same back
                self.resumed += 1
            elif isinstance(ev, SendKeyUpdate):
                self._do(self.session.key_update(ev.update_requested))


# -- the hostile-peer table, against the server side ---------------------------------


@pytest.mark.parametrize(("case", "version"), hostile.PARAMS)
def test_hostile_table(case: hostile.Case, version: str) -> None:
    peer = SansIoPeer(version)
    host = Host("server", peer)
    wire = case.build(peer)
    if case.one_byte_writes:
        for i in range(len(wire)):
            host.feed(wire[i : i + 1])
    else:
        host.feed(wire)
    host.feed(b"", eof=case.shut_wr)
    s = host.session
    assert host.fatal == ([] if case.alert is None else [case.alert]), host.events
    if case.warning is not None:
        assert SendAlert(AlertDescription(case.warning), AlertLevel.WARNING) in host.alerts
    if case.error is None:
        assert s.failure is None and s.peer_closed
        assert s.finish() == [CLOSE] and s.finish() == []  # answered once
    else:
        assert s.failure is not None and case.error in str(s.failure), s.failure
        assert s.finish() == []
    assert bytes(host.data) == case.saved


def test_fragmented_key_update_resumes_rx_under_the_same_key() -> None:
    """The layer pauses at the first fragment (it starts with 24); the
    session answers the pause with ResumeRx, the next key only once the
    KeyUpdate ends a record."""
    peer = SansIoPeer("1.3")
    host = Host("server", peer)
    old_rx = host.rx.live_info()
    host.feed(peer.record(HANDSHAKE, KEY_UPDATE[:2]))
    assert host.resumed == 1 and host.rx.live_info().key == old_rx.key
    host.feed(peer.record(HANDSHAKE, KEY_UPDATE[2:]) + peer.rekey() + peer.record(DATA, b"x"))
    assert [type(e) for e in host.events] == [ResumeRx, KeyUpdateReceived, InstallRxKey]
    assert bytes(host.data) == b"x" and host.session.key_updates_received == 1


# -- the client side: what a server may send after the handshake ------------------------


def _client(version: str = "1.3") -> tuple[SansIoPeer, Host]:
    peer = SansIoPeer(version)
    return peer, Host("client", peer)


def test_tickets_whole_fragmented_and_coalesced() -> None:
    peer, host = _client()
    host.feed(
        hostile._hs(peer, NST)  # whole
        + hostile._hs(peer, NST[:3], NST[3:9], NST[9:])  # in three records
        + hostile._hs(peer, NST * 2)  # two in one record
        + peer.record(DATA, b"after tickets")
    )
    assert host.session.tickets == 4 and host.session.failure is None
    assert [type(e) for e in host.events] == [TicketIgnored] * 4
    assert bytes(host.data) == b"after tickets"


def test_ticket_fragment_that_starts_with_24_pauses_and_resumes() -> None:
    """A middle fragment whose first byte happens to be 24 makes the layer
    pause (it looks at that byte only); nothing else changes."""
    body = bytes([0x18]) * 10
    msg = b"\x04\x00\x00\x0a" + body
    peer, host = _client()
    host.feed(hostile._hs(peer, msg[:4], msg[4:]) + peer.record(DATA, b"on"))
    assert host.resumed == 1 and host.session.tickets == 1 and bytes(host.data) == b"on"


def test_ticket_and_key_update_in_one_record() -> None:
    """The KeyUpdate ends the record but the record began with a ticket: the
    layer did not pause, and the next key is installed before the next read."""
    peer, host = _client()
    host.feed(hostile._hs(peer, NST + KEY_UPDATE) + peer.rekey() + peer.record(DATA, b"new key"))
    assert [type(e) for e in host.events] == [TicketIgnored, KeyUpdateReceived, InstallRxKey]
    assert host.resumed == 0 and bytes(host.data) == b"new key"


def test_key_update_requested_is_answered() -> None:
    peer, host = _client()
    host.feed(hostile._hs(peer, b"\x18\x00\x00\x01\x01"))
    kinds = [type(e) for e in host.events]
    assert kinds == [KeyUpdateReceived, InstallRxKey, SendKeyUpdate, SendRecord, InstallTxKey]
    assert host.events[3] == SendRecord(HANDSHAKE, b"\x18\x00\x00\x01\x00")
    assert host.session.key_updates_sent == 1


def test_key_update_request_after_our_close_notify_is_not_answered() -> None:
    peer, host = _client()
    assert host.session.close() == [CLOSE]
    host.feed(hostile._hs(peer, b"\x18\x00\x00\x01\x01"))
    assert [type(e) for e in host.events] == [KeyUpdateReceived, InstallRxKey]


@pytest.mark.parametrize(
    ("version", "records", "alert", "error"),
    [
        ("1.2", [b"\x00\x00\x00\x00"], None, None),
        ("1.2", [b"\x00\x00", b"\x00\x00"], None, None),
        (
            "1.2",
            [b"\x00\x00\x00\x01\x00"],
            AlertDescription.DECODE_ERROR,
            "HelloRequest with a body",
        ),
        ("1.2", [NST], AlertDescription.UNEXPECTED_MESSAGE, "new_session_ticket"),
        ("1.3", [b"\x00\x00\x00\x00"], AlertDescription.UNEXPECTED_MESSAGE, "hello_request"),
        ("1.3", [hostile.CERT_REQUEST], AlertDescription.UNEXPECTED_MESSAGE, "certificate_request"),
        (
            "1.3",
            [b"\x04\x02\x01\x0b"],
            AlertDescription.ILLEGAL_PARAMETER,
            "new_session_ticket of 131339 bytes",
        ),
    ],
    ids=[
        "hello_request",
        "hello_request_split",
        "hello_request_body",
        "nst_in_tls12",
        "hello_request_in_tls13",
        "certificate_request",
        "ticket_too_big",
    ],
)
def test_client_side_messages(
    version: str, records: list[bytes], alert: int | None, error: str | None
) -> None:
    peer, host = _client(version)
    host.feed(hostile._hs(peer, *records) + peer.record(DATA, b"x"))
    assert host.fatal == ([] if alert is None else [alert])
    if error is None:
        assert host.events == [
            RenegotiationRefused(HandshakeType.HELLO_REQUEST),
            SendAlert(AlertDescription.NO_RENEGOTIATION, AlertLevel.WARNING),
        ]
        assert bytes(host.data) == b"x"
    else:
        assert error in str(host.session.failure)


# -- the machine's own rules -----------------------------------------------------------


def _session(tls13: bool = True, side: str = "server") -> Session:
    secrets: dict[str, Any] = (
        {"suite": SUITE, "tx_secret": os.urandom(32), "rx_secret": os.urandom(32)} if tls13 else {}
    )
    return Session("server" if side == "server" else "client", tls13=tls13, **secrets)


@pytest.mark.parametrize(
    ("exc", "alert12", "alert13"),
    [
        (
            OSError(errno.EBADMSG, "bad tag"),
            AlertDescription.BAD_RECORD_MAC,
            AlertDescription.BAD_RECORD_MAC,
        ),
        (
            abort_error(errno.EMSGSIZE),
            AlertDescription.RECORD_OVERFLOW,
            AlertDescription.RECORD_OVERFLOW,
        ),
        (
            abort_error(errno.EINVAL),
            AlertDescription.PROTOCOL_VERSION,
            AlertDescription.DECODE_ERROR,
        ),
        (
            NoContentType(errno.EBADMSG, "no type"),
            AlertDescription.BAD_RECORD_MAC,
            AlertDescription.UNEXPECTED_MESSAGE,
        ),
        (
            OuterTypeMismatch(errno.EBADMSG, "outer", 22),
            AlertDescription.BAD_RECORD_MAC,
            AlertDescription.UNEXPECTED_MESSAGE,
        ),
        (
            OuterTypeMismatch(errno.EBADMSG, "outer", 23),
            AlertDescription.BAD_RECORD_MAC,
            AlertDescription.BAD_RECORD_MAC,
        ),
        (
            ShortRecord(errno.EBADMSG, "short", 20),
            AlertDescription.BAD_RECORD_MAC,
            AlertDescription.UNEXPECTED_MESSAGE,
        ),
        (
            ShortRecord(errno.EBADMSG, "short", 23),
            AlertDescription.BAD_RECORD_MAC,
            AlertDescription.BAD_RECORD_MAC,
        ),
    ],
    ids=[
        "ebadmsg",
        "emsgsize",
        "einval",
        "no_content_type",
        "outer_type",
        "outer_23",
        "short_ccs",
        "short_data",
    ],
)
def test_one_errno_to_alert_mapping(exc: OSError, alert12: int, alert13: int) -> None:
    for tls13, alert in ((False, alert12), (True, alert13)):
        found = layer_alert(exc, tls13)
        assert found is not None and found[0] == alert
        s = _session(tls13)
        assert s.layer_error(exc) == [SendAlert(AlertDescription(alert))]
        assert isinstance(s.failure, RemoteProtocolError) and s.failure.alert == alert


def test_errors_that_are_not_about_a_record_send_no_alert() -> None:
    s = _session()
    assert layer_alert(OSError(errno.EPIPE, "pipe"), True) is None
    assert s.layer_error(OSError(errno.EIO, "no cmsg room")) == []
    assert isinstance(s.failure, LocalProtocolError) and not s.tx_closed


def test_pause_with_no_key_update_is_our_fault() -> None:
    s = _session()
    assert s.layer_error(OSError(errno.EKEYEXPIRED, "paused")) == [
        SendAlert(AlertDescription.INTERNAL_ERROR)
    ]
    assert isinstance(s.failure, LocalProtocolError)


def test_remote_and_local_errors_apart() -> None:
    s = _session()
    assert s.receive_record(ALERT, b"\x02\x28") == [
        PeerAlert(AlertLevel.FATAL, AlertDescription.HANDSHAKE_FAILURE, fatal=True)
    ]
    assert isinstance(s.failure, RemoteProtocolError) and s.failure.alert is None
    assert str(s.failure) == "peer sent fatal alert: handshake_failure"
    with pytest.raises(LocalProtocolError):
        s.receive_record(DATA, b"more")
    s = _session()
    assert s.abort("our key would not install") == [SendAlert(AlertDescription.INTERNAL_ERROR)]
    assert isinstance(s.failure, LocalProtocolError) and s.abort("again") == []


def test_unknown_alert_code_point_is_named_by_number() -> None:
    s = _session()
    [ev] = s.receive_record(ALERT, b"\x02\xc9")
    assert isinstance(ev, PeerAlert) and ev.fatal and ev.description == 201
    assert str(s.failure) == "peer sent fatal alert: alert 201"


def test_close_notify_both_ways() -> None:
    s = _session()
    assert s.receive_record(ALERT, b"\x01\x00") == [PeerClosed()]
    assert s.peer_closed and not s.tx_closed
    assert s.finish() == [CLOSE] and s.tx_closed
    assert s.close() == [] and s.finish() == []


def test_nothing_is_sent_after_our_close_notify() -> None:
    s = _session()
    assert s.close() == [CLOSE]
    assert s.receive_record(99, b"x") == []  # a violation, but our side is closed
    assert isinstance(s.failure, RemoteProtocolError)
    assert s.failure.alert == AlertDescription.UNEXPECTED_MESSAGE


def test_cancel_closes_without_close_notify() -> None:
    s = _session()
    assert s.cancel() == [SendAlert(AlertDescription.USER_CANCELED, AlertLevel.WARNING)]
    assert s.tx_closed and s.close() == [] and s.cancel() == []


def test_peer_cancel_is_noted_and_reading_goes_on() -> None:
    s = _session()
    assert s.receive_record(ALERT, b"\x01\x5a") == [
        PeerAlert(AlertLevel.WARNING, AlertDescription.USER_CANCELED, fatal=False)
    ]
    assert s.peer_canceled and s.failure is None
    assert s.receive_record(DATA, b"x") == []


def test_our_key_update() -> None:
    s = _session()
    rec, install = s.key_update(request=True)
    assert rec == SendRecord(HANDSHAKE, b"\x18\x00\x00\x01\x01")
    assert isinstance(install, InstallTxKey) and install.info.seq == 0
    assert s.key_updates_sent == 1
    assert s.close() == [CLOSE]
    with pytest.raises(LocalProtocolError):
        s.key_update()
    with pytest.raises(LocalProtocolError, match=r"needs TLS 1\.3"):
        _session(tls13=False).key_update()


def test_key_update_derives_the_next_secret() -> None:
    rx = os.urandom(32)
    s = Session("client", tls13=True, suite=SUITE, tx_secret=os.urandom(32), rx_secret=rx)
    events = s.receive_record(HANDSHAKE, KEY_UPDATE)
    want = crypto_info_tls13(tls13_next_secret(rx, SUITE), SUITE, 0)
    assert events == [KeyUpdateReceived(False), InstallRxKey(want)]


def test_no_key_material_in_reprs() -> None:
    s = _session()
    _rec, install = s.key_update()
    assert isinstance(install, InstallTxKey)
    for text in (repr(install), repr(s), repr(s._secrets)):
        assert install.info.key.hex() not in text and "secret=b" not in text
    assert "info" not in repr(install)


def test_empty_data_record_counts_as_nothing() -> None:
    """recvmsg never returns one; fed anyway, it neither resets the warning
    count nor trips the interleaving rule."""
    s = _session()
    assert s.receive_record(HANDSHAKE, b"\x18\x00") == []
    assert s.receive_record(DATA, b"") == []
    assert s.failure is None
