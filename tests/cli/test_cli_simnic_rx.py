"""``serve --offload sim-nic`` offloads RX too: real clients send, hashes compared.

``openssl s_client`` and GnuTLS's ``gnutls-cli`` send a file to ``tlsctl
serve --offload sim-nic`` on the in-process wire with faults: every byte
stored went through segmenter -> faults -> the NIC's RX (decrypted there,
or left encrypted) -> reassembly -> the layer's check of the marks.  The
RX counters in ``--json`` must show the NIC decrypting and each record
counted once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cli.test_cli_send_serve import GNUTLS_PRIOS, gnutls_cli, needs_gnutls
from tests.helpers.peers import Pki, make_pki, openssl_client, run_tlsctl, sha, tlsctl_server

pytestmark = pytest.mark.timeout(300)
FAULTS = "drop=0.02,reorder=0.02,dup=0.02,split=0.02,seed={seed}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "in.bin"
    p.write_bytes(os.urandom(3 << 20))
    return p


def _serve(pki: Pki, dest: Path, resync: str, seed: int) -> list[str]:
    return [
        "-cert",
        str(pki.cert),
        "-key",
        str(pki.key),
        "--offload",
        "sim-nic",
        "--faults",
        FAULTS.format(seed=seed),
        "--mss",
        "1448",
        "--rx-resync",
        resync,
        "-o",
        str(dest),
    ]


def _check(rec: dict[str, object], dest: Path, src: Path, resync: str) -> None:
    assert rec["ok"], rec
    assert rec["sha256"] == sha(dest) == sha(src)
    counters = rec["device_counters"]
    rx = rec["rx_offload"]
    assert isinstance(counters, dict) and isinstance(rx, dict)
    assert counters["rx_tls_ctx"] == counters["rx_tls_del"] == 1  # del: counted at close
    assert counters["rx_tls_decrypted_packets"] > 0
    assert rx["rx_resync"] == {"driver": "DRIVER_REQ", "core": "CORE_NEXT_HINT"}.get(
        resync, "DRIVER_REQ_ASYNC"
    )
    assert rx["rx_records_device"] > 0
    records = rx["rx_records_device"] + rx["rx_records_partial"] + rx["rx_records_sw"]
    assert isinstance(rec["rx_seq_at_end"], int) and isinstance(rec["rx_seq_at_handoff"], int)
    assert records == rec["rx_seq_at_end"] - rec["rx_seq_at_handoff"]
    assert any(k.startswith("rx_fault_") for k in rx)


@pytest.mark.parametrize("resync", ["driver", "core", "async"])
@pytest.mark.parametrize("vflag", ["-tls1_2", "-tls1_3"])
def test_s_client_to_serve_sim_nic_rx_with_faults(
    pki: Pki, src: Path, tmp_path: Path, resync: str, vflag: str
) -> None:
    dest = tmp_path / "got.bin"
    with tlsctl_server(*_serve(pki, dest, resync, seed=len(resync))) as srv:
        r = openssl_client(srv.port, src, vflag)
        assert r.returncode == 0, r.stderr
        (rec,) = srv.records()
    _check(rec, dest, src, resync)


@needs_gnutls
@pytest.mark.parametrize("prio", [GNUTLS_PRIOS[2], GNUTLS_PRIOS[3]])
def test_gnutls_cli_to_serve_sim_nic_rx_with_faults(
    pki: Pki, src: Path, tmp_path: Path, prio: str
) -> None:
    dest = tmp_path / "got.bin"
    with tlsctl_server(*_serve(pki, dest, "async", seed=11)) as srv:
        r = gnutls_cli(srv.port, src, prio, pki.ca)
        assert r.returncode == 0, r.stderr
        (rec,) = srv.records()
    _check(rec, dest, src, "async")


def test_rx_resync_needs_a_nic(pki: Pki) -> None:
    """Without a NIC nothing decrypts RX (the real wire's NIC does since
    issue 14: ``tests/cli/test_cli_netwire_rx.py``)."""
    for args in (["--rx-resync", "core"],):
        r = run_tlsctl("serve", "-cert", str(pki.cert), "-key", str(pki.key), *args)
        assert r.returncode == 2, r.stderr
        assert "--rx-resync" in r.stderr and "Traceback" not in r.stderr
    r = run_tlsctl("serve", "--offload", "sim-nic", "--rx-resync", "sometimes")
    assert r.returncode == 2 and "Traceback" not in r.stderr
