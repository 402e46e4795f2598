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

import contextlib
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from offload.ktls_socket import KTLSSocket
from offload.netdev import RxSyncType
from offload.netwire.control import ControlClient, flow_of, flow_to_json
from offload.netwire.netns import NetnsWire, unavailable_reason
from offload.netwire.rxpath import NetRxPath
from tests.helpers.netwire_helpers import SUITES, nic_stats
from tests.helpers.peers import Pki, make_pki, spawn
from tlsctl.handshake import install_offload, run_handshake
from tlsctl.session.channel import KtlsChannel
from tlsctl.tlsconf import TlsOptions, client_context, server_context

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


def s_client_peer(
    wire: NetnsWire, data: Path, version: str, suite: str
) -> Callable[[int], AbstractContextManager[object]]:
    """A peer: ``openssl s_client`` in the peer namespace sending ``data``."""

    @contextlib.contextmanager
    def run(port: int) -> Iterator[object]:
        cmd = wire.argv("rx", s_client_args(wire, version, suite, port))
        with (
            data.open("rb") as f,
            spawn(cmd, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as peer,
        ):
            yield peer
            peer.communicate(timeout=60)

    return run


def wait_rx_context(wire: NetnsWire, sock: socket.socket, gen: int) -> None:
    """Until the NIC holds RX context generation ``gen`` for what ``sock``
    (the peer's) sends (a wait, not a timed assertion: 30 s, then fail)."""
    c = ControlClient(wire.control)
    try:
        deadline = time.monotonic() + 30
        while True:
            seen = c.call("flow", direction="rx", flow=flow_to_json(flow_of(sock)))
            if seen["ctx"] and seen["gen"] >= gen:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"no RX context generation {gen} on the NIC: {seen}")
            time.sleep(0.005)
    finally:
        c.close()


def layer_peer(
    wire: NetnsWire, data: bytes, key_updates: int
) -> Callable[[int], AbstractContextManager[object]]:
    """A peer: this project's TLS 1.3 software sender in the peer namespace,
    sending ``data`` in ``key_updates + 1`` pieces with a KeyUpdate between.
    Each piece waits for the NIC to hold the host's context for its key, so
    every context starts exactly where its bytes do (in sync, whatever the
    scheme)."""

    @contextlib.contextmanager
    def run(port: int) -> Iterator[object]:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                sock = wire.socket("rx")
                sock.settimeout(30)
                sock.connect((wire.addr("tx"), port))
                ctx = client_context(TlsOptions(tls1_3=True), verify=False)
                res = run_handshake(sock, ctx, "client")
                chan = KtlsChannel(install_offload(KTLSSocket(sock, backend="sw"), res), res)
                step = -(-len(data) // (key_updates + 1))
                for n, i in enumerate(range(0, len(data), step)):
                    if i:
                        chan.send_key_update()
                    wait_rx_context(wire, sock, n + 1)
                    chan.send_all(data[i : i + step])
                chan.close_notify()
                while chan.recv(1 << 16):  # until the host's close_notify: no RST
                    pass
                chan.close()
            except BaseException as exc:  # reported by the test thread
                errors.append(exc)

        t = threading.Thread(target=send)
        t.start()
        yield t
        t.join(60)
        if errors:
            raise errors[0]

    return run


def receive(
    wire: NetnsWire,
    pki: Pki,
    peer: Callable[[int], AbstractContextManager[object]],
    sync: RxSyncType = RxSyncType.DRIVER_REQ,
    port: int = PORT,
) -> dict[str, Any]:
    """``peer`` connects and sends to a layer reading through the NIC's RX
    offload (host namespace); what was received and counted."""
    lsock = wire.socket("tx")
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((wire.addr("tx"), port))
    lsock.listen(1)
    lsock.settimeout(30)
    before = nic_stats(wire)
    with lsock, peer(port):
        sock, _ = lsock.accept()
        sock.settimeout(60)
        ctx = server_context(TlsOptions(), cert=str(pki.rsa_cert), key=str(pki.rsa_key))
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
        stats = k.stats.snapshot()
        _, rx_end = chan.live_seqs()
        key_updates = chan.key_updates
        chan.close()
    after = nic_stats(wire)
    dev = {k2: int(v) - int(before["device"].get(k2, 0)) for k2, v in after["device"].items()}
    rxn = {k2: int(v) - int(before["rx_nic"].get(k2, 0)) for k2, v in after["rx_nic"].items()}
    faults = {
        d: {f: int(v) - int(before.get("faults", {}).get(d, {}).get(f, 0)) for f, v in c.items()}
        for d, c in after.get("faults", {}).items()
    }
    return {
        "sha256": h.hexdigest(),
        "bytes": n,
        "rx": rx,
        "tls_stats": stats,
        "device": dev,
        "rx_nic": rxn,
        "records": None if rx_end is None or res.rx_seq is None else rx_end - res.rx_seq,
        "key_updates": key_updates,
        "faults": faults,
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
    if r["bytes"] > 1 << 20 and sync != RxSyncType.CORE_NEXT_HINT:
        # (structural, see tests/cli/test_cli_netwire_rx.py's check)
        assert rx["rx_records_device"] > 0
        assert r["device"]["rx_tls_decrypted_packets"] > 0
        assert r["device"]["rx_tls_ctx"] >= 1


def check_counters(r: dict[str, Any]) -> None:
    """The NIC's own books: each frame it marked decrypted is one its
    driver counted, and every record the host read came one way."""
    assert r["rx_nic"]["rx_frames_decrypted"] == r["device"]["rx_tls_decrypted_packets"]
    assert r["device"]["rx_tls_ctx"] == r["device"]["rx_tls_del"]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_s_client_to_rx_offload_fault_free(
    wire: NetnsWire, pki: Pki, src: Path, version: str
) -> None:
    suite = "TLS_AES_128_GCM_SHA256" if version == "1.3" else "ECDHE-RSA-AES128-GCM-SHA256"
    r = receive(wire, pki, s_client_peer(wire, src, version, suite))
    check(r, src)
    check_counters(r)


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_key_update_on_rx_stops_the_context_and_a_new_one_decrypts(
    wire: NetnsWire, pki: Pki, scheme: str
) -> None:
    """TLS 1.3 KeyUpdates from the peer: the NIC stops at each (it decrypted
    a handshake record), the host deletes the context and adds one with
    the next key (a generation each), which gets back in sync by the
    scheme and decrypts again; every byte right."""
    data = os.urandom(3 << 20)
    r = receive(wire, pki, layer_peer(wire, data, key_updates=2), SCHEMES[scheme])
    assert r["sha256"] == hashlib.sha256(data).hexdigest()
    assert r["key_updates"] == 2
    rx = r["rx"]
    assert rx["rx_device_contexts"] == 3
    assert r["device"]["rx_tls_ctx"] >= 3
    # Record numbers restart with each key: the count is at least the
    # last epoch's records plus the two KeyUpdates and the data before them.
    total = rx["rx_records_device"] + rx["rx_records_partial"] + rx["rx_records_sw"]
    assert total >= r["records"] + 2 + 2 * (1 << 20) // (1 << 14)
    # Every record by the NIC: each context starts where its key's bytes do,
    # and the NIC stops by itself after the KeyUpdate it decrypted.
    assert rx["rx_records_sw"] == rx["rx_records_partial"] == 0
    assert rx["rx_records_device"] >= 3 * (1 << 20) // (1 << 14)
    check_counters(r)


SOAK: dict[str, list[tuple[int, int, int, int]]] = {s: [] for s in SCHEMES}
"""Per scheme, per seed: (faults injected, records by the NIC, repaired, in software)."""
SEEDS = int(os.environ.get("TLSCTL_NETWIRE_RX_SEEDS", "2"))
"""Seeds per resync scheme of the RX fault soak (2 in the suite; the issue's
>= 200 by hand: ``TLSCTL_NETWIRE_RX_SEEDS=200 pytest tests/interop/test_netwire_rx.py -k soak``)."""


@pytest.fixture(scope="module")
def src_soak(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("soak") / "in.bin"
    p.write_bytes(os.urandom(1 << 20))
    return p


@pytest.mark.parametrize("seed", range(SEEDS))
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_soak_rx_offload_under_real_frame_faults(
    pki: Pki, src_soak: Path, scheme: str, seed: int
) -> None:
    """Drop, reorder, duplicate (before the NIC towards the host, after it
    away from it): every byte right, each record counted once, the NIC's
    books balanced."""
    version, suite = SUITES[seed % len(SUITES)]
    sync = SCHEMES[scheme]
    with NetnsWire(faults=f"drop=0.03,reorder=0.03,dup=0.01,seed={seed}") as w:
        r = receive(w, pki, s_client_peer(w, src_soak, version, suite), sync, port=4460)
    check(r, src_soak, sync)
    check_counters(r)
    rx = r["rx"]
    injected = sum(sum(c.values()) for c in r["faults"].values())
    SOAK[scheme].append(
        (injected, rx["rx_records_device"], rx["rx_records_partial"], rx["rx_records_sw"])
    )


def test_soak_summary() -> None:
    """After the seed runs (file order): faults were injected, the NIC
    decrypted records under them; the figures, per scheme."""
    if not any(SOAK.values()):
        pytest.skip("the soak runs were deselected")
    for scheme, runs in SOAK.items():
        print(
            f"rx soak {scheme}: {len(runs)} seeds, faults {sum(r[0] for r in runs)}, records "
            f"device {sum(r[1] for r in runs)} repaired {sum(r[2] for r in runs)} "
            f"software {sum(r[3] for r in runs)}"
        )
    assert sum(r[0] for runs in SOAK.values() for r in runs) > 0
    assert sum(r[1] for runs in SOAK.values() for r in runs) > 0
