"""Exact handoff whatever the record boundaries of the peer's Finished.

A handshake message may span records (RFC 5246 6.2.1, RFC 8446 5.1), and in
TLS 1.2 every record after the ChangeCipherSpec uses a sequence number of the
new epoch: a peer whose Finished came in N records has its first application
record at N, not 1.  tlslite-ng (tests/tlslite_peer.py, a separate process)
sends its Finished in N records, as a client uploading to ``tlsctl serve``
and as a server receiving from ``tlsctl send``; the bytes must hash equal end
to end and the handoff sequence numbers must be the counts.  TLS 1.3 (where
the Finished is under the handshake keys) and a resumed TLS 1.2 session (the
client's Finished is the last flight) are covered too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from peers import Pki, free_port, make_pki, run_tlsctl, sha, spawn, tlsctl_server, wait_port

pytestmark = pytest.mark.timeout(120)

PEER = [sys.executable, str(Path(__file__).with_name("tlslite_peer.py"))]
# (tlslite version, tlslite cipher name, the OpenSSL name it negotiates with an RSA cert)
CASES = [
    ("1.2", "aes128gcm", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("1.2", "chacha20-poly1305", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("1.3", "aes256gcm", "TLS_AES_256_GCM_SHA384"),
]
FRAGMENTS = [1, 2, 16]
PARAMS = [pytest.param(c, n, id=f"tls{c[0]}-{c[1]}-finished-in-{n}") for c in CASES
          for n in FRAGMENTS]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "data.bin"
    p.write_bytes(os.urandom(3 * 16384 + 1000))  # several records each way
    return p


def _peer_args(case: tuple[str, str, str], n: int) -> list[str]:
    version, cipher, _ = case
    return ["--version", version, "--cipher", cipher, "--finished-records", str(n)]


def _reports(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _expected_rx(version: str, n: int) -> int:
    """TLS 1.2: the peer's Finished records are 0..n-1 under the new keys.
    TLS 1.3: they were under the handshake keys; application records start at 0."""
    return n if version == "1.2" else 0


@pytest.mark.parametrize(("case", "n"), PARAMS)
def test_serve_takes_fragmented_client_finished(case: tuple[str, str, str], n: int, pki: Pki,
                                                data: Path, tmp_path: Path) -> None:
    version, _, openssl_name = case
    resume = version == "1.2"  # then a second connection resumes: Finished is the last flight
    conns = 2 if resume else 1
    with tlsctl_server("-cert", str(pki.rsa_cert), "-key", str(pki.rsa_key), "--offload", "sw",
                       "--save-dir", str(tmp_path), "-naccept", str(conns)) as srv:
        cmd = [*PEER, "client", str(srv.port), "--in", str(data), *_peer_args(case, n)]
        if resume:
            cmd.append("--resume")
        with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            out, err = proc.communicate(timeout=60)
        recs = srv.records()
    assert proc.returncode == 0, out + err
    peer = _reports(out)
    assert [r["finished_records"] for r in peer] == [n] * conns  # the peer really split it
    assert [r["resumed"] for r in peer] == [False, True][:conns]
    assert len(recs) == conns
    for rec in recs:
        assert rec["ok"], rec
        assert rec["cipher"] == openssl_name
        assert rec["rx_seq_at_handoff"] == _expected_rx(version, n)
        assert rec["sha256"] == sha(Path(rec["file"])) == sha(data)


@pytest.mark.parametrize(("case", "n"), PARAMS)
def test_send_takes_fragmented_server_finished(case: tuple[str, str, str], n: int, pki: Pki,
                                               data: Path, tmp_path: Path) -> None:
    version, _, openssl_name = case
    port = free_port()
    got = tmp_path / "got.bin"
    cmd = [*PEER, "server", str(port), "--cert", str(pki.rsa_cert), "--key", str(pki.rsa_key),
           "--out", str(got), *_peer_args(case, n)]
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        wait_port(port, proc)
        r = run_tlsctl("send", str(data), "-connect", f"127.0.0.1:{port}", "-CAfile",
                       str(pki.ca), "--offload", "sw", "--json")
        out, err = proc.communicate(timeout=60)
    assert r.returncode == 0, r.stderr
    assert proc.returncode == 0, out + err
    (peer,) = _reports(out)
    assert peer["finished_records"] == n
    summary = json.loads(r.stdout)
    assert summary["cipher"] == openssl_name
    assert summary["rx_seq_at_handoff"] == _expected_rx(version, n)
    assert summary["sha256"] == peer["sha256"] == sha(got) == sha(data)
