"""The real wire (issue 13): two namespaces, the kernel's TCP, the NIC in its own process.

Needs root and /dev/net/tun (this machine and CI have both); without them
every test here skips with that reason, and the unavailable-path test shows
the one-line error.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from offload.netwire import netns as netns_mod
from offload.netwire.netns import NetnsWire, WireUnavailable, unavailable_reason
from offload.netwire.txpath import NetTxPath
from offload.tls_sw import SwTx
from offload.uapi import CryptoInfo
from tests.helpers.netwire_helpers import (
    SUITES,
    RxCapture,
    connect_tls,
    flow_seen,
    lose_frames,
    marker_file,
    nic_stats,
    offload_channel,
    s_server_in_rx,
    wait_listening,
)
from tests.helpers.peers import Pki, make_pki, sha, spawn

REASON = unavailable_reason()
needs_wire = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _shm_files() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"tlsctl-rs-{os.getpid()}-")]


def test_unavailable_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the os module netns_mod calls
    with pytest.raises(WireUnavailable) as ei, NetnsWire():
        pass
    msg = str(ei.value)
    assert "\n" not in msg and "needs root" in msg
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns_mod, "TUN_PATH", "/nonexistent/tun")
    assert "/nonexistent/tun" in (unavailable_reason() or "")


@needs_wire
@pytest.mark.parametrize("fail", [False, True])
def test_nothing_left_behind(fail: bool) -> None:
    """Namespaces, links (they live in the namespaces), the NIC process and
    its control directory all go, whether the block ends well or raises."""
    w = NetnsWire()
    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext(), w:
        names, pid, rundir = dict(w.ns), w.nic_pid, w.rundir
        assert all(n in _netns_list() for n in names.values())
        assert Path(f"/proc/{pid}").exists() and Path(w.control).exists()
        if fail:
            raise RuntimeError("boom")
    listed = _netns_list()
    assert not any(n in listed for n in names.values())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert not Path(rundir).exists()


@needs_wire
@pytest.mark.parametrize("size", [0, 1, 1 << 20, 64 << 20])
def test_plain_tcp_across_the_nic(wire: NetnsWire, size: int) -> None:
    """The baseline: plain TCP through the forwarder, every byte, and the
    kernel really handed the NIC GSO frames (bigger than the 1500 MTU)."""
    data = os.urandom(size)
    srv = wire.socket("rx")
    srv.bind((wire.addr("rx"), 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = hashlib.sha256()
    n = [0]

    def receive() -> None:
        c, _ = srv.accept()
        with c:
            while chunk := c.recv(1 << 20):
                got.update(chunk)
                n[0] += len(chunk)

    t = threading.Thread(target=receive)
    t.start()
    before = nic_stats(wire)["nic"]
    with wire.socket("tx") as cli:
        cli.settimeout(30)
        cli.connect((wire.addr("rx"), port))
        cli.sendall(data)
    t.join(60)
    srv.close()
    assert n[0] == size
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()
    after = nic_stats(wire)["nic"]
    frames = after["frames_out"] - before["frames_out"]
    nbytes = after["bytes_out"] - before["bytes_out"]
    assert after["frames_offloaded"] == before["frames_offloaded"]  # no context: untouched
    if size == 64 << 20:
        assert nbytes > size and nbytes / frames > 1500  # GSO frames, not MTU-sized ones


@needs_wire
def test_tlsctl_send_sw_to_openssl_across_the_nic(
    wire: NetnsWire, pki: Pki, tmp_path: Path
) -> None:
    """Our CLI in the sender namespace, ``openssl s_server`` in the receiver's."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 << 20))
    out = tmp_path / "out"
    with (
        out.open("wb") as f,
        s_server_in_rx(wire, pki, "1.3", "TLS_AES_128_GCM_SHA256", f, port=4440) as srv,
    ):
        cmd = wire.argv(
            "tx",
            [
                sys.executable,
                "-m",
                "tlsctl.cli",
                "send",
                str(src),
                "--connect",
                f"{wire.addr('rx')}:4440",
                "--offload",
                "sw",
                "--insecure",
            ],
        )
        r = subprocess.run(cmd, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        srv.wait(20)
    assert sha(out) == sha(src)


@needs_wire
@pytest.mark.parametrize(("version", "suite"), SUITES, ids=[f"{v}-{s}" for v, s in SUITES])
def test_simnic_on_the_real_wire_to_openssl(
    wire: NetnsWire, pki: Pki, tmp_path: Path, version: str, suite: str
) -> None:
    """``send --offload sim-nic`` through the library: the host frames, the
    kernel's TCP segments, the NIC process encrypts; s_server decrypts it all."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(4 << 20))
    out = tmp_path / "out"
    before = nic_stats(wire)["device"]
    with out.open("wb") as f, s_server_in_rx(wire, pki, version, suite, f, port=4441) as srv:
        sock, res = connect_tls(wire, version, suite, port=4441)
        chan, _ = offload_channel(wire, sock, res)
        with src.open("rb") as fh:
            chan.send_file(fh, 0, src.stat().st_size)
        chan.close_notify()
        chan.close()
        srv.wait(20)
    assert sha(out) == sha(src)
    after = nic_stats(wire)["device"]
    assert after["tx_tls_ctx"] - before["tx_tls_ctx"] == 1
    assert after["tx_tls_del"] - before["tx_tls_del"] == 1  # after the last ACK
    assert after["tx_tls_encrypted_bytes"] - before["tx_tls_encrypted_bytes"] >= 4 << 20
    assert not _shm_files()


@needs_wire
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"])
def test_device_rekey_with_real_retransmissions(
    wire: NetnsWire, pki: Pki, tmp_path: Path, suite: str
) -> None:
    """Issue 13 item 4 on the real wire: a KeyUpdate every 128 KiB with the
    device context in the NIC process, and frames lost after the NIC around
    the key changes so the kernel retransmits records of keys already
    replaced.  The NIC keeps each old key until the host (reading
    tcpi_bytes_acked) says every record under it is acknowledged: s_server
    authenticates every record under the right key (hash equal), nothing
    is dropped for want of a record, and at the end the NIC holds one key."""
    size = 2 << 20
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    out = tmp_path / "out"
    before = nic_stats(wire)
    with out.open("wb") as f, s_server_in_rx(wire, pki, "1.3", suite, f, port=4446) as srv:
        sock, res = connect_tls(wire, "1.3", suite, port=4446)
        lose_frames(wire, sock, [2, 3, 5, 6, 9, 10, 14, 15, 20, 21])
        chan, path = offload_channel(wire, sock, res)
        chan.key_update_every = 128 << 10
        with src.open("rb") as fh:
            chan.send_file(fh, 0, size)
        tx = path.tx
        assert tx is not None
        updates = chan.key_updates_sent
        chan.close_notify()
        chan.close()
        srv.wait(20)
        assert len(tx._epochs) == 1  # the host let go of every old key
    assert sha(out) == sha(src)
    assert updates == size // (128 << 10) - 1
    after = nic_stats(wire)
    moved = {k: after["device"][k] - before["device"][k] for k in after["device"]}
    assert after["nic"]["frames_lost"] - before["nic"]["frames_lost"] == 10
    assert moved["tx_tls_ooo"] >= 1 and moved["tx_tls_drop_no_sync_data"] == 0
    assert moved["tx_tls_ctx"] == 1 and moved["tx_tls_del"] == 1


def _software_stream(res_info: CryptoInfo | None, data: bytes) -> bytes:
    """What software TX (``SwTx``) sends for ``data`` with the same keys:
    the bytes the NIC must put on the wire for the same sequence range."""
    assert res_info is not None  # the handshake's TX keys
    tx = SwTx(res_info)
    return b"".join(bytes(b) for b in tx.frame(23, data, False))


@needs_wire
@pytest.mark.parametrize(("version", "suite"), [SUITES[0], SUITES[3]], ids=["1.2", "1.3"])
def test_retransmission_resyncs_to_software_bytes(
    wire: NetnsWire, pki: Pki, tmp_path: Path, version: str, suite: str
) -> None:
    """Frames lost after the NIC make the kernel retransmit for real; the
    NIC resyncs from the host's store (ooo, dump counters move) and every
    frame that crossed the receiver's link - the retransmissions included -
    carries exactly software TX's ciphertext for its sequence range.  A
    marker payload never crosses in plaintext."""
    size = 2 << 20
    unit = marker_file(tmp_path / "src", size)
    data = (tmp_path / "src").read_bytes()
    out = tmp_path / "out"
    cap = RxCapture(wire, 4442)
    before = nic_stats(wire)
    try:
        with out.open("wb") as f, s_server_in_rx(wire, pki, version, suite, f, port=4442) as srv:
            sock, res = connect_tls(wire, version, suite, port=4442)
            lose_frames(wire, sock, [3, 4, 9])
            chan, path = offload_channel(wire, sock, res)
            assert path.tx is not None
            start_seq = path.tx.space.seq(path.tx.start_offset)
            chan.send_all(data)
            lost = flow_seen(wire, sock)["lost"]
            chan.close_notify()
            chan.close()
            srv.wait(20)
    finally:
        cap.stop()
    assert sha(out) == hashlib.sha256(data).hexdigest()
    after = nic_stats(wire)
    moved = {k: after["device"][k] - before["device"][k] for k in after["device"]}
    assert after["nic"]["frames_lost"] - before["nic"]["frames_lost"] == 3
    assert moved["tx_tls_ooo"] >= 1 and moved["tx_tls_dump_bytes"] > 0
    assert moved["tx_tls_drop_no_sync_data"] == 0
    # Every captured byte at or after the start marker equals software TX's.
    assert res.tx_info is not None
    want = _software_stream(res.tx_info, data)
    covered = bytearray(len(want))  # which bytes some captured frame carried
    for seq, payload in cap.frames:
        off = (seq - start_seq) % (1 << 32)
        if off >= 1 << 31:
            continue  # the handshake, before the marker
        end = min(off + len(payload), len(want))
        assert payload[: end - off] == want[off:end], f"frame at +{off} differs from software TX"
        covered[off:end] = b"\1" * (end - off)
    assert all(covered)
    # The lost frames' bytes reached the receiver only as retransmissions.
    assert len(lost) == 3
    for seq, n in lost:
        off = (seq - start_seq) % (1 << 32)
        assert off < len(want) and all(covered[off : min(off + n, len(want))])
    captured = cap.payload_bytes()
    assert unit[:32] not in captured


@needs_wire
def test_capture_sees_plaintext_without_offload(wire: NetnsWire) -> None:
    """The capture's control: the same marker over plain TCP is found, so
    its absence above means ciphertext, not a blind capture."""
    unit = b"<<tlsctl-marker-PLAINTEXT-must-not-cross-the-wire>>"
    srv = wire.socket("rx")
    srv.bind((wire.addr("rx"), 4443))
    srv.listen(1)
    cap = RxCapture(wire, 4443)
    try:

        def receive() -> None:
            c, _ = srv.accept()
            with c:
                while c.recv(1 << 16):
                    pass

        t = threading.Thread(target=receive)
        t.start()
        with wire.socket("tx") as cli:
            cli.connect((wire.addr("rx"), 4443))
            cli.sendall(unit * 1000)
        t.join(20)
    finally:
        cap.stop()
        srv.close()
    assert unit[:32] in cap.payload_bytes()


@needs_wire
@pytest.mark.parametrize("size", [0, 1, 64 << 20])
def test_simnic_sizes_to_openssl(wire: NetnsWire, pki: Pki, tmp_path: Path, size: int) -> None:
    """0 bytes (only close_notify crosses), one byte, 64 MiB (the ring wraps,
    records are freed as TCP acknowledges them)."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(size))
    out = tmp_path / "out"
    version, suite = SUITES[3]
    with out.open("wb") as f, s_server_in_rx(wire, pki, version, suite, f, port=4444) as srv:
        sock, res = connect_tls(wire, version, suite, port=4444)
        chan, path = offload_channel(wire, sock, res)
        with src.open("rb") as fh:
            chan.send_file(fh, 0, size)
        chan.close_notify()
        assert path.tx is not None
        dev = chan.k.device_state()  # what inspect-context shows
        assert dev is not None and dev.report.driver == "sim-nic"
        assert dev.report.stats["tx_tls_ctx"] >= 1 and dev.report.device_seconds > 0
        assert dev.start_marker_tcp_seq == path.tx.space.seq(path.tx.start_offset)
        chan.close()
        srv.wait(30)
    assert sha(out) == sha(src)
    assert path.tx.acked == path.tx.next_offset  # every record acknowledged and freed
    assert path.tx.records_in_flight == 0
    # sendfile framed 4 MiB batches into the default ring (a quarter of it):
    # one record store entry each, not one per 1 MiB (the host's per-batch
    # cost is paid a quarter as often).
    batch = path.tx.batch_records * path.tx.max_payload
    assert batch >= 4_000_000
    assert len(path.tx._starts) == -(-size // batch) + 1  # and close_notify


@needs_wire
def test_simnic_to_tlsctl_serve_in_the_other_namespace(
    wire: NetnsWire, pki: Pki, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5 << 20))
    out = tmp_path / "out"
    version, suite = SUITES[1]
    cmd = wire.argv(
        "rx",
        [
            sys.executable,
            "-m",
            "tlsctl.cli",
            "serve",
            "-accept",
            f"{wire.addr('rx')}:4445",
            "-cert",
            str(pki.rsa_cert),
            "-key",
            str(pki.rsa_key),
            "-naccept",
            "1",
            "-o",
            str(out),
            "--json",
        ],
    )
    with spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as srv:
        wait_listening(srv, 4445)
        sock, res = connect_tls(wire, version, suite, port=4445)
        chan, _ = offload_channel(wire, sock, res)
        with src.open("rb") as fh:
            chan.send_file(fh, 0, src.stat().st_size)
        chan.close_notify()
        chan.close()
        _stdout, stderr = srv.communicate(timeout=30)
        assert srv.returncode == 0, stderr.decode()
    assert sha(out) == sha(src)


@needs_wire
def test_small_ring_waits_for_acks(wire: NetnsWire, pki: Pki, tmp_path: Path) -> None:
    """A record ring smaller than what TCP keeps in flight: the host
    waits for tcpi_bytes_acked to free records before it frames more, the
    ring wraps many times, and every byte still arrives."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(8 << 20))
    out = tmp_path / "out"
    version, suite = SUITES[5]
    waits = []
    with out.open("wb") as f, s_server_in_rx(wire, pki, version, suite, f, port=4446) as srv:
        sock, res = connect_tls(wire, version, suite, port=4446)
        chan, path = offload_channel(wire, sock, res, ring_size=2_200_000)
        assert path.tx is not None
        inner = path.tx.store.wait_room
        assert inner is not None

        def counted_wait() -> bool:
            waits.append(1)
            return inner()

        path.tx.store.wait_room = counted_wait
        start = path.tx.store.acked
        # The receiver stops reading for a second: its window closes, the
        # sender's queue fills past the ring and the host must wait for
        # acknowledgements (without the pause, a fast reader on an idle
        # machine may acknowledge every record before the ring fills).
        os.kill(srv.pid, signal.SIGSTOP)
        resume = threading.Timer(1.0, os.kill, (srv.pid, signal.SIGCONT))
        resume.start()
        try:
            with src.open("rb") as fh:
                chan.send_file(fh, 0, 8 << 20)
        finally:
            resume.join()
            os.kill(srv.pid, signal.SIGCONT)
        chan.close_notify()
        chan.close()
        srv.wait(30)
    assert sha(out) == sha(src)
    with pytest.raises(ValueError, match="at least"):
        NetTxPath(sock, wire.control, ring_size=300_000)
    # The ring was full at least once (while the receiver was stopped), and
    # 8 MiB went through a ring of 2.2 MB: it wrapped at least three times.
    assert waits
    assert path.tx.store.acked - start >= 8 << 20 > 3 * 2_200_000


@needs_wire
def test_owner_killed_leaves_nothing_behind() -> None:
    """SIGKILL the process that built the wire: the NIC gets SIGTERM from
    the kernel (PR_SET_PDEATHSIG), removes the namespaces and the control
    directory, and exits."""
    code = (
        "from offload.netwire.netns import NetnsWire\n"
        "import sys, time\n"
        "w = NetnsWire().__enter__()\n"
        "print(w.ns['tx'], w.ns['rx'], w.nic_pid, w.rundir, flush=True)\n"
        "time.sleep(60)\n"
    )
    with spawn([sys.executable, "-c", code], stdout=subprocess.PIPE) as owner:
        assert owner.stdout is not None
        tx, rx, pid, rundir = owner.stdout.readline().decode().split()
        assert tx in _netns_list()
        owner.kill()
        owner.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        tx in _netns_list() or rx in _netns_list() or Path(f"/proc/{pid}").exists()
    ):
        time.sleep(0.1)
    assert tx not in _netns_list() and rx not in _netns_list()
    assert not Path(f"/proc/{pid}").exists()
    assert not Path(rundir).exists()
