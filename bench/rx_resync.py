"""RX offload under loss: throughput at 1% drop, and the resync cost per lost segment.

The receiving side of ``bench/resync.py``'s question.  A segment lost
before the NIC reaches it later, as TCP's retransmission, out of order:
the NIC stops decrypting the flow until it is resynced (by the scheme
asked for), the records it saw only partly are re-encrypted and decrypted
again in software, and those it did not see at all are decrypted in
software.  So each lost segment should cost the host a roughly fixed
amount of extra work (a few records in software) and save the NIC some.

This receives the same sealed stream (``tlsctl.benchrun.rxbench``: a
sender process replays it over loopback, this process receives through
the in-process RX wire and the sim-nic) fault-free and at several drop
rates, interleaved over ``--repeat`` rounds, and fits, by least squares
(``tlsctl.benchrun.fit``, the fit ``bench/resync.py`` makes for TX), the
host's CPU and the NIC's against the segments lost, over the faulty runs
(a fault-free wire takes the in-place path: the step to the general path
is reported apart, as the fit's value at 0 lost minus the fault-free median).  It prints the
receiver's throughput at each rate against fault-free (the issue's target
at 1%: >= 0.5x) and the host's records per kind.

Usage: python bench/rx_resync.py [--size 64M] [--repeat 3] [--tls 1.2|1.3]
       [--rx-resync driver|core|async] [--mss 1448] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION
from offload.wiremodel import FaultSpec
from tlsctl.benchrun import rxbench
from tlsctl.benchrun.fit import least_squares
from tlsctl.units import parse_size

RATES = (0.0, 0.0025, 0.005, 0.01, 0.02, 0.04)


def run(size: int, version: int, scheme: str, mss: int | None, repeat: int) -> dict[str, Any]:
    per_rate: dict[float, list[dict[str, Any]]] = {r: [] for r in RATES}
    with rxbench.sealed_sender(version, size, rxbench.SYNC_TYPES[scheme]) as (port, stream):
        for rnd in range(repeat):
            for rate in RATES:
                faults = FaultSpec(drop=rate, seed=rnd + 1) if rate else None
                res = rxbench.receive("sim-nic", port, stream, faults, mss)
                per_rate[rate].append(
                    {
                        "host_s": res.cpu - res.device_cpu,
                        "nic_s": res.device_cpu,
                        "wall_s": res.end - res.start,
                        "lost": res.extra["faults_injected"]["drop"],
                        "records": {
                            k: res.extra[f"records_{k}"] for k in ("device", "partial", "sw")
                        },
                    }
                )
    base = per_rate[0.0]
    host0 = statistics.median(r["host_s"] for r in base)
    nic0 = statistics.median(r["nic_s"] for r in base)
    wall0 = statistics.median(r["wall_s"] for r in base)
    rows = []
    for rate, runs in per_rate.items():
        rows.append(
            {
                "drop": rate,
                "lost_segments": statistics.median(r["lost"] for r in runs),
                "host_cpu_s_per_gb": statistics.median(r["host_s"] for r in runs) / (size / 1e9),
                "device_cpu_s_per_gb": statistics.median(r["nic_s"] for r in runs) / (size / 1e9),
                "throughput_vs_fault_free": wall0 / statistics.median(r["wall_s"] for r in runs),
                "records": runs[len(runs) // 2]["records"],
            }
        )
    # A fault-free wire takes the in-place path (no copy into RX buffers, no
    # reassembly); any fault puts every segment through the general one.
    # So, as bench/resync.py leaves the no-DUMP case out of its slope, the
    # fit is over the faulty runs only (each run a point): the slope is the
    # cost per lost segment, the intercept the general path's cost with
    # nothing lost, and its step over the fault-free median is reported apart.
    pts = [r for rate, runs in per_rate.items() if rate for r in runs]
    xs = [float(r["lost"]) for r in pts]
    ha, hb, hr2 = least_squares(xs, [r["host_s"] for r in pts])
    na, nb, nr2 = least_squares(xs, [r["nic_s"] for r in pts])
    return {
        "tls": "1.2" if version == TLS_1_2_VERSION else "1.3",
        "rx_resync": scheme,
        "mss": mss,
        "size": size,
        "rows": rows,
        "host_us_per_lost_segment": hb * 1e6,
        "host_general_path_step_s_per_gb": (ha - host0) / (size / 1e9),
        "host_fit_r2": hr2,
        "device_us_per_lost_segment": nb * 1e6,
        "device_general_path_step_s_per_gb": (na - nic0) / (size / 1e9),
        "device_fit_r2": nr2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64M")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    ap.add_argument("--rx-resync", choices=sorted(rxbench.SYNC_TYPES), default="driver")
    ap.add_argument("--mss", type=int, help="the RX wire's segment size (default: TSO-sized)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    version = TLS_1_3_VERSION if args.tls == "1.3" else TLS_1_2_VERSION
    res = run(parse_size(args.size, minimum=1), version, args.rx_resync, args.mss, args.repeat)
    load = os.getloadavg()
    if args.json:
        print(json.dumps({**res, "loadavg": load}, indent=2))
        return
    print(
        f"RX TLS {res['tls']} AES-128-GCM, {res['size'] >> 20} MiB, "
        f"--rx-resync {res['rx_resync']}, mss {res['mss'] or 'TSO'}, median of {args.repeat}"
    )
    print(
        f"{'drop':>7} {'lost':>6} {'host s/GB':>10} {'NIC s/GB':>9} {'tput x 0%':>10}  "
        "records device/partial/sw"
    )
    for r in res["rows"]:
        rec = r["records"]
        print(
            f"{r['drop']:>7.4f} {r['lost_segments']:>6.0f} {r['host_cpu_s_per_gb']:>10.3f} "
            f"{r['device_cpu_s_per_gb']:>9.3f} {r['throughput_vs_fault_free']:>10.2f}  "
            f"{rec['device']}/{rec['partial']}/{rec['sw']}"
        )
    print(
        "per lost segment (least squares over every run): "
        f"host {res['host_us_per_lost_segment']:+.1f} us "
        f"(r^2 = {res['host_fit_r2']:.3f}), NIC {res['device_us_per_lost_segment']:+.1f} us "
        f"(r^2 = {res['device_fit_r2']:.3f}); the general path's step over fault-free "
        f"(fit at 0 lost): host {res['host_general_path_step_s_per_gb']:+.3f} s/GB, "
        f"NIC {res['device_general_path_step_s_per_gb']:+.3f} s/GB"
    )
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
