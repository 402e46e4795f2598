"""``tlsctl bench`` with real processes: schema, byte counts, remote, Ctrl-C."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from offload.kernel import kernel_has_ktls
from tests.helpers import kernelvm
from tests.helpers.peers import TLSCTL, tlsctl_server
from tlsctl.benchrun import SCHEMA, BenchError, headline, parse_modes
from tlsctl.benchrun.report import read_report
from tlsctl.benchrun.results import CSV_FIELDS
from tlsctl.units import parse_size

SIZE = 4 << 20


def bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TLSCTL, "bench", *args], capture_output=True, text=True, timeout=timeout
    )


def check_schema(rows: Any) -> None:
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == set(SCHEMA), row
        for key, types in SCHEMA.items():
            value = row[key]
            # JSON has one number type: an int-valued float may come back as int.
            ok = isinstance(value, types) or (float in types and type(value) is int)
            assert ok, f"{row['mode']}.{key} = {value!r} is not {types}"


def test_json_schema_and_every_mode_moves_its_bytes() -> None:
    modes = "tcp,tcp-sendfile,userspace,sw,sim-nic,kernel,openssl"
    out = bench("--size", "4M", "--repeat", "2", "--modes", modes, "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    check_schema(rows)
    assert [r["mode"] for r in rows] == modes.split(",")
    by = {r["mode"]: r for r in rows}
    have_openssl = shutil.which("openssl") and shutil.which("curl")
    for r in rows:
        if r["mode"] == "kernel" and not kernel_has_ktls()[0]:
            assert r["skipped"] and "kTLS" in r["skipped"]
            assert r["repeats"] == 0 and r["bytes_per_second"] is None
            continue
        if r["mode"] == "openssl" and not have_openssl:
            assert r["skipped"]
            continue
        assert r["skipped"] is None
        # The receiver's own byte count matched what the sender sent (else exit 1).
        assert r["confirmed"] == "count"
        assert r["bytes"] == 2 * SIZE and r["repeats"] == 2
        assert r["bytes_per_second_min"] <= r["bytes_per_second"] <= r["bytes_per_second_max"]
        assert r["host_cpu_s_per_gb"] is not None
    assert by["tcp"]["cpu_vs_tcp"] == 1.0
    assert by["sim-nic"]["device_cpu_s_per_gb"] > 0
    assert by["sw"]["device_cpu_s_per_gb"] == 0


def test_receiver_short_count_is_an_error() -> None:
    report = (100).to_bytes(8, "big") + (5).to_bytes(8, "big")
    assert read_report(report, "sw", 100) == (100, 5e-6)
    with pytest.raises(BenchError, match="receiver got 100 of 200 bytes"):
        read_report(report, "sw", 200)
    with pytest.raises(BenchError, match="report"):
        read_report(b"", "sw", 200)


def test_csv_parallel_record_size_and_tls12() -> None:
    out = bench(
        "--size",
        "4M",
        "--repeat",
        "1",
        "--modes",
        "tcp,sw,sim-nic,userspace",
        "-P",
        "2",
        "--record-size",
        "4096",
        "-tls1_2",
        "--csv",
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0]) == list(CSV_FIELDS)
    assert [r["mode"] for r in rows] == ["tcp", "sw", "sim-nic", "userspace"]
    for r in rows:
        assert int(r["bytes"]) == 2 * SIZE  # two streams
        assert r["confirmed"] == "count" and r["skipped"] == ""
        float(r["bytes_per_second"])


def test_time_option_resends_until_time_is_up() -> None:
    out = bench("--size", "1M", "--time", "0.5", "--repeat", "1", "--modes", "tcp,sw", "--json")
    assert out.returncode == 0, out.stderr
    for r in json.loads(out.stdout):
        assert r["bytes"] > 1 << 20 and r["bytes"] % (1 << 20) == 0


def test_table_and_headline() -> None:
    out = bench("--size", "2M", "--repeat", "1", "--modes", "tcp,sw,sim-nic,kernel")
    assert out.returncode == 0, out.stderr
    assert "tlsctl bench" in out.stdout
    assert "sw costs" in out.stdout and "sim-nic costs" in out.stdout
    if not kernel_has_ktls()[0]:
        assert "kernel: skipped" in out.stdout
    rows = [
        {"mode": "tcp", "bytes_per_second": 2.0, "cpu_vs_tcp": 1.0, "device_cpu_s_per_gb": 0.0},
        {"mode": "sw", "bytes_per_second": 1.0, "cpu_vs_tcp": 3.8, "device_cpu_s_per_gb": 0.0},
    ]
    x = "\N{MULTIPLICATION SIGN}"
    assert headline(rows) == f"sw costs 3.8{x} the CPU of tcp at 0.50{x} the throughput"


def test_remote_serve_sink() -> None:
    with tlsctl_server("--sink", "-naccept", "3") as srv:
        out = bench(
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-k",
            "--size",
            "4M",
            "--repeat",
            "1",
            "--modes",
            "tcp,userspace,sw,sim-nic",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        records = [r for r in srv.records() if r.get("event") == "connection"]
    rows = {r["mode"]: r for r in json.loads(out.stdout)}
    assert rows["tcp"]["skipped"]
    for mode in ("userspace", "sw", "sim-nic"):
        assert rows[mode]["confirmed"] == "close_notify"
        assert rows[mode]["bytes"] == SIZE
        assert rows[mode]["receiver_cpu_s_per_gb"] is None
    # The server counted every byte of every connection.
    assert len(records) == 3
    assert all(r["ok"] and r["bytes_in"] == SIZE for r in records), records


def test_remote_verifies_the_certificate_by_default() -> None:
    with tlsctl_server("--sink", "-naccept", "1") as srv:
        out = bench(
            "-connect", f"127.0.0.1:{srv.port}", "--size", "1M", "--repeat", "1", "--modes", "sw"
        )
        srv.proc.kill()
    assert out.returncode == 1
    assert "certificate" in out.stderr.lower() or "verif" in out.stderr.lower(), out.stderr


@pytest.mark.parametrize(
    "args, text",
    [
        (("--modes", "tcp,quic"), "unknown mode quic"),
        (("--size", "lots"), "not a size"),
        (("-k",), "-connect"),
        (("--json", "--csv"), "choose one"),
        (("--modes", "tcp,sw", "--faults", "reorder=0.1"), "--faults applies to the sim-nic"),
    ],
)
def test_usage_errors(args: tuple[str, ...], text: str) -> None:
    out = bench(*args)
    assert out.returncode == 2
    assert text in out.stderr


def test_nic_declining_the_cipher_skips_only_that_mode() -> None:
    """AES-CCM: sim-nic refuses it at dev_add; sw still runs and is measured."""
    out = bench(
        "--size",
        "1M",
        "--repeat",
        "2",
        "--modes",
        "sw,sim-nic",
        "-tls1_3",
        "-ciphersuites",
        "TLS_AES_128_CCM_SHA256",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    by = {r["mode"]: r for r in json.loads(out.stdout)}
    assert by["sw"]["skipped"] is None and by["sw"]["bytes"] == 2 << 20
    assert "declined" in by["sim-nic"]["skipped"] and "AES_CCM_128" in by["sim-nic"]["skipped"]
    assert by["sim-nic"]["repeats"] == 0


def test_parsers() -> None:
    assert parse_size("4M") == 4 << 20 and parse_size("1g") == 1 << 30
    assert parse_size("512K") == 512 << 10 and parse_size("1000") == 1000
    assert parse_modes("sw, tcp,sw") == ("sw", "tcp")


def test_ctrl_c_prints_partial_results_and_exits_130() -> None:
    # A shell's background job (CI) starts with SIGINT ignored, and Python
    # keeps it ignored: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        [*TLSCTL, "bench", "--size", "4M", "--repeat", "500", "--modes", "tcp,sw", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(5)  # startup takes ~1 s; then a round of 4M is well under 1 s
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    rows = json.loads(out)
    check_schema(rows)
    assert rows[0]["repeats"] >= 1 and rows[0]["bytes"] == rows[0]["repeats"] * SIZE
    assert rows[0]["repeats"] < 500
    assert "interrupted" in err


def _alive_in_session(sid: int) -> list[str]:
    """Command lines of the live (not zombie) processes of session ``sid``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(cmd)
    return out


@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("curl") is None, reason="needs openssl and curl"
)
@pytest.mark.parametrize(("mode", "busy"), [("openssl", "openssl s_server"), ("sw", None)])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_every_child_process_and_removes_the_data(
    tmp_path: Any, mode: str, busy: str | None, sig: int
) -> None:
    """Ctrl-C or SIGTERM in the middle of a mode: partial results, 130/143,
    and nothing of the bench left running (s_server, curl, senders, the
    receiver and its connection children) or on disk (data, certificate)."""
    proc = subprocess.Popen(
        [
            *TLSCTL,
            "bench",
            "--size",
            "1M",
            "--time",
            "120",
            "--repeat",
            "1",
            "--modes",
            mode,
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "TLSCTL_BENCH_DIR": str(tmp_path)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        # Running: the parent, the receiver, a sender, and (busy) its tool or
        # the receiver's connection child.
        while not (
            any(c.startswith(busy) for c in _alive_in_session(proc.pid))
            if busy
            else len(_alive_in_session(proc.pid)) >= 4
        ):
            assert time.monotonic() < deadline and proc.poll() is None, "the mode did not start"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, err
        check_schema(json.loads(out))
        assert f"interrupted by {signal.Signals(sig).name}" in err
        deadline = time.monotonic() + 10
        while (left := _alive_in_session(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == []
        assert list(tmp_path.iterdir()) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for pid in os.listdir("/proc"):  # whatever escaped the group, by session
            with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/stat") as f:
                if int(f.read().rpartition(")")[2].split()[3]) == proc.pid:
                    os.kill(int(pid), signal.SIGKILL)


def test_short_count_from_the_receiver_fails_loudly(tmp_path: Any) -> None:
    """A receiver (stdlib ssl here) that reports one byte fewer than it read."""
    import socket
    import ssl
    import threading

    from tlsctl.certs import ephemeral_server_cert

    ck = ephemeral_server_cert()
    (tmp_path / "c.pem").write_bytes(ck.cert_pem())
    (tmp_path / "k.pem").write_bytes(ck.key_pem())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    lst = socket.create_server(("127.0.0.1", 0))

    def lying_receiver() -> None:
        raw, _ = lst.accept()
        with ctx.wrap_socket(raw, server_side=True) as s:
            total = 0
            while data := s.recv(1 << 16):
                total += len(data)
            s.sendall((total - 1).to_bytes(8, "big") + bytes(8))
            s.unwrap()

    t = threading.Thread(target=lying_receiver, daemon=True)
    t.start()
    out = bench(
        "-connect",
        f"127.0.0.1:{lst.getsockname()[1]}",
        "-k",
        "--size",
        "1M",
        "--repeat",
        "1",
        "--modes",
        "sw",
        "--json",
    )
    t.join(10)
    lst.close()
    assert out.returncode == 1
    assert f"sw: receiver got {(1 << 20) - 1} of {1 << 20} bytes" in out.stderr
    # --json: no rows (nothing unconfirmed is reported), the error as JSON instead
    err = json.loads(out.stdout)["error"]
    assert err["message"] == f"sw: receiver got {(1 << 20) - 1} of {1 << 20} bytes"


VM_BENCH_SECONDS = 240.0
"""The guest-side limit of the bench run in the kTLS VM."""


@pytest.mark.kernel
@pytest.mark.timeout(
    # run_in_vm's own deadlines, end to end (boot, the command and its 15 s of
    # slack, the power-off grace), plus a margin: pytest-timeout must never cut
    # the test short while the VM is still booting on a loaded machine
    # (TLSCTL_VM_BOOT_TIMEOUT raises the boot allowance, and this with it).
    kernelvm.DEFAULT_BOOT_TIMEOUT + VM_BENCH_SECONDS + 15 + kernelvm.SHUTDOWN_GRACE + 60
)
def test_kernel_mode_in_a_ktls_vm() -> None:
    """The kernel mode against the real kTLS (one VM boot, about a minute)."""
    import sys

    ok, reason = kernelvm.vm_available()
    if not ok:
        pytest.skip(f"kernel VM unavailable: {reason}")
    bench = (
        f"{sys.executable} -m tlsctl.cli bench --size 4M --repeat 1 --modes tcp,sw,kernel --json"
    )
    with tempfile.TemporaryDirectory(prefix="ktls-bench-") as wd:
        # Twice in one boot: the default records, and --record-size 4096,
        # which the kernel mode sets as TLS_TX_MAX_PAYLOAD_LEN (the newest
        # kernel is booted: 7.3 has it).
        script = f"{bench} > {wd}/full.json && {bench} --record-size 4096 > {wd}/4k.json"
        res = kernelvm.run_in_vm(["/bin/sh", "-c", script], VM_BENCH_SECONDS, cpus=2, workdir=wd)
        assert res.returncode == 0, res.stderr
        for name in ("full", "4k"):
            rows = json.loads(Path(wd, f"{name}.json").read_text())
            check_schema(rows)
            kernel = {r["mode"]: r for r in rows}["kernel"]
            assert kernel["skipped"] is None and kernel["confirmed"] == "count", (name, kernel)
            assert kernel["bytes"] == SIZE


def test_library_run_reports_progress_and_prints_nothing(
    capfd: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    """``tlsctl.benchrun`` in-process: progress comes through the callback,
    results as rows, nothing is printed, nothing is left on disk."""
    from tlsctl.benchrun import Bench, BenchOptions, Progress

    run = Bench(
        BenchOptions(size=1 << 20, modes=("tcp", "sw", "kernel"), repeat=2, data_dir=str(tmp_path))
    )
    steps: list[Progress] = []
    rows = run.run(on_progress=steps.append)
    active = ["tcp", "sw"] + (["kernel"] if kernel_has_ktls()[0] else [])
    assert [s.done for s in steps] == list(range(2 * len(active)))
    assert {s.total for s in steps} == {2 * len(active)}
    assert [s.mode for s in steps[: len(active)]] == active  # round 1 in order
    assert str(steps[-1]).startswith("round 2/2: ")
    check_schema(rows)
    assert rows == run.rows()
    by = {r["mode"]: r for r in rows}
    assert by["tcp"]["bytes"] == by["sw"]["bytes"] == 2 << 20
    assert by["sw"]["confirmed"] == "count"
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"modes": ("tcp", "quic")}, "unknown mode quic"),
        ({"modes": ()}, "unknown mode"),
        ({"repeat": 0}, "repeat"),
        ({"record_size": 16385}, "record size"),
        ({"modes": ("sw",), "faults": "reorder=0.1"}, "sim-nic"),
        ({"interval": 0.0}, "interval"),
        ({"wire": "copper"}, "wire must be one of model, netns"),
        ({"wire_faults": "drop=0.1"}, "netns wire"),
        ({"reverse": True, "wire": "netns"}, "loopback only"),
    ],
)
def test_library_options_are_checked(kw: dict[str, Any], text: str) -> None:
    from offload.wiremodel import FaultSpec
    from tlsctl.benchrun import BenchOptions

    if "faults" in kw:
        kw = {**kw, "faults": FaultSpec.parse(kw["faults"])}
    with pytest.raises(ValueError, match=text):
        BenchOptions(size=1, **kw)


@pytest.mark.parametrize(
    ("has_option", "record_size", "expected"),
    [
        (False, 4096, "--record-size: the kernel has no TLS_TX_MAX_PAYLOAD_LEN (Linux 6.19+)"),
        (True, 63, "--record-size 63 is below the 64 TLS_TX_MAX_PAYLOAD_LEN takes"),
        (True, 64, None),
        (False, 16384, None),
    ],
)
def test_kernel_mode_record_size_needs_the_option(
    monkeypatch: pytest.MonkeyPatch, has_option: bool, record_size: int, expected: str | None
) -> None:
    """Which kernels the kernel mode's --record-size runs on (the probes'
    answers stand in for kernels this host has not got; the VM test above
    runs it on 7.3)."""
    from tlsctl.benchrun import modes

    reason = "" if has_option else "the kernel has no TLS_TX_MAX_PAYLOAD_LEN (Linux 6.19+)"
    monkeypatch.setattr(modes, "kernel_has_ktls", lambda: (True, ""))
    monkeypatch.setattr(modes, "kernel_has_max_payload", lambda: (has_option, reason))
    assert modes.skip_reason("kernel", remote=False, record_size=record_size) == expected
