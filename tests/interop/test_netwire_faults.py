"""Faults on real frames (issue 13 item 3): the NIC process loses,
duplicates, reorders and delays frames after it, both ways; the kernel's
own retransmissions then drive the NIC's resync path."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from offload.netwire.faults import FaultStage, WireFaults
from offload.netwire.netns import NetnsWire, unavailable_reason
from tests.helpers.netwire_helpers import (
    SUITES,
    RxCapture,
    connect_tls,
    marker_file,
    nic_stats,
    offload_channel,
    s_server_in_rx,
)
from tests.helpers.peers import Pki, make_pki, sha

REASON = unavailable_reason()
SOAK: list[tuple[int, int]] = []
"""(faults injected, resyncs) per seed run, for the soak's summary."""
SEEDS = int(os.environ.get("TLSCTL_NETWIRE_SEEDS", "6"))
"""Seeds of the fault soak (6 in the suite; the issue's >= 200 with the
variable set: ``TLSCTL_NETWIRE_SEEDS=200 pytest tests/interop/test_netwire_faults.py``)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_spec_parses_and_refuses_model_only_kinds() -> None:
    f = WireFaults.parse("drop=0.01, reorder=0.02,dup=0.005,delay=1.5,seed=9")
    assert (f.drop, f.reorder, f.dup, f.delay, f.seed) == (0.01, 0.02, 0.005, 1.5, 9)
    assert str(f) == "drop=0.01,dup=0.005,reorder=0.02,delay=1.5,seed=9"
    for bad, why in (
        ("split=0.1", "means nothing on a real wire"),
        ("redirect=0.1", "means nothing on a real wire"),
        ("drop=2", "not a probability"),
        ("jitter=1", "unknown fault"),
        ("seed=x", "must be an integer"),
        ("drop", "needs a value"),
    ):
        with pytest.raises(ValueError, match=why) as ei:
            WireFaults.parse(bad)
        assert "\n" not in str(ei.value)
    with pytest.raises(ValueError):
        NetnsWire(faults="split=0.5")


def _collect(out: list[bytes], frame: memoryview | bytes) -> None:
    """A wire that keeps a copy of each frame it is given."""
    out.append(bytes(frame))


def test_stage_is_seeded_and_counts() -> None:
    """Same seed, same decisions; every frame is delivered, dropped or held."""
    spec = WireFaults.parse("drop=0.1,dup=0.1,reorder=0.2,seed=4")
    runs = []
    for _ in range(2):
        st = FaultStage(spec, "out")
        out: list[bytes] = []
        for i in range(1000):
            st.send(memoryview(i.to_bytes(4, "big")), functools.partial(_collect, out), 0.0)
        st.release(functools.partial(_collect, out), 1.0)
        runs.append((out, dict(st.counts)))
    assert runs[0] == runs[1]
    out, c = runs[0]
    assert c["drop"] > 50 and c["dup"] > 50 and c["reorder"] > 100
    assert len(out) == 1000 - c["drop"] + c["dup"]
    assert out != sorted(out)  # reordered


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
@pytest.mark.parametrize("seed", range(SEEDS))
def test_simnic_under_real_frame_faults(pki: Pki, tmp_path: Path, seed: int) -> None:
    """Drop both ways, reorder, duplicates: every byte arrives, no plaintext
    of the marker on the receiver's link, and the NIC's counters add up.
    (A seed may draw no fault on a 2 MiB transfer's few GSO frames; the
    soak's sum and ``test_ten_percent_drop_each_way`` show faults hit.)"""
    version, suite = SUITES[seed % len(SUITES)]
    unit = marker_file(tmp_path / "src", 2 << 20)
    out = tmp_path / "out"
    with NetnsWire(faults=f"drop=0.03,reorder=0.03,dup=0.01,seed={seed}") as wire:
        cap = RxCapture(wire, 4450)
        try:
            with (
                out.open("wb") as f,
                s_server_in_rx(wire, pki, version, suite, f, port=4450) as srv,
            ):
                sock, res = connect_tls(wire, version, suite, port=4450)
                chan, _ = offload_channel(wire, sock, res)
                with (tmp_path / "src").open("rb") as fh:
                    chan.send_file(fh, 0, 2 << 20)
                chan.close_notify()
                chan.close()
                srv.wait(60)
        finally:
            cap.stop()
        stats = nic_stats(wire)
    assert sha(out) == sha(tmp_path / "src")
    assert unit[:32] not in cap.payload_bytes()
    nic, dev, faults = stats["nic"], stats["device"], stats["faults"]
    assert (
        nic["frames_out"] == nic["frames_passed"] + nic["frames_offloaded"] + nic["frames_dropped"]
    )
    assert (
        nic["frames_offloaded"] == dev["tx_tls_encrypted_packets"] + dev["tx_tls_skip_no_sync_data"]
    )
    assert nic["frames_dropped"] == dev["tx_tls_drop_no_sync_data"]
    SOAK.append((sum(faults["out"].values()) + sum(faults["back"].values()), dev["tx_tls_ooo"]))


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_ten_percent_drop_each_way(pki: Pki, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(512 << 10))
    out = tmp_path / "out"
    version, suite = SUITES[4]
    with NetnsWire(faults="drop=0.1,seed=11") as wire:
        with out.open("wb") as f, s_server_in_rx(wire, pki, version, suite, f, port=4451) as srv:
            sock, res = connect_tls(wire, version, suite, port=4451)
            chan, _ = offload_channel(wire, sock, res)
            with src.open("rb") as fh:
                chan.send_file(fh, 0, 512 << 10)
            chan.close_notify()
            chan.close()
            srv.wait(120)
        stats = nic_stats(wire)
    assert sha(out) == sha(src)
    assert stats["faults"]["out"]["drop"] > 0 and stats["faults"]["back"]["drop"] > 0
    assert stats["device"]["tx_tls_ooo"] > 0


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_soak_hit_faults_and_resyncs() -> None:
    """Run after the seeds (file order): across them, faults were injected
    and the NIC resynced on retransmissions."""
    if not SOAK:
        pytest.skip("the seed runs were deselected")
    print(
        f"soak: {len(SOAK)} seeds, faults {sum(f for f, _ in SOAK)}, "
        f"resyncs {sum(r for _, r in SOAK)}"
    )
    assert sum(f for f, _ in SOAK) > 0 and sum(r for _, r in SOAK) > 0
