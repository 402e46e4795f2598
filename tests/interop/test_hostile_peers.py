"""A malicious peer after a real handshake, against ``tlsctl serve`` and ``openssl s_server``.

The peer is a raw socket: pyOpenSSL does the handshake (``run_handshake``
with exact reads, so nothing past it is consumed), then every record is
built by hand with ``tests/helpers/wire.py`` (which shares no code with the layer)
and the server's answer is decrypted the same way.  For each hostile input
we check the alert on the wire, the one-line error in serve's connection
record, what reached the output file (nothing after a failure), and that
the server accepts another connection afterwards (an ``openssl s_client``).

The same bytes go to ``openssl s_server``: the table's alert is OpenSSL 3's
answer too (``test_openssl_answers_alike``), so each row pins both.  The
protocol decisions themselves are unit-tested without sockets in
``test_session.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import socket
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offload.keys import Suite, crypto_info_tls13, tls13_next_secret
from offload.uapi import CryptoInfo
from tests.helpers.peers import (
    Pki,
    make_pki,
    openssl_client,
    openssl_server,
    tlsctl_server,
)
from tests.helpers.wire import decrypt_records, encrypt_record
from tlsctl.handshake import HandshakeResult, run_handshake
from tlsctl.session import alert_name
from tlsctl.tlsconf import TlsOptions, client_context

pytestmark = pytest.mark.timeout(120)

CCS, ALERT, HANDSHAKE, DATA = 20, 21, 22, 23
CLOSE_NOTIFY = b"\x01\x00"
_REPLY_TIMEOUT = 20  # a server that neither answers nor closes fails the test


class RecordWriter:
    """Builds the records a peer sends: sealed with its current TX key
    (``tx``, ``seq``), and ``rekey`` for its side of a TLS 1.3 KeyUpdate."""

    tx: CryptoInfo
    seq: int
    suite: Suite | None
    secret: bytes

    def record(self, ctype: int, plaintext: bytes, **kw: Any) -> bytes:
        rec = encrypt_record(self.tx, self.seq, ctype, plaintext, **kw)
        self.seq += 1
        return rec

    def rekey(self) -> bytes:
        """Switch our TX to the next TLS 1.3 secret (after sending a KeyUpdate);
        returns b"" so a case can write it between records."""
        assert self.suite is not None
        self.secret = tls13_next_secret(self.secret, self.suite)
        self.tx = crypto_info_tls13(self.secret, self.suite, 0)
        self.seq = 0
        return b""


class Peer(RecordWriter):
    """A TLS client that completed a real handshake and now writes raw records."""

    def __init__(self, port: int, version: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        opts = TlsOptions(tls1_2=version == "1.2", tls1_3=version == "1.3")
        self._start(
            run_handshake(self.sock, client_context(opts, verify=False), "client", exact=True)
        )

    def _start(self, res: HandshakeResult) -> None:
        assert res.tx_info is not None and res.rx_info is not None
        self.res = res
        self.tx = res.tx_info
        self.seq = res.tx_seq
        self.suite = res.suite
        self.secret = res.tx_secret

    def replies(self) -> list[tuple[int, bytes]]:
        """Everything the server sends until it closes, decrypted."""
        buf = bytearray(self.res.leftover)
        self.sock.settimeout(_REPLY_TIMEOUT)
        with contextlib.suppress(ConnectionResetError):
            while chunk := self.sock.recv(65536):
                buf += chunk
        assert self.res.rx_info is not None
        return decrypt_records(self.res.rx_info, bytes(buf))

    def close(self) -> None:
        self.sock.close()


@dataclasses.dataclass
class Case:
    name: str
    versions: tuple[str, ...]
    build: Callable[[RecordWriter], bytes]
    alert: int | None  # fatal alert expected from the server, None: none
    error: str | None  # substring of serve's one-line error, None: connection ok
    saved: bytes = b""
    warning: int | None = None  # a warning alert expected (connection goes on)
    one_byte_writes: bool = False
    shut_wr: bool = False  # half-close after writing (the server sees EOF)


GOOD = b"good" * 250
AFTER = b"after" * 200
CERT_REQUEST = b"\x0d\x00\x00\x04\x00\x00\x00\x00"  # post-handshake CertificateRequest
KEY_UPDATE = b"\x18\x00\x00\x01\x00"  # update_not_requested


def _flip(rec: bytes, pos: int = 30) -> bytes:
    b = bytearray(rec)
    b[pos] ^= 1
    return bytes(b)


def _wrong_version(rec: bytes) -> bytes:
    return rec[:1] + b"\x03\x01" + rec[3:]


def _close(p: RecordWriter) -> bytes:
    return p.record(ALERT, CLOSE_NOTIFY)


def _warnings(p: RecordWriter, n: int) -> bytes:
    return b"".join(p.record(ALERT, b"\x01\x70") for _ in range(n))  # unrecognized_name


def _hs(p: RecordWriter, *fragments: bytes) -> bytes:
    """One handshake record per fragment."""
    return b"".join(p.record(HANDSHAKE, f) for f in fragments)


def _outer_type(p: RecordWriter, outer: int) -> bytes:
    """A good record, then one whose TLS 1.3 outer type is ``outer``."""
    return p.record(DATA, GOOD) + p.record(DATA, AFTER, outer=outer)


# Every row is OpenSSL 3's answer as well (see the module docstring).
CASES = [
    Case(
        "bad_mac",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + _flip(p.record(DATA, b"x" * 1000)) + p.record(DATA, AFTER),
        20,
        "authentication",
        GOOD,
    ),
    Case(
        "truncated_then_eof",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(DATA, AFTER)[:200],
        50,
        "in the middle of a record",
        GOOD,
        shut_wr=True,
    ),
    Case(
        "oversized",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(DATA, b"o" * (16384 + 1)),
        22,
        "oversized record",
        GOOD,
    ),
    Case(
        "wrong_version",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + _wrong_version(p.record(DATA, AFTER)),
        70,
        "wrong protocol version",
        GOOD,
    ),
    Case(
        "wrong_version",
        ("1.3",),  # RFC 8446 ignores the field; Linux, OpenSSL do not
        lambda p: p.record(DATA, GOOD) + _wrong_version(p.record(DATA, AFTER)),
        50,
        "wrong protocol version",
        GOOD,
    ),
    Case(
        "unknown_content_type",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(99, b"what") + p.record(DATA, AFTER),
        10,
        "unexpected type 99",
        GOOD,
    ),
    Case(
        "protected_change_cipher_spec",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(CCS, b"\x01") + p.record(DATA, AFTER),
        10,
        "unexpected type 20 (change_cipher_spec)",
        GOOD,
    ),
    Case(
        "plaintext_change_cipher_spec",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + b"\x14\x03\x03\x00\x01\x01" + p.record(DATA, AFTER),
        20,
        "too short to be protected",
        GOOD,
    ),
    Case(
        "plaintext_change_cipher_spec",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + b"\x14\x03\x03\x00\x01\x01" + p.record(DATA, AFTER),
        10,
        "outer type 20 (change_cipher_spec)",
        GOOD,
    ),
    *(
        Case(
            f"outer_type_{outer}",
            ("1.3",),
            functools.partial(_outer_type, outer=outer),
            10,
            f"outer type {outer}",
            GOOD,
        )
        for outer in (CCS, ALERT, HANDSHAKE)
    ),
    Case(
        "zero_len_data",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(DATA, b"") + p.record(DATA, AFTER) + _close(p),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "zero_len_alert",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"") + p.record(DATA, AFTER),
        10,
        "malformed alert",
        GOOD,
    ),
    Case(
        "zero_len_alert_padded",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"", pad=10) + p.record(DATA, AFTER),
        10,
        "malformed alert",
        GOOD,
    ),
    Case(
        "two_alerts_in_one_record",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, CLOSE_NOTIFY * 2),
        10,
        "malformed alert from peer (4 bytes",
        GOOD,
    ),
    Case(
        "alert_split_over_two_records",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"\x01") + p.record(ALERT, b"\x00"),
        10,
        "malformed alert from peer (1 bytes",
        GOOD,
    ),
    Case(
        "zero_len_handshake",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + p.record(HANDSHAKE, b"") + p.record(DATA, AFTER),
        10,
        "empty handshake record",
        GOOD,
    ),
    Case(
        "zero_len_handshake_skipped",
        ("1.2",),
        lambda p: (
            p.record(DATA, GOOD) + p.record(HANDSHAKE, b"") + p.record(DATA, AFTER) + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "all_zero_inner_plaintext",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + p.record(0, b"", pad=32) + p.record(DATA, AFTER),
        10,
        "no content type",
        GOOD,
    ),
    Case(
        "one_byte_tcp_writes",
        ("1.2", "1.3"),
        lambda p: b"".join(p.record(DATA, bytes([i]) * 300) for i in range(5)) + _close(p),
        None,
        None,
        b"".join(bytes([i]) * 300 for i in range(5)),
        one_byte_writes=True,
    ),
    Case(
        "flood_of_tiny_records",
        ("1.2", "1.3"),
        lambda p: b"".join(p.record(DATA, b"t") for _ in range(30000)) + _close(p),
        None,
        None,
        b"t" * 30000,
    ),
    Case(
        "four_warning_alerts_tolerated",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + _warnings(p, 4) + p.record(DATA, AFTER) + _close(p),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "warnings_counted_in_a_row_only",
        ("1.2",),
        lambda p: (
            p.record(DATA, GOOD)
            + _warnings(p, 4)
            + p.record(DATA, b"x")
            + _warnings(p, 4)
            + p.record(DATA, AFTER)
            + _close(p)
        ),
        None,
        None,
        GOOD + b"x" + AFTER,
    ),
    Case(
        "fifth_warning_alert",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + _warnings(p, 5) + p.record(DATA, AFTER),
        10,
        "too many warning alerts from peer (last: unrecognized_name)",
        GOOD,
    ),
    Case(
        "warning_alert_flood",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + _warnings(p, 1000) + p.record(DATA, AFTER),
        10,
        "too many warning alerts from peer (last: unrecognized_name)",
        GOOD,
    ),
    Case(
        "warning_alert_is_fatal_in_tls13",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + _warnings(p, 1) + p.record(DATA, AFTER),
        None,
        "peer sent fatal alert: unrecognized_name",
        GOOD,
    ),
    Case(
        "user_canceled_ignored",
        ("1.2", "1.3"),
        lambda p: (
            p.record(DATA, GOOD) + p.record(ALERT, b"\x01\x5a") + p.record(DATA, AFTER) + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "no_renegotiation_never_asked",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"\x01\x64") + p.record(DATA, AFTER),
        40,
        "renegotiation we never asked for",
        GOOD,
    ),
    Case(
        "alert_level_unknown",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"\x07\x28") + p.record(DATA, AFTER),
        47,
        "unknown level 7",
        GOOD,
    ),
    Case(
        "fatal_alert_from_peer",
        ("1.2", "1.3"),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"\x02\x28") + p.record(DATA, AFTER),
        None,
        "peer sent fatal alert: handshake_failure",
        GOOD,
    ),
    Case(
        "close_notify_at_fatal_level",
        ("1.2",),
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"\x02\x00"),
        None,
        "peer sent fatal alert: close_notify",
        GOOD,
    ),
    Case(
        "close_notify_at_fatal_level",
        ("1.3",),  # RFC 8446 6: the level is ignored
        lambda p: p.record(DATA, GOOD) + p.record(ALERT, b"\x02\x00"),
        None,
        None,
        GOOD,
    ),
    Case(
        "certificate_request_after_handshake",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + p.record(HANDSHAKE, CERT_REQUEST) + p.record(DATA, AFTER),
        10,
        "unexpected handshake message certificate_request",
        GOOD,
    ),
    Case(
        "bogus_handshake_type",
        ("1.2", "1.3"),
        lambda p: (
            p.record(DATA, GOOD)
            + p.record(HANDSHAKE, b"\xee\x00\x00\x01\x00")
            + p.record(DATA, AFTER)
        ),
        10,
        "unexpected handshake message type 238",
        GOOD,
    ),
    Case(
        "new_session_ticket_from_client",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD)
            + p.record(HANDSHAKE, b"\x04\x00\x00\x02\x00\x00")
            + p.record(DATA, AFTER)
        ),
        10,
        "new_session_ticket",
        GOOD,
    ),
    Case(
        "fragmented_handshake_then_data",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD) + p.record(HANDSHAKE, b"\x04\x00\x00") + p.record(DATA, AFTER)
        ),
        10,
        "interleaved",
        GOOD,
    ),
    Case(
        "fragmented_handshake_then_close_notify",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + p.record(HANDSHAKE, b"\x18\x00") + _close(p),
        10,
        "interleaved",
        GOOD,
    ),
    # TLS 1.2 has no rule against interleaving; OpenSSL reads on.
    Case(
        "fragmented_handshake_then_data",
        ("1.2",),
        lambda p: (
            p.record(DATA, GOOD)
            + p.record(HANDSHAKE, b"\x01\x00\x00")
            + p.record(DATA, AFTER)
            + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
    ),
    # RFC 8446 5.1: a KeyUpdate may be fragmented if it ends at a record boundary.
    Case(
        "key_update_in_two_records",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD)
            + _hs(p, KEY_UPDATE[:3], KEY_UPDATE[3:])
            + p.rekey()
            + p.record(DATA, AFTER)
            + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "key_update_in_three_records",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD)
            + _hs(p, KEY_UPDATE[:1], KEY_UPDATE[1:4], KEY_UPDATE[4:])
            + p.rekey()
            + p.record(DATA, AFTER)
            + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "key_updates_back_to_back_fragmented",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD)
            + _hs(p, KEY_UPDATE[:2], KEY_UPDATE[2:])
            + p.rekey()
            + _hs(p, KEY_UPDATE[:4], KEY_UPDATE[4:])
            + p.rekey()
            + p.record(DATA, AFTER)
            + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
    ),
    Case(
        "key_update_not_at_record_end",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD) + _hs(p, KEY_UPDATE + KEY_UPDATE[:2]) + p.record(DATA, AFTER)
        ),
        10,
        "KeyUpdate not at a record boundary",
        GOOD,
    ),
    Case(
        "two_key_updates_in_one_record",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + _hs(p, KEY_UPDATE * 2) + p.record(DATA, AFTER),
        10,
        "KeyUpdate not at a record boundary",
        GOOD,
    ),
    Case(
        "key_update_body_too_long",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD) + _hs(p, b"\x18\x00\x00\x02\x00\x00") + p.record(DATA, AFTER)
        ),
        47,
        "post-handshake key_update of 2 bytes",
        GOOD,
    ),
    Case(
        "key_update_body_empty",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + _hs(p, b"\x18\x00\x00\x00") + p.record(DATA, AFTER),
        50,
        "malformed KeyUpdate",
        GOOD,
    ),
    Case(
        "post_handshake_message_too_big",
        ("1.3",),
        lambda p: p.record(DATA, GOOD) + _hs(p, b"\x18\x7f\xff\xff") + p.record(DATA, AFTER),
        47,
        "post-handshake key_update of 8388607 bytes",
        GOOD,
    ),
    Case(
        "bad_key_update_value",
        ("1.3",),
        lambda p: (
            p.record(DATA, GOOD)
            + p.record(HANDSHAKE, b"\x18\x00\x00\x01\x05")
            + p.record(DATA, AFTER)
        ),
        47,
        "request_update=5",
        GOOD,
    ),
    Case(
        "renegotiation_refused",
        ("1.2",),
        lambda p: (
            p.record(DATA, GOOD)
            + p.record(
                HANDSHAKE, b"\x01\x00\x00\x26" + b"\x03\x03" + bytes(32) + b"\x00\x00\x00\x00"
            )
            + p.record(DATA, AFTER)
            + _close(p)
        ),
        None,
        None,
        GOOD + AFTER,
        warning=100,
    ),
]

PARAMS = [pytest.param(c, v, id=f"{c.name}-tls{v}") for c in CASES for v in c.versions]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("hostile") / "small.bin"
    p.write_bytes(os.urandom(20000))
    return p


def _attack(port: int, case: Case, version: str) -> list[tuple[int, bytes]]:
    """Handshake, write the case's bytes, read the server's answer until it closes."""
    peer = Peer(port, version)
    try:
        wire = case.build(peer)
        if case.one_byte_writes:
            for i in range(len(wire)):
                peer.sock.send(wire[i : i + 1])
        else:
            peer.sock.sendall(wire)
        if case.shut_wr:
            peer.sock.shutdown(socket.SHUT_WR)
        return peer.replies()
    finally:
        peer.close()


def _check_answer(case: Case, replies: list[tuple[int, bytes]]) -> None:
    """The alerts on the wire are the case's, and no data came back."""
    alerts = [body for ctype, body in replies if ctype == ALERT]
    assert not [body for ctype, body in replies if ctype == DATA]
    fatal = [b[1] for b in alerts if b[0] == 2]
    assert fatal == ([] if case.alert is None else [case.alert]), alerts
    if case.warning is not None:
        assert bytes([1, case.warning]) in alerts
    if case.error is None:  # a clean close is answered with one
        assert alerts[-1] == CLOSE_NOTIFY, alerts


@pytest.mark.parametrize(("case", "version"), PARAMS)
def test_hostile_peer(case: Case, version: str, tmp_path: Path, small_file: Path) -> None:
    vflag = "-tls1_2" if version == "1.2" else "-tls1_3"
    with tlsctl_server(
        "--save-dir", str(tmp_path), "-naccept", "2", "--offload", "sw", vflag
    ) as srv:
        replies = _attack(srv.port, case, version)
        # The server keeps running: a real client afterwards succeeds.
        good = openssl_client(srv.port, small_file, vflag)
        recs = sorted(srv.records(), key=lambda r: r["conn"])
    assert good.returncode == 0, good.stderr
    assert recs[1]["ok"] and recs[1]["bytes_in"] == 20000

    rec = recs[0]
    _check_answer(case, replies)
    if case.alert is not None:
        assert rec["alert_sent"] == case.alert
    if case.error is None:
        assert rec["ok"], rec
        assert rec["clean_close"]
    else:
        assert not rec["ok"]
        assert case.error in rec["error"], rec["error"]
        assert "\n" not in rec["error"]
        if case.alert is not None:
            assert rec["error"].endswith(f"; sent fatal alert {alert_name(case.alert)}")
    # Nothing decrypted after a failure reaches the output (a failed stream
    # is kept as NAME.partial; nothing stored, no file).
    assert (Path(rec["file"]).read_bytes() if "file" in rec else b"") == case.saved
    assert rec.get("file", ".partial").endswith(".partial") is (case.error is not None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("hostile-pki"))


@pytest.mark.parametrize(("case", "version"), PARAMS)
def test_openssl_answers_alike(case: Case, version: str, tmp_path: Path, pki: Pki) -> None:
    """The same bytes to ``openssl s_server``: the same alerts on the wire and
    the same bytes written out (what the table says is OpenSSL's answer)."""
    vflag = "-tls1_2" if version == "1.2" else "-tls1_3"
    out = tmp_path / "out.bin"
    with out.open("wb") as f, openssl_server(pki.cert, pki.key, f, vflag) as (proc, port):
        replies = _attack(port, case, version)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    _check_answer(case, replies)
    assert out.read_bytes() == case.saved


def test_fatal_alert_reaches_a_peer_that_keeps_writing() -> None:
    """After its fatal alert the server reads (and drops) what the peer still
    sends before closing: a peer that writes 16 MiB after a bad record (more
    than loopback's socket buffers hold) finishes writing without a reset
    and then reads the alert.  Closing with unread bytes would reset the
    connection under the peer's writes instead."""
    import threading

    with tlsctl_server("--sink", "-naccept", "1", "--offload", "sw", "-tls1_3") as srv:
        peer = Peer(srv.port, "1.3")
        try:
            bad = _flip(peer.record(DATA, GOOD))
            rest = b"".join(peer.record(DATA, b"w" * 16384) for _ in range(1024))
            errors: list[BaseException] = []

            def write() -> None:
                try:
                    peer.sock.sendall(bad + rest)
                except OSError as exc:
                    errors.append(exc)

            t = threading.Thread(target=write)
            t.start()
            t.join(60)
            replies = peer.replies()
        finally:
            peer.close()
        (rec,) = srv.records()
    assert not errors, errors
    assert [b for ctype, b in replies if ctype == ALERT] == [b"\x02\x14"]
    assert rec["alert_sent"] == 20 and "authentication" in rec["error"]


@pytest.mark.parametrize("server", ["tlsctl", "openssl"])
def test_close_notify_answered_before_a_complete_request(
    server: str, tmp_path: Path, pki: Pki
) -> None:
    """``-WWW``: the client's close_notify before a whole request is answered
    with the server's own close_notify (as ``openssl s_server -WWW`` does),
    not with a bare TCP close."""
    (tmp_path / "f.txt").write_bytes(b"file\n")
    with contextlib.ExitStack() as stack:
        if server == "tlsctl":
            port = stack.enter_context(
                tlsctl_server("-WWW", str(tmp_path), "-naccept", "1", "--offload", "sw", "-tls1_3")
            ).port
        else:
            sink = stack.enter_context(open(os.devnull, "wb"))
            _proc, port = stack.enter_context(
                openssl_server(pki.cert, pki.key, sink, "-WWW", "-tls1_3")
            )
        peer = Peer(port, "1.3")
        try:
            peer.sock.sendall(peer.record(DATA, b"GET /f.t") + _close(peer))
            replies = peer.replies()
        finally:
            peer.close()
    alerts = [b for ctype, b in replies if ctype == ALERT]
    assert alerts == [CLOSE_NOTIFY], replies


def test_flood_memory_bounded(tmp_path: Path) -> None:
    """200k one-byte records through the layer: the server's peak RSS does
    not grow with the number of records (it would if records were queued)."""
    with tlsctl_server("--sink", "-naccept", "1", "--offload", "sw", "-tls1_3") as srv:
        peer = Peer(srv.port, "1.3")
        try:
            before = _hwm(srv.proc.pid)
            for _ in range(10):
                peer.sock.sendall(b"".join(peer.record(DATA, b"t") for _ in range(20000)))
            peer.sock.sendall(_close(peer))
            replies = peer.replies()
            after = _hwm(srv.proc.pid)
        finally:
            peer.close()
        (rec,) = srv.records()
    assert rec["ok"] and rec["bytes_in"] == 200000
    assert replies[-1] == (ALERT, CLOSE_NOTIFY)
    assert after - before < 32 << 20, (before, after)


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def test_wire_helpers_roundtrip() -> None:
    """encrypt_record with an all-zero TLS 1.3 inner plaintext is what we think."""
    from offload.uapi import TLS_1_3_VERSION, CipherType, CryptoInfo

    info = CryptoInfo.create(
        TLS_1_3_VERSION, CipherType.AES_GCM_128, key=bytes(16), iv=bytes(8), salt=bytes(4), seq=0
    )
    rec = encrypt_record(info, 0, 0, b"", pad=3)
    assert struct.unpack(">H", rec[3:5])[0] == 4 + 16


# --- the other direction: a hostile server against ``tlsctl send`` -------------------


@dataclasses.dataclass
class ServerCase:
    name: str
    version: str
    build: Callable[[Peer], bytes]
    alert: int | None  # fatal alert expected from tlsctl send
    error: str | None  # substring of send's one-line error; None: the send succeeds
    warning: int | None = None
    after_close: bytes = b""  # application data the server sends after the client's close
    during: int | None = None  # fatal alert send answers with while still sending
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # in send's --json


NST = b"\x04\x00\x00\x0a" + bytes(range(10))  # a NewSessionTicket (content-free)


# ``tlsctl send`` reads while the file goes out (a second thread).  What the
# server sends right after the handshake races with send's close_notify:
# seen before it, send answers with ``during`` (the fatal alert) and sends
# nothing more; seen after it, send reports the problem but sends no alert
# (its write side is closed).  Both outcomes are checked against the wire;
# ``test_hostile_server_mid_transfer`` pins the first one down.
SERVER_CASES = [
    ServerCase(
        "hello_request_ignored",
        "1.2",
        lambda p: p.record(HANDSHAKE, b"\x00\x00\x00\x00"),
        None,
        None,
    ),
    ServerCase(
        "certificate_request_after_handshake",
        "1.3",
        lambda p: p.record(HANDSHAKE, CERT_REQUEST),
        None,
        "unexpected handshake message certificate_request",
        during=10,
    ),
    ServerCase(
        "fatal_alert",
        "1.3",
        lambda p: p.record(ALERT, b"\x02\x28"),
        None,
        "peer sent fatal alert: handshake_failure",
    ),
    ServerCase(
        "bad_mac",
        "1.2",
        lambda p: _flip(p.record(DATA, b"x" * 100)),
        None,
        "authentication",
        during=20,
    ),
    # TLS 1.3: close_notify closes one direction; the server may still send.
    ServerCase(
        "data_after_client_close_notify",
        "1.3",
        lambda p: b"",
        None,
        None,
        after_close=b"late data" * 1000,
    ),
    # RFC 8446 5.1: tickets fragmented over records, or several in one (plus
    # the 2 pyOpenSSL's server sends itself).
    ServerCase(
        "tickets_fragmented_and_coalesced",
        "1.3",
        lambda p: _hs(p, NST[:3], NST[3:9], NST[9:]) + _hs(p, NST * 2),
        None,
        None,
        after_close=b"late data",
        counts={"session_tickets_ignored": 5},
    ),
    # The KeyUpdate ends a record that began with a ticket: the layer does
    # not pause, the client must switch keys before reading on.
    ServerCase(
        "ticket_and_key_update_in_one_record",
        "1.3",
        lambda p: _hs(p, NST + KEY_UPDATE) + p.rekey(),
        None,
        None,
        after_close=b"under the next key" * 100,
        counts={"session_tickets_ignored": 3, "key_updates_received": 1},
    ),
    ServerCase(
        "key_update_in_two_records",
        "1.3",
        lambda p: _hs(p, KEY_UPDATE[:3], KEY_UPDATE[3:]) + p.rekey(),
        None,
        None,
        after_close=b"under the next key" * 100,
        counts={"key_updates_received": 1},
    ),
]


class ServerPeer(Peer):
    """The server end: real handshake (pyOpenSSL), then raw records."""

    def __init__(self, sock: socket.socket, version: str, cert: Path, key: Path) -> None:
        from tlsctl.tlsconf import server_context

        self.sock = sock
        opts = TlsOptions(tls1_2=version == "1.2", tls1_3=version == "1.3")
        ctx = server_context(opts, cert=str(cert), key=str(key))
        self._start(run_handshake(sock, ctx, "server", exact=True))

    def serve(self, after_close: bytes = b"") -> list[tuple[int, bytes]]:
        """Read the client's records; answer its close_notify with ours."""
        assert self.res.rx_info is not None
        buf = bytearray(self.res.leftover)
        got: list[tuple[int, bytes]] = []
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            try:
                got = decrypt_records(self.res.rx_info, bytes(buf))
            except ValueError:
                continue  # a partial record: read on
            if (ALERT, CLOSE_NOTIFY) in got:
                late = self.record(DATA, after_close) if after_close else b""
                self.sock.sendall(late + self.record(ALERT, CLOSE_NOTIFY))
                break
        return got


def _send_to(
    tmp_path: Path,
    file: Path,
    version: str,
    serve: Callable[[ServerPeer], list[tuple[int, bytes]]],
) -> tuple[subprocess.CompletedProcess[str], list[tuple[int, bytes]]]:
    """``tlsctl send FILE`` (sw) to a ServerPeer that ``serve`` drives after
    the handshake; send's result and the records the server decrypted."""
    import threading

    from tests.helpers.peers import make_pki, run_tlsctl

    pki = make_pki(tmp_path)
    seen: list[list[tuple[int, bytes]]] = []
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        ls.settimeout(30)

        def server() -> None:
            s, _ = ls.accept()
            with s:
                s.settimeout(15)
                seen.append(serve(ServerPeer(s, version, pki.cert, pki.key)))

        t = threading.Thread(target=server, daemon=True)
        t.start()
        r = run_tlsctl(
            "send",
            str(file),
            "-connect",
            f"localhost:{ls.getsockname()[1]}",
            "-CAfile",
            str(pki.ca),
            "--offload",
            "sw",
            "--json",
        )
        t.join(30)
    (records,) = seen
    return r, records


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c.name for c in SERVER_CASES])
def test_hostile_server(case: ServerCase, tmp_path: Path, small_file: Path) -> None:
    def serve(peer: ServerPeer) -> list[tuple[int, bytes]]:
        peer.sock.sendall(case.build(peer))
        return peer.serve(case.after_close)

    r, records = _send_to(tmp_path, small_file, case.version, serve)
    alerts = [b for ctype, b in records if ctype == ALERT]
    data = b"".join(b for ctype, b in records if ctype == DATA)
    if case.error is None:
        assert r.returncode == 0, r.stderr
        assert data == small_file.read_bytes()
        assert alerts[-1] == CLOSE_NOTIFY
        out = json.loads(r.stdout)
        assert {k: out[k] for k in case.counts} == case.counts
        assert out["bytes_received"] == len(case.after_close)
    else:
        assert r.returncode == 3  # the transfer started: incomplete, not a local failure
        err = r.stderr.strip()
        assert case.error in err and "\n" not in err, err
        if "; sent fatal alert" in err:  # seen before send's close_notify
            assert case.during is not None, err
            assert err.endswith(f"; sent fatal alert {alert_name(case.during)}"), err
            assert records[-1] == (ALERT, bytes([2, case.during])), records[-3:]
            assert (ALERT, CLOSE_NOTIFY) not in records
            return
    fatal = [b[1] for b in alerts if b[0] == 2]
    assert fatal == ([case.alert] if case.alert is not None else [])
    if case.warning is not None:
        assert bytes([1, case.warning]) in alerts


@pytest.mark.parametrize(
    ("version", "build", "alert", "error"),
    [
        ("1.2", lambda p: _flip(p.record(DATA, b"x" * 100)), 20, "authentication"),
        ("1.3", lambda p: _flip(p.record(DATA, b"x" * 100)), 20, "authentication"),
        (
            "1.3",
            lambda p: p.record(HANDSHAKE, CERT_REQUEST),
            10,
            "unexpected handshake message certificate_request",
        ),
    ],
    ids=["bad_mac-1.2", "bad_mac-1.3", "certificate_request-1.3"],
)
def test_hostile_server_mid_transfer(
    version: str, build: Callable[[Peer], bytes], alert: int, error: str, tmp_path: Path
) -> None:
    """A bad record while the file is still going out (the server does not
    read for a second, so send is blocked mid-file): send answers with the
    fatal alert, and not one record follows it (no more data, no
    close_notify); what arrived before it is a prefix of the file."""
    import time

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(32 << 20))  # more than loopback's socket buffers

    def serve(peer: ServerPeer) -> list[tuple[int, bytes]]:
        peer.sock.sendall(build(peer))
        time.sleep(1)
        return peer.replies()

    r, records = _send_to(tmp_path, big, version, serve)
    err = r.stderr.strip()
    assert r.returncode == 3  # incomplete transfer
    assert error in err and "\n" not in err, err
    assert err.endswith(f"; sent fatal alert {alert_name(alert)}"), err
    assert records[-1] == (ALERT, bytes([2, alert]))
    assert all(ctype == DATA for ctype, _ in records[:-1])
    data = b"".join(b for _, b in records[:-1])
    assert len(data) < big.stat().st_size
    assert big.read_bytes().startswith(data)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_fatal_alert_message_same_without_offload(version: str, tmp_path: Path) -> None:
    """``--offload none`` (pyOpenSSL keeps the records) names the alert alike."""
    vflag = "-tls1_2" if version == "1.2" else "-tls1_3"
    with tlsctl_server(
        "--save-dir", str(tmp_path), "-naccept", "1", "--offload", "none", vflag
    ) as srv:
        peer = Peer(srv.port, version)
        try:
            peer.sock.sendall(peer.record(DATA, GOOD) + peer.record(ALERT, b"\x02\x28"))
            peer.replies()
        finally:
            peer.close()
        (rec,) = srv.records()
    assert not rec["ok"] and rec["error"] == "peer sent fatal alert: handshake_failure"
    assert rec["file"].endswith(".partial") and Path(rec["file"]).read_bytes() == GOOD
