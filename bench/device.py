"""Device offload benchmark: sim-nic vs software TX vs plain TCP, one run.

Every mode sends the same file over loopback to a receiver process that
drains raw bytes (so receive-side work is the same for all), side by side
in one invocation, interleaved over ``--repeat`` rounds:

* ``tcp``        - the same program moving the file as plain TCP through user
                   space (``readinto`` + ``sendall``): the data path the
                   layer has too, since it must see the bytes to frame them;
* ``tcp-sendfile``- plain TCP with the kernel's zero-copy ``sendfile``, for
                   reference (no user-space layer can match it);
* ``sw``         - ``KTLSSocket.sendfile``, software TX (TLS_CONF_SW);
* ``sim-nic``    - ``KTLSSocket.sendfile`` through the sim-nic (fast path);
* ``sim-nic+ooo``- the same with 1% reordering (slow path, resync).

Host CPU is the sender's process CPU time minus the time spent inside the
NIC driver (what hardware would do), reported separately as device CPU.

``--scaling`` measures instead how the wire model's cost grows with the
transfer: the sim-nic with ``--faults reorder=1 --mss 100`` (every segment
held, released out of order, each one a resync) at 1, 4 and 16 MiB, in
seconds per MiB.  Flat means linear; it was super-linear (1 MiB 40 s, 4 MiB
never) while every release sorted all held segments.

Usage: python bench/device.py [--size 1G] [--repeat 3] [--json]
       python bench/device.py --scaling [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import tempfile
import time
from typing import Any

from offload import KTLSSocket
from offload.netdev import create_device
from offload.uapi import SOL_TCP, SOL_TLS, TCP_ULP, TLS_1_2_VERSION, TLS_TX, CipherType, CryptoInfo
from offload.wiremodel import FaultSpec, TxPipeline
from tlsctl.units import parse_size

MODES = ("tcp", "tcp-sendfile", "sw", "sim-nic", "sim-nic+ooo")
OOO_FAULTS = "reorder=0.01,seed=1"
SCALING_MIB = (1, 4, 16)
SCALING_FAULTS, SCALING_MSS = "reorder=1,seed=1", 100


def _sink(port_q: Any, rounds: int) -> None:
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(8)
        port_q.put(ls.getsockname()[1])
        buf = bytearray(1 << 20)
        for _ in range(rounds):
            c, _ = ls.accept()
            with c:
                total = 0
                while n := c.recv_into(buf):
                    total += n
                c.sendall(total.to_bytes(8, "big"))


def _one(
    mode: str,
    port: int,
    path: str,
    size: int,
    version: int,
    faults: str = OOO_FAULTS,
    mss: int | None = None,
    count: int | None = None,
) -> dict[str, float]:
    info = CryptoInfo.create(
        version,
        CipherType.AES_GCM_128,
        key=os.urandom(16),
        iv=os.urandom(8),
        salt=os.urandom(4),
        seq=1,
    )
    raw = socket.create_connection(("127.0.0.1", port))
    dev_seconds = 0.0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        if mode == "tcp-sendfile":
            raw.sendfile(f)
            raw.shutdown(socket.SHUT_WR)
        elif mode == "tcp":
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while n := f.readinto(buf):
                raw.sendall(view[:n])
            raw.shutdown(socket.SHUT_WR)
        else:
            path = None
            if mode.startswith("sim-nic"):
                path = TxPipeline(
                    create_device("sim-nic"),
                    mss=mss,
                    faults=FaultSpec.parse(faults) if mode.endswith("ooo") else None,
                )
            k = KTLSSocket(raw, backend="sw", txpath=path)
            k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            k.setsockopt(SOL_TLS, TLS_TX, info.pack())
            k.sendfile(f, 0, count)
            k.shutdown(socket.SHUT_WR)
            dev_seconds = k.device_seconds
    got = int.from_bytes(raw.recv(8), "big")
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    raw.close()
    if got < size:
        raise RuntimeError(f"{mode}: receiver got {got} of {size} bytes")
    gb = size / 1e9
    return {
        "bytes_per_second": size / wall,
        "host_cpu_s_per_gb": (cpu - dev_seconds) / gb,
        "device_cpu_s_per_gb": dev_seconds / gb,
        "wire_bytes": got,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def _write_random(f: Any, size: int) -> None:
    chunk = os.urandom(1 << 20)
    for _ in range(size // len(chunk)):
        f.write(chunk)
    f.write(chunk[: size % len(chunk)])
    f.flush()


def scaling(version: int, repeat: int, as_json: bool) -> None:
    """Seconds per MiB of ``reorder=1 --mss 100`` at 1, 4 and 16 MiB.

    The sizes are interleaved over ``repeat`` rounds and the median per
    size is reported: on a shared machine the speed drifts more between
    minutes than between the sizes of one round."""
    q: Any = mp.Queue()
    proc = mp.Process(target=_sink, args=(q, repeat * len(SCALING_MIB)), daemon=True)
    proc.start()
    port = q.get(timeout=10)
    runs: dict[int, list[dict[str, float]]] = {mib: [] for mib in SCALING_MIB}
    with tempfile.NamedTemporaryFile(dir=os.environ.get("BENCH_DIR")) as f:
        _write_random(f, SCALING_MIB[-1] << 20)
        for _ in range(repeat):
            for mib in SCALING_MIB:
                runs[mib].append(
                    _one(
                        "sim-nic+ooo",
                        port,
                        f.name,
                        mib << 20,
                        version,
                        SCALING_FAULTS,
                        SCALING_MSS,
                        count=mib << 20,
                    )
                )
    proc.join(10)
    rows = [
        {
            "mib": mib,
            "wall_s_per_mib": statistics.median(r["wall_s"] for r in rs) / mib,
            "cpu_s_per_mib": statistics.median(r["cpu_s"] for r in rs) / mib,
            "device_cpu_s_per_mib": statistics.median(r["device_cpu_s_per_gb"] for r in rs)
            * (1 << 20)
            / 1e9,
        }
        for mib, rs in runs.items()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"sim-nic --faults {SCALING_FAULTS} --mss {SCALING_MSS}: seconds per MiB "
        f"(median of {repeat})"
    )
    print(f"{'MiB':>4} {'wall s/MiB':>11} {'CPU s/MiB':>10} {'dev s/MiB':>10}")
    for row in rows:
        print(
            f"{row['mib']:>4} {row['wall_s_per_mib']:>11.2f} {row['cpu_s_per_mib']:>10.2f} "
            f"{row['device_cpu_s_per_mib']:>10.2f}"
        )
    first, last = rows[0]["cpu_s_per_mib"], rows[-1]["cpu_s_per_mib"]
    print(f"CPU per MiB at {SCALING_MIB[-1]} MiB / at {SCALING_MIB[0]} MiB: {last / first:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.2")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="seconds per MiB of reorder=1 --mss 100 at 1, 4 and 16 MiB instead",
    )
    args = ap.parse_args()
    size = parse_size(args.size, minimum=1)
    version = TLS_1_2_VERSION if args.tls == "1.2" else 0x0304
    if args.scaling:
        scaling(version, args.repeat, args.json)
        return
    q: Any = mp.Queue()
    proc = mp.Process(target=_sink, args=(q, args.repeat * len(MODES)), daemon=True)
    proc.start()
    port = q.get(timeout=10)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.NamedTemporaryFile(dir=os.environ.get("BENCH_DIR")) as f:
        _write_random(f, size)
        for _ in range(args.repeat):
            for m in MODES:
                results[m].append(_one(m, port, f.name, size, version))
    proc.join(10)
    summary = []
    for m in MODES:
        rs = results[m]
        summary.append(
            {
                "mode": m,
                "bytes": size,
                **{
                    k: statistics.median(r[k] for r in rs)
                    for k in ("bytes_per_second", "host_cpu_s_per_gb", "device_cpu_s_per_gb")
                },
            }
        )
    base = {s["mode"]: s for s in summary}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'mode':<12} {'GB/s':>6} {'host s/GB':>10} {'dev s/GB':>9} {'CPU x tcp':>10}")
    for s in summary:
        rel = s["host_cpu_s_per_gb"] / base["tcp"]["host_cpu_s_per_gb"]
        print(
            f"{s['mode']:<12} {s['bytes_per_second'] / 1e9:>6.2f} {s['host_cpu_s_per_gb']:>10.3f} "
            f"{s['device_cpu_s_per_gb']:>9.3f} {rel:>10.2f}"
        )
    sw, nic, ooo = base["sw"], base["sim-nic"], base["sim-nic+ooo"]
    print(
        f"sim-nic/sw throughput {nic['bytes_per_second'] / sw['bytes_per_second']:.2f}x; "
        f"1% reorder/fast path {ooo['bytes_per_second'] / nic['bytes_per_second']:.2f}x"
    )
    # Ratios within each round as well: the modes of one round ran seconds
    # apart, so a machine that changes speed between rounds skews these less.
    pairs = (("sim-nic/sw", "sim-nic", "sw"), ("reorder/fast", "sim-nic+ooo", "sim-nic"))
    for name, num, den in pairs:
        per = sorted(
            a["bytes_per_second"] / b["bytes_per_second"]
            for a, b in zip(results[num], results[den], strict=True)
        )
        mid = statistics.median(per)
        print(f"{name} per round: median {mid:.2f}x (min {per[0]:.2f}, max {per[-1]:.2f})")


if __name__ == "__main__":
    main()
