"""``tlsctl bench --direction rx``: the receiving host's CPU, with and without the NIC.

Real processes (a sender replaying sealed records over loopback, a
receiving worker): the rows exist with their units, the byte counts were
confirmed, the NIC's counters and CPU are non-zero where it decrypted and
zero where it did not.  No timing is asserted.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from tests.cli.test_bench import bench, check_schema
from tlsctl.benchrun import SCHEMA

SIZE = 4 << 20


def _rows(*args: str) -> dict[str, dict[str, Any]]:
    out = bench("--direction", "rx", "--size", "4M", *args, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    check_schema(rows)
    return {r["mode"]: r for r in rows}


def test_rx_rows_for_tcp_sw_and_sim_nic() -> None:
    """The default rx modes; host CPU is the receiver's minus the NIC's rx
    time, which is beside it: zero without a NIC, non-zero with; the
    receiver column is the receiving process's whole CPU (host + NIC), so
    it is not a second copy of the host column where a NIC works (a median
    of two repeats is their mean, so the sum holds for the medians too)."""
    by = _rows("--repeat", "2")
    assert list(by) == ["tcp", "sw", "sim-nic"]
    for r in by.values():
        assert r["direction"] == "rx" and r["skipped"] is None
        assert r["confirmed"] == "count" and r["bytes"] == 2 * SIZE and r["repeats"] == 2
        assert r["host_cpu_s_per_gb"] > 0
        whole = r["host_cpu_s_per_gb"] + r["device_cpu_s_per_gb"]
        assert r["receiver_cpu_s_per_gb"] == pytest.approx(whole, abs=2e-4)
        assert r["bits_per_second"] == pytest.approx(8 * r["bytes_per_second"], rel=1e-6)
        assert r["bytes_per_second_min"] <= r["bytes_per_second"] <= r["bytes_per_second_max"]
    assert by["tcp"]["cpu_vs_tcp"] == 1.0
    assert by["tcp"]["device_cpu_s_per_gb"] == by["sw"]["device_cpu_s_per_gb"] == 0
    assert by["tcp"]["device_counters"] is None and by["sw"]["device_counters"] is None
    nic = by["sim-nic"]
    assert nic["device_cpu_s_per_gb"] > 0
    assert nic["receiver_cpu_s_per_gb"] > nic["host_cpu_s_per_gb"]
    c = nic["device_counters"]
    assert set(c) == {k for k in c if k.startswith("rx_tls_")}
    # Fault-free: every record byte decrypted by the NIC (headers are not
    # counted as decrypted), one context per transfer, deleted at close.
    assert 2 * SIZE <= c["rx_tls_decrypted_bytes"] < 2 * SIZE * 1.01
    assert c["rx_tls_decrypted_packets"] > 0
    assert c["rx_tls_ctx"] == c["rx_tls_del"] == 2
    assert c["rx_tls_err"] == 0 and c["rx_tls_resync_res_ok"] == 0


@pytest.mark.parametrize(
    ("scheme", "counter"),
    [
        ("driver", "rx_tls_resync_req_pkt"),
        ("core", "rx_tls_resync_res_ok"),
        ("async", "rx_tls_resync_req_start"),
    ],
)
def test_rx_faults_apply_to_sim_nic_with_each_resync_scheme(scheme: str, counter: str) -> None:
    """``--faults drop=...``: segments lost before the NIC; it resyncs by the
    scheme asked for; a TLS 1.2 suite from -cipher; modes with no receiving
    side here are skipped with the reason."""
    by = _rows(
        "--repeat",
        "1",
        "--modes",
        "tcp,sim-nic,kernel",
        "--faults",
        "drop=0.05,seed=1",
        "--rx-resync",
        scheme,
        "-tls1_2",
        "-cipher",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
    assert "no receiver measured for kernel" in by["kernel"]["skipped"]
    nic = by["sim-nic"]
    assert nic["confirmed"] == "count" and nic["bytes"] == SIZE
    c = nic["device_counters"]
    assert c[counter] > 0 and c["rx_tls_resync_res_ok"] > 0
    # Lost segments reach the NIC out of order: not everything is decrypted.
    assert 0 < c["rx_tls_decrypted_bytes"] < SIZE


def test_rx_csv_has_the_direction_column() -> None:
    out = bench("--direction", "rx", "--size", "1M", "--repeat", "1", "--modes", "tcp", "--csv")
    assert out.returncode == 0, out.stderr
    (row,) = list(csv.DictReader(io.StringIO(out.stdout)))
    assert row["direction"] == "rx" and row["mode"] == "tcp" and float(row["host_cpu_s_per_gb"]) > 0
    assert "direction" in SCHEMA


def test_rx_table_says_whose_cpu() -> None:
    out = bench("--direction", "rx", "--size", "1M", "--repeat", "1", "--modes", "tcp,sw")
    assert out.returncode == 0, out.stderr
    assert "--direction rx (host = the receiver)" in out.stdout
    assert "receiving host: sw costs" in out.stdout


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("--direction", "rx", "-R"), "-R"),
        (("--direction", "rx", "-P", "2"), "--parallel"),
        (("--direction", "rx", "-t", "1"), "--time"),
        (("--direction", "rx", "--wire", "netns"), "--wire"),
        (("--rx-resync", "core"), "--rx-resync goes with --direction rx"),
        (("--direction", "up"), "'up' is not one of 'tx', 'rx'"),
    ],
)
def test_rx_usage_errors(args: tuple[str, ...], text: str) -> None:
    out = bench(*args)
    assert out.returncode == 2, out.stdout
    assert text in out.stderr


def test_rx_suite_kernel_tls_cannot_carry_is_one_line() -> None:
    out = bench(
        "--direction", "rx", "--size", "1M", "-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256"
    )
    assert out.returncode == 1
    assert "cannot be offloaded" in out.stderr and "Traceback" not in out.stderr


def test_rx_nic_declining_the_cipher_skips_only_sim_nic() -> None:
    """AES-CCM: sim-nic refuses the RX context; sw still runs."""
    by = _rows(
        "--repeat",
        "1",
        "--modes",
        "sw,sim-nic",
        "-tls1_3",
        "-ciphersuites",
        "TLS_AES_128_CCM_SHA256",
    )
    assert by["sw"]["skipped"] is None and by["sw"]["bytes"] == SIZE
    assert "declined TLS_RX" in by["sim-nic"]["skipped"]


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"direction": "sideways"}, "direction must be one of tx, rx"),
        ({"direction": "rx", "reverse": True}, "rx direction"),
        ({"direction": "rx", "parallel": 2}, "rx direction"),
        ({"rx_resync": "never"}, "rx_resync"),
    ],
)
def test_rx_library_options_are_checked(kw: dict[str, Any], text: str) -> None:
    from tlsctl.benchrun import BenchOptions

    with pytest.raises(ValueError, match=text):
        BenchOptions(size=1, **kw)


def test_least_squares_fit() -> None:
    """The fit bench/resync.py and bench/rx_resync.py share: an exact line
    comes back exactly; noise lowers r^2; x that do not vary are refused."""
    from tlsctl.benchrun.fit import least_squares

    a, b, r2 = least_squares([0, 1, 2, 3], [5, 7, 9, 11])
    assert (a, b, r2) == pytest.approx((5.0, 2.0, 1.0))
    a, b, r2 = least_squares([0, 1, 2, 3], [0, 2, 1, 3])
    assert b == pytest.approx(0.8) and a == pytest.approx(0.3) and 0 < r2 < 1
    with pytest.raises(ValueError, match="two different x"):
        least_squares([1, 1], [2, 3])


def test_rx_record_size_down_to_one_byte() -> None:
    """The replayed stream is data records only (no alert has to fit), so
    --record-size 1 runs every rx mode; the NIC decrypts each 1-byte record."""
    out = bench(
        "--direction", "rx", "--size", "64K", "--repeat", "1", "--record-size", "1", "--json"
    )
    assert out.returncode == 0, out.stderr
    by = {r["mode"]: r for r in json.loads(out.stdout)}
    assert all(r["skipped"] is None and r["bytes"] == 64 << 10 for r in by.values())
    assert by["sim-nic"]["device_counters"]["rx_tls_decrypted_bytes"] >= 64 << 10
