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

The measuring code is ``tlsctl.benchrun.rxbench`` (``tlsctl bench
--direction rx`` runs it too); this script adds the dropping mode beside
the others, both TLS versions in one run, and a profiler.

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
import os
import pstats
import statistics
from typing import Any

from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION
from offload.wiremodel import FaultSpec
from tlsctl.benchrun import rxbench
from tlsctl.units import parse_size

MODES = ("tcp", "sw", "sim-nic", "sim-nic+drop")
DROP_FAULTS = "drop=0.01,seed=1"


def _receive(mode: str, port: int, stream: rxbench.RxStream) -> dict[str, float]:
    faults = FaultSpec.parse(DROP_FAULTS) if mode.endswith("+drop") else None
    res = rxbench.receive(mode.removesuffix("+drop"), port, stream, faults)
    gb, wall = stream.size / 1e9, res.end - res.start
    return {
        "host_cpu_s_per_gb": (res.cpu - res.device_cpu) / gb,
        "device_cpu_s_per_gb": res.device_cpu / gb,
        "bytes_per_second": stream.size / wall,
        "wall_s": wall,
    }


def run(size: int, versions: list[int], repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for version in versions:
        with rxbench.sealed_sender(version, size) as (port, stream):
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for _ in range(repeat):
                for m in MODES:
                    runs[m].append(_receive(m, port, stream))
        tcp = statistics.median(r["host_cpu_s_per_gb"] for r in runs["tcp"])
        for m in MODES:
            host = statistics.median(r["host_cpu_s_per_gb"] for r in runs[m])
            rows.append(
                {
                    "tls": "1.2" if version == TLS_1_2_VERSION else "1.3",
                    "mode": m,
                    "host_cpu_s_per_gb": host,
                    "host_cpu_s_per_gb_min": min(r["host_cpu_s_per_gb"] for r in runs[m]),
                    "host_cpu_s_per_gb_max": max(r["host_cpu_s_per_gb"] for r in runs[m]),
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
    with rxbench.sealed_sender(version, size) as (port, stream):
        prof = cProfile.Profile()
        prof.enable()
        _receive(mode, port, stream)
        prof.disable()
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
    print(
        f"{'TLS':<4} {'mode':<13} {'host s/GB':>10} {'(min-max)':>13} {'NIC s/GB':>9} "
        f"{'x TCP':>6} {'MB/s':>8}"
    )
    for r in rows:
        span = f"{r['host_cpu_s_per_gb_min']:.3f}-{r['host_cpu_s_per_gb_max']:.3f}"
        print(
            f"{r['tls']:<4} {r['mode']:<13} {r['host_cpu_s_per_gb']:>10.3f} {span:>13} "
            f"{r['device_cpu_s_per_gb']:>9.3f} {r['host_vs_tcp']:>6.2f} {r['mb_per_second']:>8.1f}"
        )
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
