"""tlsctl.handshake: the handoff from pyOpenSSL to the kTLS layer.

The peer is Python's ``ssl`` module (an independent OpenSSL binding driven
differently), in a thread on loopback.  What is checked is what breaks
silently when wrong: the TX/RX sequence numbers at handoff (TLS 1.3 server
tickets count), ciphertext read past the handshake reaching the layer, and
secrets staying out of reprs.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable

import pytest

from tests.helpers.peers import Pki, make_pki
from tlsctl.handshake import (
    HandshakeError,
    RecordBuffer,
    _EpochCounter,
    install_offload,
    run_handshake,
)
from tlsctl.offloadmode import open_layer
from tlsctl.session.channel import ChannelError, KtlsChannel, OpenSSLChannel, establish
from tlsctl.tlsconf import TlsOptions, client_context, server_context

pytestmark = pytest.mark.timeout(60)

CASES = [
    (ssl.TLSVersion.TLSv1_3, "TLS_AES_128_GCM_SHA256"),
    (ssl.TLSVersion.TLSv1_3, "TLS_AES_256_GCM_SHA384"),
    (ssl.TLSVersion.TLSv1_3, "TLS_CHACHA20_POLY1305_SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305"),
]


def case_id(c: tuple[ssl.TLSVersion, str]) -> str:
    return c[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def pair(
    tcp_pair: Callable[[], tuple[socket.socket, socket.socket]],
) -> Callable[[], tuple[socket.socket, socket.socket]]:
    """Loopback TCP pairs (the shared ``tcp_pair`` fixture)."""
    return tcp_pair


def py_ctx(server: bool, pki: Pki, version: ssl.TLSVersion, suite: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = version
    if version == ssl.TLSVersion.TLSv1_2:
        ctx.set_ciphers(suite)
    if server:
        ctx.load_cert_chain(pki.cert, pki.key)
    else:
        ctx.load_verify_locations(pki.ca)
    return ctx


def our_opts(version: ssl.TLSVersion, suite: str) -> TlsOptions:
    if version == ssl.TLSVersion.TLSv1_3:
        return TlsOptions(tls1_3=True, ciphersuites=suite)
    return TlsOptions(tls1_2=True, cipher=suite)


class Runner(threading.Thread):
    """Run ``fn`` in a thread; ``result()`` re-raises its exception."""

    def __init__(self, fn: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.value: object = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def result(self, timeout: float = 20) -> object:
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError("peer thread did not finish")
        if self.error is not None:
            raise self.error
        return self.value


def memory_bio_client(sock: socket.socket, ctx: ssl.SSLContext, payload: bytes, want: int) -> bytes:
    """A Python ssl client that sends its last handshake flight *and* the
    first application data in one write, so the server reads past the
    handshake in a single recv (the case the record-at-a-time feed exists for)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            if out.pending:
                sock.sendall(out.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed during handshake") from None
            inc.write(data)
    obj.write(payload)
    sock.sendall(out.read())
    got = bytearray()
    while len(got) < want:
        try:
            got += obj.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                break
            inc.write(data)
    return bytes(got)


@pytest.mark.parametrize("exact", [False, True], ids=["chunked-reads", "exact-reads"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_server_handoff(
    pki: Pki,
    pair: Callable[[], tuple[socket.socket, socket.socket]],
    case: tuple[ssl.TLSVersion, str],
    exact: bool,
) -> None:
    """Our server: RX gets the client's coalesced data, TX follows the tickets.

    Chunked reads take the data past the handshake out of the socket and hand
    it over with inject_rx; exact reads (for the kernel) leave it there."""
    version, suite = case
    c, s = pair()
    payload, reply = os.urandom(5000), os.urandom(70000)
    peer = Runner(
        lambda: memory_bio_client(c, py_ctx(False, pki, version, suite), payload, len(reply))
    )
    ctx = server_context(our_opts(version, suite), cert=str(pki.cert), key=str(pki.key))
    res = run_handshake(s, ctx, "server", exact=exact)
    assert res.cipher_name == suite
    if exact:
        assert res.leftover == b""
    if version == ssl.TLSVersion.TLSv1_3:
        assert (res.tx_seq, res.rx_seq) == (2, 0)  # two NewSessionTickets sent
        if not exact:
            assert res.leftover, "client Finished and data should arrive together"
    else:
        assert (res.tx_seq, res.rx_seq) == (1, 1)
    k = install_offload(open_layer(s, "sw"), res)
    got = bytearray()
    while len(got) < len(payload):
        chunk = k.recv(65536)
        assert chunk
        got += chunk
    assert bytes(got) == payload
    k.sendall(reply)
    assert peer.result() == reply
    k.close()


def delaying_proxy(upstream: tuple[str, int]) -> tuple[int, Callable[[], None]]:
    """A TCP relay that holds server->client bytes until the server has been
    quiet for 50 ms, so the end of the handshake and the first records after
    it reach the client in one piece."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    stop = threading.Event()

    def run() -> None:
        ls.settimeout(10)
        try:
            cl, _ = ls.accept()
        except OSError:
            return
        up = socket.create_connection(upstream)
        held = bytearray()
        with cl, up:
            while not stop.is_set():
                r, _, _ = select.select([cl, up], [], [], 0.05)
                if not r and held:
                    cl.sendall(held)
                    held.clear()
                if cl in r:
                    d = cl.recv(65536)
                    if not d:
                        break
                    up.sendall(d)
                if up in r:
                    d = up.recv(65536)
                    if not d:
                        cl.sendall(held)
                        break
                    held += d

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def close() -> None:
        stop.set()
        t.join(5)
        ls.close()

    return ls.getsockname()[1], close


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_client_handoff(pki: Pki, case: tuple[ssl.TLSVersion, str]) -> None:
    """Our client: data the server sends right after the handshake (TLS 1.3:
    after two tickets) arrives intact through the layer."""
    version, suite = case
    payload = os.urandom(40000)
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        sctx = py_ctx(True, pki, version, suite)

        def server() -> bytes:
            ls.settimeout(10)
            raw, _ = ls.accept()
            with sctx.wrap_socket(raw, server_side=True) as tls:
                tls.sendall(payload)
                got = tls.recv(100)
                with contextlib.suppress(OSError):
                    tls.unwrap()
                return got

        peer = Runner(server)
        port, close_proxy = delaying_proxy(ls.getsockname())
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            ctx = client_context(TlsOptions(cafile=str(pki.ca)), verify=True)
            res = run_handshake(
                sock, ctx, "client", server_name="localhost", verify_host="localhost"
            )
            assert (res.tx_seq, res.rx_seq) == ((0, 0) if res.is_tls13 else (1, 1))
            if not res.is_tls13:
                assert res.leftover, "server data should have been read with its Finished"
            chan = establish(sock, res, "sw", lambda m: None)
            assert isinstance(chan, KtlsChannel)
            got = bytearray()
            while len(got) < len(payload):
                chunk = chan.recv(65536)
                assert chunk
                got += chunk
            assert bytes(got) == payload
            assert chan.tickets == (2 if res.is_tls13 else 0)
            chan.send_all(b"thanks")
            chan.close_notify()
            assert peer.result() == b"thanks"
            assert chan.recv(100) == b"" and chan.peer_closed  # its close_notify
            chan.close()
        finally:
            close_proxy()


def test_unsupported_suite_stays_in_pyopenssl(
    pki: Pki, pair: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    c, s = pair()
    sctx = py_ctx(True, pki, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA")

    def server() -> bytes:
        with sctx.wrap_socket(s, server_side=True) as tls:
            data = tls.recv(100)
            tls.sendall(data.upper())
            return data

    peer = Runner(server)
    ctx = client_context(TlsOptions(tls1_2=True, cipher="ECDHE-ECDSA-AES128-SHA"), verify=False)
    res = run_handshake(c, ctx, "client")
    assert res.suite is None and res.tx_info is None
    assert res.unsupported_reason and "cannot be offloaded" in res.unsupported_reason
    with pytest.raises(ChannelError, match="--offload sw"):
        establish(c, res, "sw", lambda m: None)
    warnings: list[str] = []
    chan = establish(c, res, "auto", warnings.append)
    assert isinstance(chan, OpenSSLChannel) and "stays in pyOpenSSL" in warnings[0]
    chan.send_all(b"hello")
    assert chan.recv(100) == b"HELLO"
    assert peer.result() == b"hello"


def test_secrets_redacted_and_keylog(
    pki: Pki, pair: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    c, s = pair()
    lines: list[bytes] = []
    sctx = py_ctx(True, pki, ssl.TLSVersion.TLSv1_3, "")
    peer = Runner(lambda: sctx.wrap_socket(s, server_side=True).close())
    res = run_handshake(
        c, client_context(TlsOptions(), verify=False), "client", keylog=lines.append
    )
    peer.result()
    labels = {ln.split()[0] for ln in lines}
    assert {b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0"} <= labels
    text = repr(res) + repr(res.tx_info) + repr(res.rx_info)
    for secret in (res.tx_secret, res.rx_secret):
        assert secret.hex() not in text and secret.hex() not in str(res.__dict__.get("x", ""))
    assert res.tx_info is not None and res.tx_info.key.hex() not in text


def test_record_buffer() -> None:
    rb = RecordBuffer()
    rb.feed(bytes.fromhex("1603030002aabb17030300"))
    assert rb.next_record() == bytes.fromhex("1603030002aabb")
    assert rb.next_record() is None  # header incomplete
    rb.feed(b"\x01c")
    assert rb.next_record() == bytes.fromhex("170303000163")
    rb.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(HandshakeError, match="not TLS"):
        rb.next_record()
    big = RecordBuffer()
    big.feed(bytes.fromhex("16030350ff"))
    with pytest.raises(HandshakeError, match="oversized"):
        big.next_record()


def test_epoch_counter_counts_records_after_ccs() -> None:
    """TX side of the TLS 1.2 count (OpenSSL never splits its own Finished,
    so the peers in test_finished_fragments.py exercise only RX): every
    record after our last CCS, however the output is cut into drains."""
    out = (
        bytes.fromhex("16030300020000")  # a handshake record before the CCS
        + bytes.fromhex("140303000101")  # ChangeCipherSpec
        + bytes.fromhex("1603030003aaaaaa") * 3  # a Finished in three records
        + bytes.fromhex("15030300020000")
    )  # and an alert, also under the new keys
    for cut in range(len(out) + 1):
        c = _EpochCounter()
        c.written(out[:cut])
        c.written(out[cut:])
        assert c.next_seq("sent") == 4
    none = _EpochCounter()
    none.written(bytes.fromhex("16030300020000"))
    with pytest.raises(HandshakeError, match="without a Finished"):
        none.next_seq("sent")


def test_handshake_failures(
    pair: Callable[[], tuple[socket.socket, socket.socket]], pki: Pki
) -> None:
    ctx = client_context(TlsOptions(), verify=False)
    c, s = pair()
    s.close()
    with pytest.raises(HandshakeError, match="closed the connection during the handshake"):
        run_handshake(c, ctx, "client")
    c, s = pair()
    with pytest.raises(HandshakeError, match="timed out"):
        run_handshake(c, ctx, "client", timeout=0.3)
    # A server whose certificate does not match the name we check.
    c, s = pair()
    sctx = py_ctx(True, pki, ssl.TLSVersion.TLSv1_3, "")
    peer = Runner(lambda: sctx.wrap_socket(s, server_side=True))
    vctx = client_context(TlsOptions(cafile=str(pki.ca)), verify=True)
    with pytest.raises(HandshakeError, match="certificate verify failed"):
        run_handshake(c, vctx, "client", server_name="other.example", verify_host="other.example")
    with pytest.raises(ssl.SSLError):
        peer.result()


def test_verify_ip_address(
    pki: Pki, pair: Callable[[], tuple[socket.socket, socket.socket]]
) -> None:
    c, s = pair()
    sctx = py_ctx(True, pki, ssl.TLSVersion.TLSv1_3, "")
    peer = Runner(lambda: sctx.wrap_socket(s, server_side=True).close())
    vctx = client_context(TlsOptions(cafile=str(pki.ca)), verify=True)
    res = run_handshake(c, vctx, "client", verify_host="127.0.0.1")
    peer.result()
    assert res.is_tls13


def test_ephemeral_cert_is_usable() -> None:
    from tlsctl.certs import ephemeral_server_cert

    ck = ephemeral_server_cert()
    assert server_context(TlsOptions(), cert=ck.cert, key=ck.key) is not None
    assert len(ck.fingerprint.split(":")) == 32
