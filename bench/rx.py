"""Receive-side benchmark: plain TCP vs software kTLS RX vs RX device offload.

One sender process replays the same bytes for every mode over a loopback
TCP socket (``sendfile`` of a stream of TLS records sealed once up front,
so the sender's work is the same for all); this process is the receiver
and its CPU time is what is measured:

* ``tcp``          - the raw socket drained with ``recv_into`` into a 1 MiB
                     buffer (the floor: no user-space layer reads for less);
* ``sw``           - ``KTLSSocket`` with software RX (TLS_CONF_SW), read
                     with ``recv_into``;
* ``sim-nic``      - RX through the in-process RX wire and the sim-nic,
                     which decrypts every record (TLS_CONF_HW on RX);
* ``sim-nic+drop`` - the same with ``drop=0.01``: 1% of the segments lost
                     before the NIC, arriving later as retransmissions.

Host CPU is the receiver's process CPU minus the time inside the NIC's
``rx`` calls (what hardware would do), metered the way the TX wire meters
``device_seconds`` and reported beside it, not added.  Figures are per GB
of plaintext, medians over ``--repeat`` interleaved rounds, with the ratio
of each mode's host CPU to TCP's and the load average at the end.

``--profile MODE`` runs one round of that mode under cProfile instead and
prints the functions with the most own time.

Usage: python bench/rx.py [--size 32M] [--repeat 3] [--tls 1.2|1.3|both] [--json]
       python bench/rx.py --profile sim-nic [--size 32M] [--tls 1.3]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import multiprocessing as mp
import os
import pstats
import socket
import statistics
import tempfile
import time
from typing import Any

from offload import KTLSSocket
from offload.netdev import create_device
from offload.rxwire import RxWire
from offload.tls_sw import SwTx
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_RX,
    CipherType,
    ContentType,
    CryptoInfo,
)
from offload.wiremodel import FaultSpec
from tlsctl.units import parse_size

MODES = ("tcp", "sw", "sim-nic", "sim-nic+drop")
DROP_FAULTS = "drop=0.01,seed=1"
READ_BUF = 1 << 20


def _sender(port_q: Any, path: str, rounds: int) -> None:
    """Accept ``rounds`` connections; send the whole file on each."""
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(8)
        port_q.put(ls.getsockname()[1])
        for _ in range(rounds):
            c, _ = ls.accept()
            with c, open(path, "rb") as f:
                c.sendfile(f)
                c.shutdown(socket.SHUT_WR)
                c.recv(1)  # the receiver closes when it has read everything


def _info(version: int) -> CryptoInfo:
    return CryptoInfo.create(
        version,
        CipherType.AES_GCM_128,
        key=bytes(range(16)),
        iv=bytes(range(8)),
        salt=bytes(range(4)),
        seq=1,
    )


def _seal_stream(f: Any, version: int, size: int) -> None:
    """Write ``size`` bytes of plaintext as sealed records (software TX)."""
    tx = SwTx(_info(version))
    chunk = os.urandom(1 << 20)
    left = size
    while left:
        piece = chunk[: min(left, len(chunk))]
        for buf in tx.frame(int(ContentType.APPLICATION_DATA), piece, False):
            f.write(buf)
        left -= len(piece)
    f.flush()


def _receive(mode: str, port: int, version: int, size: int) -> dict[str, float]:
    raw = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(READ_BUF)
    wire: RxWire | None = None
    total = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if mode == "tcp":
        while n := raw.recv_into(buf):
            total += n
    else:
        if mode.startswith("sim-nic"):
            faults = FaultSpec.parse(DROP_FAULTS) if mode.endswith("drop") else None
            wire = RxWire(create_device("sim-nic"), faults=faults)
        k = KTLSSocket(raw, backend="sw", rxpath=wire)
        k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
        k.setsockopt(SOL_TLS, TLS_RX, _info(version).pack())
        while n := k.recv_into(buf):
            total += n
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    raw.close()
    expect = size if mode != "tcp" else total
    if total != expect or total < size:
        raise RuntimeError(f"{mode}: received {total} bytes, expected {size}")
    dev = wire.device_seconds if wire is not None else 0.0
    gb = size / 1e9
    return {
        "host_cpu_s_per_gb": (cpu - dev) / gb,
        "device_cpu_s_per_gb": dev / gb,
        "bytes_per_second": size / wall,
        "wall_s": wall,
    }


def _start_sender(path: str, rounds: int) -> tuple[Any, int]:
    q: Any = mp.Queue()
    proc = mp.Process(target=_sender, args=(q, path, rounds), daemon=True)
    proc.start()
    return proc, int(q.get(timeout=10))


def run(size: int, versions: list[int], repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for version in versions:
        with tempfile.NamedTemporaryFile(dir=os.environ.get("BENCH_DIR")) as f:
            _seal_stream(f, version, size)
            proc, port = _start_sender(f.name, repeat * len(MODES))
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for _ in range(repeat):
                for m in MODES:
                    runs[m].append(_receive(m, port, version, size))
            proc.join(10)
        tcp = statistics.median(r["host_cpu_s_per_gb"] for r in runs["tcp"])
        for m in MODES:
            host = statistics.median(r["host_cpu_s_per_gb"] for r in runs[m])
            rows.append(
                {
                    "tls": "1.2" if version == TLS_1_2_VERSION else "1.3",
                    "mode": m,
                    "host_cpu_s_per_gb": host,
                    "device_cpu_s_per_gb": statistics.median(
                        r["device_cpu_s_per_gb"] for r in runs[m]
                    ),
                    "host_vs_tcp": host / tcp if tcp else 0.0,
                    "mb_per_second": statistics.median(r["bytes_per_second"] for r in runs[m])
                    / 1e6,
                }
            )
    return rows


def profile(mode: str, size: int, version: int, top: int) -> None:
    with tempfile.NamedTemporaryFile(dir=os.environ.get("BENCH_DIR")) as f:
        _seal_stream(f, version, size)
        proc, port = _start_sender(f.name, 1)
        prof = cProfile.Profile()
        prof.enable()
        _receive(mode, port, version, size)
        prof.disable()
        proc.join(10)
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="32M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tls", choices=("1.2", "1.3", "both"), default="both")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", choices=MODES, help="cProfile one round of MODE instead")
    ap.add_argument("--top", type=int, default=25, help="rows of the profile")
    args = ap.parse_args()
    size = parse_size(args.size, minimum=1)
    versions = {
        "1.2": [TLS_1_2_VERSION],
        "1.3": [TLS_1_3_VERSION],
        "both": [TLS_1_2_VERSION, TLS_1_3_VERSION],
    }[args.tls]
    if args.profile:
        profile(args.profile, size, versions[-1], args.top)
        return
    rows = run(size, versions, args.repeat)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rows": rows, "loadavg": load, "size": size}, indent=2))
        return
    print(
        f"RX, AES-128-GCM, {size >> 20} MiB over loopback, median of {args.repeat} "
        f"(host CPU excludes the NIC's rx; ratio is host CPU / TCP's)"
    )
    print(f"{'TLS':<4} {'mode':<13} {'host s/GB':>10} {'NIC s/GB':>9} {'x TCP':>6} {'MB/s':>8}")
    for r in rows:
        print(
            f"{r['tls']:<4} {r['mode']:<13} {r['host_cpu_s_per_gb']:>10.3f} "
            f"{r['device_cpu_s_per_gb']:>9.3f} {r['host_vs_tcp']:>6.2f} {r['mb_per_second']:>8.1f}"
        )
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
