"""RX device offload on the real wire (issue 14): the NIC process decrypts what it
forwards to the host, the marks travel beside the bytes in the mark ring.

Peers are real: ``openssl s_client`` in the peer namespace sends a file to a
receiver in the host namespace whose layer reads through
``offload.netwire.rxpath.NetRxPath``; the kernel's TCP on both sides does
all segmentation, retransmission and ACKing.  Hashes compared, every
record counted once (device + partial + software = records), the NIC's
``rx_tls_*`` counters moving.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from offload.ktls_socket import KTLSSocket
from offload.netdev import RxSyncType
from offload.netwire.netns import NetnsWire, unavailable_reason
from offload.netwire.rxpath import NetRxPath
from tests.helpers.netwire_helpers import nic_stats
from tests.helpers.peers import Pki, make_pki, spawn
from tlsctl.handshake import install_offload, run_handshake
from tlsctl.session.channel import KtlsChannel
from tlsctl.tlsconf import TlsOptions, server_context

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
    pytest.mark.timeout(300),
]
PORT = 4433
SCHEMES = {"driver": RxSyncType.DRIVER_REQ, "core": RxSyncType.CORE_NEXT_HINT,
           "async": RxSyncType.DRIVER_REQ_ASYNC}  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def wire() -> Iterator[NetnsWire]:
    with NetnsWire() as w:
        yield w


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "in.bin"
    p.write_bytes(os.urandom(3 << 20))
    return p


def s_client_args(wire: NetnsWire, version: str, suite: str, port: int) -> list[str]:
    cmd = ["openssl", "s_client", "-connect", f"{wire.addr('tx')}:{port}",
           "-quiet", "-no_ign_eof", "-nocommands"]  # fmt: skip
    if version == "1.3":
        return [*cmd, "-tls1_3", "-ciphersuites", suite]
    return [*cmd, "-tls1_2", "-cipher", suite]


def receive(
    wire: NetnsWire,
    pki: Pki,
    data: Path,
    version: str = "1.3",
    suite: str = "TLS_AES_128_GCM_SHA256",
    sync: RxSyncType = RxSyncType.DRIVER_REQ,
    port: int = PORT,
) -> dict[str, Any]:
    """``s_client`` (peer namespace) sends ``data`` to a layer reading through
    the NIC's RX offload (host namespace); what was received and counted."""
    lsock = wire.socket("tx")
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((wire.addr("tx"), port))
    lsock.listen(1)
    lsock.settimeout(30)
    before = nic_stats(wire)
    cmd = wire.argv("rx", s_client_args(wire, version, suite, port))
    with (
        lsock,
        data.open("rb") as f,
        spawn(cmd, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as peer,
    ):
        sock, _ = lsock.accept()
        sock.settimeout(60)
        opts = TlsOptions(tls1_3=True) if version == "1.3" else TlsOptions(tls1_2=True)
        ctx = server_context(opts, cert=str(pki.rsa_cert), key=str(pki.rsa_key))
        res = run_handshake(sock, ctx, "server")
        path = NetRxPath(sock, wire.control, sync)
        k = install_offload(KTLSSocket(sock, backend="sw", rxpath=path), res)
        chan = KtlsChannel(k, res)
        h = hashlib.sha256()
        n = 0
        buf = memoryview(bytearray(1 << 20))
        while got := chan.recv_into(buf):
            h.update(buf[:got])
            n += got
        rx = k.rx_device_report()
        stats = k.stats.snapshot() if hasattr(k, "stats") else {}
        _, rx_end = chan.live_seqs()
        with_threads = threading.Thread(target=chan.close)
        with_threads.start()
        with_threads.join(30)
        peer.communicate(timeout=30)
    after = nic_stats(wire)
    dev = {k2: int(v) - int(before["device"].get(k2, 0)) for k2, v in after["device"].items()}
    rxn = {k2: int(v) - int(before["rx_nic"].get(k2, 0)) for k2, v in after["rx_nic"].items()}
    return {
        "sha256": h.hexdigest(),
        "bytes": n,
        "rx": rx,
        "tls_stats": stats,
        "device": dev,
        "rx_nic": rxn,
        "records": None if rx_end is None or res.rx_seq is None else rx_end - res.rx_seq,
        "faults": {d: dict(c) for d, c in after.get("faults", {}).items()},
    }


def sha_file(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def check(r: dict[str, Any], src: Path, sync: RxSyncType = RxSyncType.DRIVER_REQ) -> None:
    assert r["sha256"] == sha_file(src) and r["bytes"] == src.stat().st_size
    rx = r["rx"]
    assert rx is not None and rx["rx_resync"] == sync.name
    total = rx["rx_records_device"] + rx["rx_records_partial"] + rx["rx_records_sw"]
    if r["records"] is not None:
        assert total == r["records"]
    if r["bytes"] > 1 << 20:
        assert rx["rx_records_device"] > 0
        assert r["device"]["rx_tls_decrypted_packets"] > 0
        assert r["device"]["rx_tls_ctx"] >= 1


def test_s_client_to_rx_offload_fault_free(wire: NetnsWire, pki: Pki, src: Path) -> None:
    r = receive(wire, pki, src)
    check(r, src)
    print(r)
