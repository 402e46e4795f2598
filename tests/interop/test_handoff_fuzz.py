"""Hypothesis over the handoff: however the peer's bytes are cut into TCP
writes during and right after the handshake, the data read through the
layer is the same.

The client is plain pyOpenSSL over memory BIOs; every flight it produces
(ClientHello, Finished + the first application records + close_notify in
one blob) is written in pieces at cut points hypothesis chooses, with a
short pause between pieces so the server really reads them apart.  The
server is ``run_handshake`` + ``establish(..., "sw")``, with and without
exact reads (leftover bytes handed to the layer, or none read).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from tlsctl.certs import ephemeral_server_cert
from tlsctl.handshake import run_handshake
from tlsctl.session.channel import establish
from tlsctl.tlsconf import TlsOptions, client_context, server_context

pytestmark = pytest.mark.timeout(300)

_CERT = ephemeral_server_cert()
PAYLOAD = bytes(range(256)) * 80  # 20 KiB: two records


def _server(sock: socket.socket, version: str, exact: bool, out: list[object]) -> None:
    try:
        opts = TlsOptions(tls1_2=version == "1.2", tls1_3=version == "1.3")
        ctx = server_context(opts, cert=_CERT.cert, key=_CERT.key)
        res = run_handshake(sock, ctx, "server", exact=exact, timeout=10)
        sock.settimeout(10)
        chan = establish(sock, res, "sw", lambda _m: None)
        got = bytearray()
        while data := chan.recv(1 << 16):
            got += data
        out.append((bytes(got), chan.peer_closed))
        chan.close_notify()
        chan.close()
    except Exception as exc:  # reported by the test
        out.append(exc)


@pytest.mark.parametrize("exact", [False, True], ids=["leftover", "exact"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_handoff_any_split(version: str, exact: bool, data: st.DataObject) -> None:
    a, b = socket.socketpair()
    out: list[object] = []
    t = threading.Thread(target=_server, args=(b, version, exact, out), daemon=True)
    t.start()
    try:
        a.settimeout(10)
        opts = TlsOptions(tls1_2=version == "1.2", tls1_3=version == "1.3")
        conn = SSL.Connection(client_context(opts, verify=False), None)
        conn.set_connect_state()

        def flush() -> None:
            blob = bytearray()
            while True:
                try:
                    chunk = conn.bio_read(1 << 20)
                except SSL.WantReadError:
                    break
                if not chunk:
                    break
                blob += chunk
            if not blob:
                return
            cuts = sorted(
                set(
                    data.draw(
                        st.lists(st.integers(1, max(1, len(blob) - 1)), max_size=6), label="cuts"
                    )
                )
            )
            prev = 0
            for cut in [*cuts, len(blob)]:
                if cut > prev:
                    a.sendall(blob[prev:cut])
                    time.sleep(0.001)
                    prev = cut

        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                flush()
                chunk = a.recv(1 << 16)
                assert chunk, "server closed during the handshake"
                conn.bio_write(chunk)
        for pos in range(0, len(PAYLOAD), 8192):
            conn.send(PAYLOAD[pos : pos + 8192])
        conn.shutdown()
        flush()
        t.join(20)
    finally:
        a.close()
        b.close()
    assert len(out) == 1
    result = out[0]
    if isinstance(result, Exception):
        raise result
    assert result == (PAYLOAD, True)
