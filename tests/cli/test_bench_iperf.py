"""``tlsctl bench`` with iperf3's habits: -t, -i, -R, --format, numbers in
JSON, JSON errors, and every mode over the real wire (``--wire netns``)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from typing import Any

import pytest

from offload.netwire.netns import unavailable_reason
from tests.cli.test_bench import bench, check_schema
from tests.helpers.peers import TLSCTL, tlsctl_server
from tlsctl.benchrun import BenchError
from tlsctl.benchrun.intervals import IntervalClock
from tlsctl.benchrun.results import Result
from tlsctl.benchrun.reverse import ReverseResults
from tlsctl.units import format_rate, rate_unit

MIB = 1 << 20


def rows_of(out: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    check_schema(rows)
    return {r["mode"]: r for r in rows}


def check_intervals(row: dict[str, Any], streams: int, per_stream: int | None) -> None:
    """Contiguous per stream, numbers, and their bytes sum to the row's."""
    ivs = row["intervals"]
    assert isinstance(ivs, list)
    assert sum(iv["bytes"] for iv in ivs) == row["bytes"]
    for s in range(1, streams + 1):
        mine = [iv for iv in ivs if iv["stream"] == s]
        if per_stream is not None:
            assert len(mine) == per_stream, mine
        assert mine[0]["start"] == 0
        for a, b in itertools.pairwise(mine):
            assert a["end"] == b["start"]
        for iv in mine:
            assert isinstance(iv["bytes"], int) and isinstance(iv["bits_per_second"], float)
            assert iv["end"] > iv["start"]


def test_time_bound_cuts_the_file_and_counts_every_byte() -> None:
    """-t 1: the run stops about a second in, whether that is in the middle
    of the 64 MiB file or after resending it, and every byte sent was
    confirmed by the receiver's count (the duration is the recorded one:
    bytes / rate)."""
    out = bench("-n", "64M", "-t", "1", "--repeat", "1", "--modes", "tcp,sw", "--json")
    for mode, r in rows_of(out).items():
        assert r["confirmed"] == "count", mode
        assert r["bytes"] > 0 and r["bytes"] % MIB == 0  # 1 MiB writes, each confirmed
        seconds = r["bytes"] / r["bytes_per_second"]
        assert 1.0 <= seconds < 6.0, (mode, seconds)


def test_intervals_sum_to_the_total_with_a_time_bound() -> None:
    """-t 2 -i 0.5: four intervals per stream (the last one holds the tail),
    contiguous, bytes summing to the row's; -P 2: per stream."""
    out = bench(
        "--size", "4M", "-t", "2", "-i", "0.5", "--repeat", "1", "--modes", "tcp,sim-nic",
        "-P", "2", "--json",
    )  # fmt: skip
    for r in rows_of(out).values():
        check_intervals(r, 2, 4)
        assert all(iv["round"] == 1 for iv in r["intervals"])
        assert max(iv["end"] for iv in r["intervals"]) >= 2.0


def test_interval_lines_in_the_table_output_and_format() -> None:
    """Text output: one line per interval as iperf3 prints them, in the
    --format unit; the table's rate column in that unit too."""
    out = bench(
        "--size", "2M", "-t", "1", "-i", "0.25", "--repeat", "1", "--modes", "sw", "-f", "M"
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("[sw r1 s1]")]
    assert len(lines) == 4, out.stdout
    assert all(ln.endswith("MiB/s") and " sec " in ln for ln in lines)
    assert "MiB/s" in out.stdout.split("tlsctl bench", 1)[1]  # the table's column
    bits = bench("--size", "2M", "--repeat", "1", "--modes", "tcp", "-f", "k")
    assert bits.returncode == 0, bits.stderr
    assert "kbit/s" in bits.stdout and "Gbit/s" not in bits.stdout
    default = bench("--size", "2M", "--repeat", "1", "--modes", "tcp")
    assert "bit/s" in default.stdout  # bits per second by default, as iperf3


def test_rate_units() -> None:
    assert format_rate(1e9 / 8, "g") == "1.00 Gbit/s"
    assert format_rate(1e9 / 8, "m") == "1000.00 Mbit/s"
    assert format_rate(float(MIB), "M") == "1.00 MiB/s"
    assert format_rate(float(3 << 30), "G") == "3.00 GiB/s"
    assert rate_unit(None, 2e9)[0] == "Gbit/s" and rate_unit(None, 2e5)[0] == "Mbit/s"
    with pytest.raises(ValueError, match="not a format"):
        rate_unit("x")
    assert bench("-f", "x").returncode == 2


def test_json_rates_are_numbers_with_named_units() -> None:
    out = bench("--size", "2M", "--repeat", "2", "--modes", "tcp,sw", "--json")
    for r in rows_of(out).values():
        assert "throughput_gbps" not in r
        for key in ("bytes_per_second", "bits_per_second", "host_cpu_s_per_gb"):
            assert isinstance(r[key], float), (key, r[key])
        assert r["bits_per_second"] == pytest.approx(8 * r["bytes_per_second"], rel=1e-6)
        assert r["bits_per_second_min"] <= r["bits_per_second"] <= r["bits_per_second_max"]
        assert r["intervals"] is None  # no -i


def test_interval_clock_counts_tail_and_stalls() -> None:
    """The clock itself: a write that returns after two boundaries leaves an
    empty interval (iperf3's stalled second) and counts after them."""
    c = IntervalClock(1.0, 3.0)
    c.start(100.0)
    c._close_until(100.5)
    c._acc += 10
    c._close_until(102.2)  # boundaries 1 and 2 passed during a blocked write
    c._acc += 5
    out = c.finish(103.4)
    assert out is not None
    assert [(iv["start"], iv["end"], iv["bytes"]) for iv in out] == [
        (0, 1.0, 10),
        (1.0, 2.0, 0),
        (2.0, 3.4, 5),
    ]
    assert IntervalClock(None, None).finish() is None


def test_reverse_moves_bytes_server_to_client() -> None:
    """-R: the bench's server sends (its CPU is the host CPU, the NIC's
    counters are its TX's), the client receives and its count is checked
    at the server."""
    out = bench(
        "-R", "--size", "4M", "--repeat", "1", "--modes", "tcp,userspace,sw,sim-nic,openssl",
        "-i", "0.2", "--json",
    )  # fmt: skip
    by = rows_of(out)
    for mode in ("tcp", "userspace", "sw", "sim-nic"):
        r = by[mode]
        assert r["skipped"] is None and r["confirmed"] == "count", mode
        assert r["bytes"] == 4 * MIB
        assert r["receiver_cpu_s_per_gb"] is not None
        check_intervals(r, 1, None)  # the client's view, as iperf3 -R shows it
    counters = by["sim-nic"]["device_counters"]
    assert counters["tx_tls_encrypted_bytes"] >= 4 * MIB  # the server's TX went through the NIC
    assert by["sim-nic"]["device_cpu_s_per_gb"] > 0
    assert "upload" in by["openssl"]["skipped"]


def test_reverse_count_mismatch_is_an_error() -> None:
    """The runner joins each client's count with its server's: one byte short fails."""
    import multiprocessing as mp

    q = mp.get_context("fork").SimpleQueue()
    server = Result("sw", 100, 0.0, 1.0, 0.5, device_cpu=0.0)
    q.put((4242, server))
    client = Result("sw", 99, 0.0, 1.0, 0.1, extra={"port": 4242})
    with pytest.raises(BenchError, match="receiver got 99 of 100 bytes"):
        ReverseResults(q, {}).join(client, deadline=1e18)
    q.put((4243, server))
    ok = ReverseResults(q, {}).join(Result("sw", 100, 0.0, 1.0, 0.1, extra={"port": 4243}), 1e18)
    assert ok.bytes == 100 and ok.cpu == 0.5 and ok.receiver_cpu == 0.1


@pytest.mark.parametrize(
    ("args", "option", "text"),
    [
        (("--size", "lots"), "--size", "not a size"),
        (("--modes", "tcp,quic"), "--modes", "unknown mode quic"),
        (("-R", "-connect", "127.0.0.1:1"), "-R", "only receives"),
        (("-i", "0"), "-i", "0"),
    ],
)
def test_json_usage_error_object(args: tuple[str, ...], option: str, text: str) -> None:
    out = bench(*args, "--json")
    assert out.returncode == 2
    err = json.loads(out.stdout)["error"]
    assert text in err["message"] and option in (err["option"] or "")
    assert text in out.stderr  # the one line on stderr as before


def test_json_error_object_for_a_failed_run() -> None:
    """Nothing listening at -connect: exit 1, the reason as JSON on stdout."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        out = bench(
            "-connect", f"127.0.0.1:{port}", "-k", "--size", "1M", "--repeat", "1",
            "--modes", "sw", "--json",
        )  # fmt: skip
    assert out.returncode == 1
    err = json.loads(out.stdout)["error"]
    assert "cannot connect" in err["message"] and err["option"] == "-connect"
    assert "cannot connect" in out.stderr


def test_json_error_object_for_a_server_that_is_not_a_sink() -> None:
    with tlsctl_server("--echo", "-naccept", "1") as srv:
        out = bench(
            "-connect", f"127.0.0.1:{srv.port}", "-k", "--size", "8M", "--repeat", "1",
            "--modes", "sw", "--json",
        )  # fmt: skip
    assert out.returncode == 1
    err = json.loads(out.stdout)["error"]
    assert "needs a sink" in err["message"] and err["option"] == "-connect"


def test_record_size_below_a_modes_minimum_is_a_skipped_row() -> None:
    out = bench("--size", "1M", "--repeat", "1", "--modes", "tcp,sw,openssl", "--record-size", "1")
    assert out.returncode == 0, out.stderr
    js = bench(
        "--size", "1M", "--repeat", "1", "--modes", "tcp,sw,openssl", "--record-size", "1",
        "--json",
    )  # fmt: skip
    by = rows_of(js)
    assert by["tcp"]["skipped"] is None and by["tcp"]["bytes"] == MIB
    assert "below the 2 it needs" in by["sw"]["skipped"]
    assert "below the 512 it needs" in by["openssl"]["skipped"]


NO_WIRE = unavailable_reason()


@pytest.mark.skipif(NO_WIRE is not None, reason=NO_WIRE or "")
def test_netns_wire_runs_every_mode_through_the_nic_process() -> None:
    """--wire netns: tcp, sw and sim-nic over the real wire, each byte
    confirmed by the receiver in the other namespace; the NIC process's CPU
    beside the host's, nonzero encryption counters for sim-nic only; no
    namespace left behind."""
    size = 8 * MIB
    argv = [*TLSCTL, "bench", "--wire", "netns", "--size", "8M", "--repeat", "1",
            "--modes", "tcp,sw,sim-nic,openssl", "--json"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=120)
    out = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    by = rows_of(out)
    for mode in ("tcp", "sw", "sim-nic"):
        r = by[mode]
        assert r["skipped"] is None and r["confirmed"] == "count", mode
        assert r["bytes"] == size
        assert r["host_cpu_s_per_gb"] > 0 and r["device_cpu_s_per_gb"] is not None
    nic = by["sim-nic"]
    assert nic["device_cpu_s_per_gb"] > 0
    assert nic["device_counters"]["tx_tls_encrypted_bytes"] >= size
    assert nic["device_counters"]["tx_tls_ctx"] == 1
    assert by["tcp"]["device_counters"] is None and by["sw"]["device_counters"] is None
    assert "loopback only" in by["openssl"]["skipped"]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "tlsctl-" not in left or all(str(os.getpid()) not in ln for ln in left.splitlines())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root")
def test_netns_wire_without_root_is_one_line() -> None:
    """An unprivileged user: one clear line, exit 1, nothing else."""
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *TLSCTL, "bench",
         "--wire", "netns", "--size", "1M", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "Permission denied" in out.stderr or "No module" in out.stderr:
        pytest.skip(f"the tree is not readable by nobody: {out.stderr.strip()[:200]}")
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().count("\n") == 0 and "needs root" in out.stderr
    assert json.loads(out.stdout)["error"]["option"] == "--wire"
