"""TCP takes the record ring's pages (``offload.filechunk``, issue 13): the
host sends its framed records from the ring's file (``sendfile``) instead
of copying them.

What crossed the receiver's link equals software TX's bytes; a ring far
smaller than the transfer, reused many times under faults both ways, never
lets a marker's plaintext through; and with sendfile off (as when the
kernel refuses it) the same bytes go by ``sendmsg``, counted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from offload.netwire.netns import NetnsWire, unavailable_reason
from offload.tls_sw import SwTx
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
needs_wire = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SMALL_RING = 2_200_000
"""The smallest ring ``NetTxPath`` takes with its 64-record batches."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@needs_wire
@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "sendmsg"])
def test_wire_bytes_equal_software_tx(
    wire: NetnsWire, pki: Pki, tmp_path: Path, sendfile: bool
) -> None:
    """sendfile (framed in the ring) and send (copied into the ring): every
    frame on the receiver's link carries software TX's ciphertext for its
    sequence range, and the host's counters say how TCP got the ring's
    bytes - all from its pages, or (sendfile off) all copied."""
    size = 3 << 20
    unit = marker_file(tmp_path / "src", size)
    data = (tmp_path / "src").read_bytes()
    version, suite = SUITES[3]
    out = tmp_path / "out"
    port = 4460 + sendfile
    cap = RxCapture(wire, port)
    try:
        with out.open("wb") as f, s_server_in_rx(wire, pki, version, suite, f, port=port) as srv:
            sock, res = connect_tls(wire, version, suite, port=port)
            chan, path = offload_channel(wire, sock, res, sendfile=sendfile)
            assert path.tx is not None
            start_seq = path.tx.space.seq(path.tx.start_offset)
            with (tmp_path / "src").open("rb") as fh:
                chan.send_file(fh, 0, size - 12345)
            chan.send_all(data[size - 12345 :])
            report = path.report()
            chan.close_notify()
            chan.close()
            srv.wait(30)
    finally:
        cap.stop()
    assert sha(out) == hashlib.sha256(data).hexdigest()
    assert res.tx_info is not None
    tx = SwTx(res.tx_info)
    want = b"".join(bytes(b) for b in tx.frame(23, data[: size - 12345], False))
    want += b"".join(bytes(b) for b in tx.frame(23, data[size - 12345 :], False))
    covered = 0
    for seq, payload in cap.frames:
        off = (seq - start_seq) % (1 << 32)
        if off >= 1 << 31 or off >= len(want):
            continue  # the handshake before the marker, the close_notify after
        end = min(off + len(payload), len(want))
        assert payload[: end - off] == want[off:end], f"frame at +{off} differs from software TX"
        covered += end - off
    assert covered >= len(want)
    assert unit[:32] not in cap.payload_bytes()
    source = path.tx.store.source
    assert report is not None
    if sendfile:
        assert source.sent >= len(want) and source.copied == 0 and source.refused == ""
        assert report.stats["host_tx_sendfile_bytes"] >= len(want)
        assert report.stats["host_tx_copied_bytes"] == 0
    else:
        assert source.copied >= len(want) and source.sent == 0 and source.refused == "off"
        assert report.stats["host_tx_copied_bytes"] >= len(want)


@needs_wire
@pytest.mark.parametrize("seed", range(3))
def test_short_ring_reused_under_faults_never_leaks_plaintext(
    pki: Pki, tmp_path: Path, seed: int
) -> None:
    """A ring of 2.2 MB carries 12 MiB (reused more than five times) while
    frames are lost, reordered and duplicated both ways: TCP retransmits
    from ring pages it still holds, stale copies meet freed records, and
    still the file arrives whole, no marker plaintext crosses the
    receiver's link, and the NIC's counters add up (frames it dropped are
    the ones whose records were freed)."""
    size = 12 << 20
    unit = marker_file(tmp_path / "src", size)
    out = tmp_path / "out"
    version, suite = SUITES[seed % len(SUITES)]
    with NetnsWire(faults=f"drop=0.05,reorder=0.02,dup=0.01,seed={seed}") as wire:
        cap = RxCapture(wire, 4470)
        try:
            with (
                out.open("wb") as f,
                s_server_in_rx(wire, pki, version, suite, f, port=4470) as srv,
            ):
                sock, res = connect_tls(wire, version, suite, port=4470)
                chan, path = offload_channel(wire, sock, res, ring_size=SMALL_RING)
                assert path.tx is not None
                start = path.tx.store.acked
                with (tmp_path / "src").open("rb") as fh:
                    chan.send_file(fh, 0, size)
                chan.close_notify()
                chan.close()
                srv.wait(120)
        finally:
            cap.stop()
        stats = nic_stats(wire)
    assert sha(out) == sha(tmp_path / "src")
    assert unit[:32] not in cap.payload_bytes()
    assert path.tx.store.acked - start >= size > 5 * SMALL_RING
    assert path.tx.store.source.sent >= size and path.tx.store.source.copied == 0
    nic, dev, faults = stats["nic"], stats["device"], stats["faults"]
    assert faults["out"]["drop"] > 0 and faults["back"]["drop"] > 0
    assert dev["tx_tls_ooo"] > 0
    assert (
        nic["frames_out"] == nic["frames_passed"] + nic["frames_offloaded"] + nic["frames_dropped"]
    )
    assert nic["frames_dropped"] == dev["tx_tls_drop_no_sync_data"]
