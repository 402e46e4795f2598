"""A peer's Finished in N records, against ``tlsctl serve`` and ``tlsctl send``.

A handshake message may span records (RFC 5246 6.2.1, RFC 8446 5.1), and in
TLS 1.2 every record after the ChangeCipherSpec uses a sequence number of the
new epoch: a peer whose Finished came in N records has its first application
record at N, not 1.  tlslite-ng (``tlslite_peer.py``, a separate process)
sends its Finished in N records, as a client uploading to ``serve`` and as a
server receiving from ``send``; the bytes must hash equal end to end and the
handoff sequence numbers must be the counts.

The checks take the ``--offload`` to use, so the same ones run on the
software layer (test_finished_fragments.py) and, inside the kTLS VM, on the
real kernel (registered as kernel scenarios by :func:`register`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.peers import (
    Pki,
    free_port,
    make_pki,
    run_tlsctl,
    sha,
    spawn,
    tlsctl_server,
    wait_port,
)

PEER = [sys.executable, str(Path(__file__).with_name("tlslite_peer.py"))]


def _peer_args(version: str, cipher: str, n: int) -> list[str]:
    return ["--version", version, "--cipher", cipher, "--finished-records", str(n)]


def _reports(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def expected_rx(version: str, n: int) -> int:
    """TLS 1.2: the peer's Finished records are 0..n-1 under the new keys.
    TLS 1.3: they were under the handshake keys; application records start at 0."""
    return n if version == "1.2" else 0


def check_serve(
    offload: str,
    version: str,
    cipher: str,
    openssl_name: str,
    n: int,
    pki: Pki,
    data: Path,
    tmp: Path,
    slow: float = 1,
) -> str:
    """tlslite-ng client -> ``serve``; TLS 1.2 also resumes (the client's
    Finished is then the last flight).  ``slow`` scales the waits (the VM)."""
    resume = version == "1.2"
    conns = 2 if resume else 1
    with tlsctl_server(
        "-cert",
        str(pki.rsa_cert),
        "-key",
        str(pki.rsa_key),
        "--offload",
        offload,
        "--save-dir",
        str(tmp),
        "-naccept",
        str(conns),
        startup=20 * slow,
    ) as srv:
        cmd = [*PEER, "client", str(srv.port), "--in", str(data), *_peer_args(version, cipher, n)]
        if resume:
            cmd.append("--resume")
        with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            out, err = proc.communicate(timeout=60 * slow)
        # Before the records: a peer that failed leaves serve waiting for -naccept.
        assert proc.returncode == 0, out + err
        recs = srv.records(timeout=30 * slow)
    peer = _reports(out)
    assert [r["finished_records"] for r in peer] == [n] * conns  # the peer really split it
    assert [r["resumed"] for r in peer] == [False, True][:conns]
    assert len(recs) == conns, recs
    for rec in recs:
        assert rec["ok"], rec
        assert rec["cipher"] == openssl_name and rec["offload"] == offload, rec
        assert rec["rx_seq_at_handoff"] == expected_rx(version, n), rec
        assert rec["sha256"] == sha(Path(rec["file"])) == sha(data)
    return f"serve: rx_seq_at_handoff {[r['rx_seq_at_handoff'] for r in recs]}, hashes equal"


def check_send(
    offload: str,
    version: str,
    cipher: str,
    openssl_name: str,
    n: int,
    pki: Pki,
    data: Path,
    tmp: Path,
    slow: float = 1,
) -> str:
    """tlslite-ng server <- ``send``."""
    port = free_port()
    got = tmp / "got.bin"
    cmd = [
        *PEER,
        "server",
        str(port),
        "--cert",
        str(pki.rsa_cert),
        "--key",
        str(pki.rsa_key),
        "--out",
        str(got),
        *_peer_args(version, cipher, n),
    ]
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        wait_port(port, proc, timeout=30 * slow)  # a Python peer starting inside the emulated VM
        r = run_tlsctl(
            "send",
            str(data),
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(pki.ca),
            "--offload",
            offload,
            "--json",
            timeout=60 * slow,
        )
        out, err = proc.communicate(timeout=60 * slow)
    assert r.returncode == 0, r.stderr
    assert proc.returncode == 0, out + err
    (peer,) = _reports(out)
    assert peer["finished_records"] == n
    summary = json.loads(r.stdout)
    assert summary["cipher"] == openssl_name and summary["offload"] == offload, summary
    assert summary["rx_seq_at_handoff"] == expected_rx(version, n), summary
    assert summary["sha256"] == peer["sha256"] == sha(got) == sha(data)
    return f"send: rx_seq_at_handoff {summary['rx_seq_at_handoff']}, hashes equal"


Decorator = Callable[[Callable[[], object]], Callable[[], object]]


def register(scenario: Callable[..., Decorator]) -> None:
    """Kernel scenarios: both roles, TLS 1.2, Finished in 16 records, kTLS both ways."""

    def run(check: Callable[..., str], cipher: str, openssl_name: str) -> str:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            pki = make_pki(tmp)
            data = tmp / "data.bin"
            data.write_bytes(os.urandom(3 * 16384 + 1000))
            save = tmp / "save"
            save.mkdir()
            return check("kernel", "1.2", cipher, openssl_name, 16, pki, data, save, slow=6)

    @scenario("handoff_serve_client_finished_in_16_records", timeout=300)
    def serve_16() -> str:
        return run(check_serve, "chacha20-poly1305", "ECDHE-RSA-CHACHA20-POLY1305")

    @scenario("handoff_send_server_finished_in_16_records", timeout=300)
    def send_16() -> str:
        return run(check_send, "aes128gcm", "ECDHE-RSA-AES128-GCM-SHA256")
