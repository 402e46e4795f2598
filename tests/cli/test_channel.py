"""``KtlsChannel`` on both ends of a socketpair (real pyOpenSSL handshake,
both record layers in ``offload``): KeyUpdate in both directions with the
layer's rekey counters, TLS 1.3 half-close, alert counting."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload.uapi import SOL_TLS, TLS_SET_RECORD_TYPE
from tlsctl.certs import ephemeral_server_cert
from tlsctl.control import ControlServer, Registrar, query
from tlsctl.handshake import HandshakeResult, run_handshake
from tlsctl.session import AlertDescription, AlertLevel, ContentType
from tlsctl.session.channel import (
    Channel,
    ChannelError,
    ChannelTimeout,
    KtlsChannel,
    LocalError,
    OpenSSLChannel,
    PeerError,
    establish,
)
from tlsctl.tlsconf import TlsOptions, client_context, server_context

pytestmark = pytest.mark.timeout(60)
_CERT = ephemeral_server_cert()
SUITES_13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]


def _any_pair(
    version: str,
    suite: str | None = None,
    registrar: Registrar | None = None,
    socks: tuple[socket.socket, socket.socket] | None = None,
    offloads: tuple[str, str] = ("sw", "sw"),
) -> tuple[Channel, Channel]:
    """A connected pair (over ``socks``, default a socketpair) with the client's
    and the server's ``offloads``; the client is handed ``registrar``, the
    server nothing."""
    opts = TlsOptions(tls1_2=version == "1.2", tls1_3=version == "1.3", ciphersuites=suite)
    a, b = socks or socket.socketpair()
    for s in (a, b):
        s.settimeout(10)
    server_res: list[HandshakeResult] = []
    t = threading.Thread(
        target=lambda: server_res.append(
            run_handshake(
                b, server_context(opts, cert=_CERT.cert, key=_CERT.key), "server", exact=True
            )
        )
    )
    t.start()
    cres = run_handshake(a, client_context(opts, verify=False), "client", exact=True)
    t.join(10)
    client = establish(a, cres, offloads[0], lambda _m: None, registrar=registrar)
    server = establish(b, server_res[0], offloads[1], lambda _m: None)
    return client, server


def _pair(
    version: str,
    suite: str | None = None,
    registrar: Registrar | None = None,
    socks: tuple[socket.socket, socket.socket] | None = None,
) -> tuple[KtlsChannel, KtlsChannel]:
    """Both ends on the kTLS layer (``sw``)."""
    client, server = _any_pair(version, suite, registrar, socks)
    assert isinstance(client, KtlsChannel) and isinstance(server, KtlsChannel)
    return client, server


@pytest.fixture
def pair13() -> Iterator[tuple[KtlsChannel, KtlsChannel]]:
    c, s = _pair("1.3")
    yield c, s
    c.close()
    s.close()


@pytest.mark.parametrize("suite", SUITES_13)
def test_key_update_both_directions(suite: str) -> None:
    client, server = _pair("1.3", suite)
    try:
        server.send_all(b"ticket-flush")  # the client skips the server's 2 tickets here
        assert client.recv(100) == b"ticket-flush" and client.tickets == 2
        client.send_key_update(request=True)
        client.send_all(b"after-update")
        assert server.recv(100) == b"after-update"
        assert server.key_updates == 1 and server.key_updates_sent == 1  # answered
        server.send_all(b"reply")
        assert client.recv(100) == b"reply"
        assert client.key_updates == 1 and client.key_updates_sent == 1
        for ch in (client, server):
            st = ch.k.stats
            assert st["TlsTxRekeyOk"] == 1 and st["TlsRxRekeyOk"] == 1
            assert st["TlsTxRekeyError"] == 0 and st["TlsRxRekeyError"] == 0
            assert st["TlsRxRekeyReceived"] == 1
        # Sequence numbers restart with each new key.
        assert client.live_seqs() == (1, 1)
        assert server.live_seqs() == (1, 1)
    finally:
        client.close()
        server.close()


def test_key_update_every_splits_the_stream(pair13: tuple[KtlsChannel, KtlsChannel]) -> None:
    client, server = pair13
    client.key_update_every = 10000
    data = bytes(range(256)) * 400  # 102400 bytes: 10 updates
    t = threading.Thread(target=client.send_all, args=(data,))
    t.start()
    got = bytearray()
    while len(got) < len(data):
        got += server.recv(1 << 16)
    t.join(10)
    assert bytes(got) == data
    assert client.key_updates_sent == 10 and server.key_updates == 10


def test_tls13_close_notify_closes_one_direction(pair13: tuple[KtlsChannel, KtlsChannel]) -> None:
    """After the client's close_notify the server reads EOF but can still send."""
    client, server = pair13
    client.send_all(b"last words")
    client.close_notify()
    assert server.recv(100) == b"last words"
    assert server.recv(100) == b"" and server.peer_closed
    server.send_all(b"still talking")
    server.close_notify()
    assert client.recv(100) == b"still talking"
    assert client.recv(100) == b""


def test_key_update_refused_in_tls12() -> None:
    client, server = _pair("1.2")
    try:
        with pytest.raises(ChannelError, match=r"needs TLS 1\.3") as err:
            client.send_key_update()
        assert isinstance(err.value, LocalError)  # asked of us, not done to us
    finally:
        client.close()
        server.close()


def test_request_key_update_applies_at_next_send(pair13: tuple[KtlsChannel, KtlsChannel]) -> None:
    client, server = pair13
    server.request_key_update()
    assert server.key_updates_sent == 0
    server.send_all(b"x")
    assert server.key_updates_sent == 1
    assert client.recv(10) == b"x" and client.key_updates == 1


def test_small_reads_return_at_most_n(pair13: tuple[KtlsChannel, KtlsChannel]) -> None:
    """recv(n) below a record's size: whole control records are still read
    (the session needs record ends), data comes back n bytes at a time."""
    client, server = pair13
    server.send_all(b"0123456789" * 100)  # after the tickets: the client skips them
    got = bytearray()
    while len(got) < 1000:
        chunk = client.recv(7)
        assert 0 < len(chunk) <= 7
        got += chunk
    assert bytes(got) == b"0123456789" * 100 and client.tickets == 2
    assert client.recv(0) == b""


def test_close_answers_the_peers_close_notify(pair13: tuple[KtlsChannel, KtlsChannel]) -> None:
    """A channel closed after the peer's close_notify sends its own first
    (the handler need not have done it)."""
    client, server = pair13
    client.close_notify()
    assert server.recv(100) == b"" and server.peer_closed and not server.tx_closed
    server.close()
    assert client.recv(100) == b"" and client.peer_closed


def test_no_close_notify_after_a_cut_send(
    pair13: tuple[KtlsChannel, KtlsChannel], tmp_path: Path
) -> None:
    """A send that did not finish (here: the file ended before ``count``)
    leaves the stream cut: close() then sends no close_notify, even after
    the peer's, so the peer cannot take the stream for complete."""
    client, server = pair13
    server.close_notify()
    assert client.recv(100) == b"" and client.peer_closed
    short = tmp_path / "short.bin"
    short.write_bytes(b"only ten b")
    with short.open("rb") as f:
        assert client.send_file(f, 0, 100) == 10
    client.close()
    server.k.settimeout(5)
    assert server.recv(100) == b"only ten b"
    assert server.recv(100) == b""  # EOF ...
    assert not server.peer_closed  # ... without close_notify


def test_only_a_channel_handed_a_registrar_is_listed(
    tmp_path: Path, tcp_pair: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    """Registration with the control socket is explicit: while a control
    server runs, the channel given it is listed (until it closes), the
    other end of the same process, given none, is not."""
    ctl = tmp_path / "ctl.sock"
    srv = ControlServer.start(ctl, argv=["test"])
    try:
        client, server = _pair("1.3", registrar=srv, socks=tcp_pair())
        try:
            client.send_all(b"x" * 100)
            assert server.recv(100) == b"x" * 100
            [c] = query(ctl)["connections"]
            assert (c["label"], c["cipher_suite"]) == ("client", client.res.cipher_name)
            assert c["tx_conf"] == "sw" and c["tx_rec_seq"] == client.live_seqs()[0]
            assert c["tx_crypto"]["key"] == "redacted"
        finally:
            client.close()
            server.close()
        assert query(ctl)["connections"] == []
    finally:
        srv.stop()


def _fatal_alert(chan: KtlsChannel, desc: AlertDescription) -> None:
    """A fatal alert record from ``chan``, as a misbehaving peer sends one."""
    chan.k.sendmsg(
        [bytes((AlertLevel.FATAL, desc))],
        [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes((ContentType.ALERT,)))],
    )


@pytest.mark.parametrize("client_offload", ["sw", "none"])
def test_the_peers_fatal_alert_is_a_peer_error_naming_it(client_offload: str) -> None:
    """Local and remote apart at the channel: the peer's fatal alert is a
    PeerError that names the alert, on the kTLS layer and in pyOpenSSL alike."""
    client, server = _any_pair("1.3", offloads=(client_offload, "sw"))
    assert isinstance(server, KtlsChannel)
    try:
        server.send_all(b"first")
        assert client.recv(100) == b"first"
        _fatal_alert(server, AlertDescription.HANDSHAKE_FAILURE)
        with pytest.raises(PeerError, match="peer sent fatal alert: handshake_failure") as err:
            client.recv(100)
        assert err.value.alert == "handshake_failure"
        if isinstance(client, KtlsChannel):
            assert client.alert_received == AlertDescription.HANDSHAKE_FAILURE
            assert client.alert_sent is None  # nothing to answer a fatal alert with
    finally:
        client.close()
        server.close()


def test_a_protocol_violation_is_the_peers_and_names_no_alert_of_its() -> None:
    """A record the session refuses is the peer's doing (PeerError); the
    alert went from us to it, so ``alert`` (the peer's) stays None."""
    client, server = _pair("1.3")
    try:
        server.k.sendmsg(
            [b"\x00"], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes((ContentType.CHANGE_CIPHER_SPEC,)))]
        )
        with pytest.raises(PeerError) as err:
            client.recv(100)
        assert err.value.alert is None
        assert client.alert_sent == AlertDescription.UNEXPECTED_MESSAGE
    finally:
        client.close()
        server.close()


def test_no_warning_alert_after_our_close_notify() -> None:
    """The reading thread's session asks for no_renegotiation (a HelloRequest
    came while our side was open); the sending thread's close_notify goes
    out before the warning is performed.  Nothing may follow close_notify:
    the peer reads close_notify and then EOF, not the warning (before the
    fix, 1 run in 4 of ``test_hostile_server[hello_request_ignored]``)."""
    client, server = _pair("1.2")
    try:
        events = client.session.receive_record(
            ContentType.HANDSHAKE, memoryview(b"\x00\x00\x00\x00")
        )
        assert any(
            getattr(ev, "description", None) == AlertDescription.NO_RENEGOTIATION for ev in events
        )
        client.close_notify()
        client._perform(events)
        client.k.sock.shutdown(socket.SHUT_WR)
        got = []
        while True:
            buf = bytearray(64)
            n, anc, _flags, _addr = server.k.recvmsg_into([buf], socket.CMSG_SPACE(1))
            if not n:
                break
            got.append((anc[0][2][0] if anc else ContentType.APPLICATION_DATA, bytes(buf[:n])))
        assert got == [(ContentType.ALERT, bytes((AlertLevel.WARNING, 0)))]
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("client_offload", ["sw", "none"])
def test_a_read_that_times_out_is_a_channel_timeout(client_offload: str) -> None:
    """Nothing to read within the socket timeout: ChannelTimeout from both
    channels (pyOpenSSL's used to let the socket's TimeoutError through)."""
    client, server = _any_pair("1.2", offloads=(client_offload, "sw"))
    try:
        if isinstance(client, KtlsChannel):
            client.k.settimeout(0.2)
        else:
            assert isinstance(client, OpenSSLChannel) and client.offload == "none"
            client.sock.settimeout(0.2)
        with pytest.raises(ChannelTimeout, match="receive timed out"):
            client.recv(100)
    finally:
        client.close()
        server.close()


def test_an_offload_the_suite_rules_out_is_a_local_error() -> None:
    """``--offload sw`` with a suite the layer has no cipher for: ours to
    say (LocalError), before anything is sent."""
    opts = TlsOptions(tls1_2=True, cipher="ECDHE-ECDSA-AES128-SHA")
    a, b = socket.socketpair()
    server_res: list[HandshakeResult] = []
    t = threading.Thread(
        target=lambda: server_res.append(
            run_handshake(
                b, server_context(opts, cert=_CERT.cert, key=_CERT.key), "server", exact=True
            )
        )
    )
    t.start()
    cres = run_handshake(a, client_context(opts, verify=False), "client", exact=True)
    t.join(10)
    try:
        with pytest.raises(LocalError, match="--offload sw"):
            establish(a, cres, "sw", lambda _m: None)
    finally:
        a.close()
        b.close()
