"""Negotiate only what the record layer can carry.

With ``--offload sw``, ``kernel`` or a NIC driver the connection must go to
the kTLS layer, so a suite it has no cipher for (CBC, CCM_8, ...) must never
be negotiated: a CBC-only ``openssl s_client`` gets the handshake_failure
alert ``openssl s_server`` sends when it shares no suite, and ``serve`` goes
on serving.  ``auto`` and ``none`` may keep a connection in pyOpenSSL, so
they stay unrestricted.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from OpenSSL import SSL

from offload.keys import UnsupportedSuiteError, suite_from_openssl_name
from tests.helpers.peers import (
    Pki,
    make_pki,
    openssl_client,
    openssl_server,
    run_tlsctl,
    sha,
    tlsctl_server,
)
from tlsctl.commands._options import tls_options_for
from tlsctl.tlsconf import client_context, server_context

pytestmark = pytest.mark.timeout(120)

CBC = ["-tls1_2", "-cipher", "AES128-SHA"]  # static RSA, AES-CBC: no kTLS cipher
HANDSHAKE_FAILURE = "alert number 40"  # how s_client reports the alert it received


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "data.bin"
    p.write_bytes(os.urandom(100_000))
    return p


def _carried(name: str) -> bool:
    try:
        suite_from_openssl_name(name)
    except UnsupportedSuiteError:
        return False
    return True


@pytest.mark.parametrize("offload", ["sw", "sim-nic"])
def test_serve_alerts_a_client_with_no_carried_suite(
    offload: str, pki: Pki, data: Path, tmp_path: Path
) -> None:
    with tlsctl_server(
        "-cert",
        str(pki.rsa_cert),
        "-key",
        str(pki.rsa_key),
        "--offload",
        offload,
        "--save-dir",
        str(tmp_path),
        "-naccept",
        "2",
    ) as srv:
        bad = openssl_client(srv.port, data, *CBC)
        good = openssl_client(srv.port, data)  # the server is still up and serving
        recs = sorted(srv.records(), key=lambda r: r["conn"])
    assert bad.returncode != 0
    assert HANDSHAKE_FAILURE in bad.stderr.decode()
    assert good.returncode == 0, good.stderr
    first, second = recs
    assert not first["ok"] and first["error"] == "TLS handshake failed: no shared cipher"
    assert second["ok"] and second["offload"] == offload
    assert second["sha256"] == sha(Path(second["file"])) == sha(data)


@pytest.mark.parametrize("offload", ["auto", "none"])
def test_auto_and_none_still_take_any_suite(
    offload: str, pki: Pki, data: Path, tmp_path: Path
) -> None:
    with tlsctl_server(
        "-cert",
        str(pki.rsa_cert),
        "-key",
        str(pki.rsa_key),
        "--offload",
        offload,
        "--save-dir",
        str(tmp_path),
        "-naccept",
        "1",
    ) as srv:
        r = openssl_client(srv.port, data, *CBC)
        (rec,) = srv.records()
    assert r.returncode == 0, r.stderr
    assert rec["ok"] and rec["cipher"] == "AES128-SHA" and rec["offload"] == "none"
    assert rec["sha256"] == sha(data)


def test_send_offers_only_carried_suites(pki: Pki, data: Path, tmp_path: Path) -> None:
    """A CBC-only s_server shares nothing with `send --offload sw`: it says so
    and sends handshake_failure (before, the handshake completed on CBC and
    send dropped the connection without an alert)."""
    with (
        (tmp_path / "o").open("wb") as o,
        openssl_server(pki.cert, pki.key, o, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA") as (
            proc,
            port,
        ),
    ):
        r = run_tlsctl(
            "send",
            str(data),
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(pki.ca),
            "--offload",
            "sw",
        )
        proc.wait(10)
        assert proc.stderr is not None
        server_err = proc.stderr.read().decode()
    assert r.returncode != 0
    assert "no shared cipher" in server_err
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("Error: TLS handshake failed: ") and "alert handshake failure" in line


@pytest.mark.parametrize(
    ("command", "args", "option"),
    [
        ("send", ["--offload", "sw", "-cipher", "AES128-SHA"], "-cipher AES128-SHA"),
        (
            "send",
            ["--offload", "sim-nic", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256"],
            "-ciphersuites TLS_AES_128_CCM_8_SHA256",
        ),
        ("serve", ["--offload", "sw", "-cipher", "AES128-SHA"], "-cipher AES128-SHA"),
    ],
)
def test_explicit_list_with_nothing_carried_is_a_startup_error(
    command: str, args: list[str], option: str, data: Path
) -> None:
    target = ["-connect", "127.0.0.1:1", str(data)] if command == "send" else ["-naccept", "1"]
    r = run_tlsctl(command, *target, *args, timeout=30)
    assert r.returncode != 0
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"Error: {option}: no cipher suite that --offload ")
    assert "can carry" in line


@pytest.mark.parametrize("offload", ["auto", "none", "sw", "kernel", "sim-nic"])
@pytest.mark.parametrize("side", ["client", "server"])
def test_context_suites_per_offload(offload: str, side: str, pki: Pki) -> None:
    """What each side offers or accepts, read back from OpenSSL (bench builds
    its options without an offload: the unrestricted case)."""
    opts = tls_options_for(offload)
    ctx = (
        client_context(opts, verify=False)
        if side == "client"
        else server_context(opts, cert=str(pki.cert), key=str(pki.key))
    )
    names = SSL.Connection(ctx, None).get_cipher_list()
    if offload in ("auto", "none"):
        assert "AES128-SHA" in names and not all(map(_carried, names))
    else:
        assert names and all(map(_carried, names))
        assert "TLS_AES_128_GCM_SHA256" in names and "ECDHE-ECDSA-AES128-GCM-SHA256" in names
