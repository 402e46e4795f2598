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

Usage: python bench/device.py [--size 1G] [--repeat 3] [--json]
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
from offload.wiremodel import FaultSpec

MODES = ("tcp", "tcp-sendfile", "sw", "sim-nic", "sim-nic+ooo")


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


def _parse_size(text: str) -> int:
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    return int(float(t[:-1]) * mult[t[-1]]) if t[-1] in mult else int(t)


def _one(mode: str, port: int, path: str, size: int, version: int) -> dict[str, float]:
    info = CryptoInfo.create(
        version, CipherType.AES_GCM_128, key=os.urandom(16), iv=os.urandom(8),
        salt=os.urandom(4), seq=1,
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
            kwargs: dict[str, Any] = {}
            if mode.startswith("sim-nic"):
                kwargs["device"] = create_device("sim-nic")
                if mode.endswith("ooo"):
                    kwargs["faults"] = FaultSpec.parse("reorder=0.01,seed=1")
            k = KTLSSocket(raw, backend="user", **kwargs)
            k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            k.setsockopt(SOL_TLS, TLS_TX, info.pack())
            k.sendfile(f)
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
        "throughput_gbps": gb / wall,
        "host_cpu_s_per_gb": (cpu - dev_seconds) / gb,
        "device_cpu_s_per_gb": dev_seconds / gb,
        "wire_bytes": got,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = _parse_size(args.size)
    version = TLS_1_2_VERSION if args.tls == "1.2" else 0x0304
    q: Any = mp.Queue()
    proc = mp.Process(target=_sink, args=(q, args.repeat * len(MODES)), daemon=True)
    proc.start()
    port = q.get(timeout=10)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    with tempfile.NamedTemporaryFile(dir=os.environ.get("BENCH_DIR")) as f:
        chunk = os.urandom(1 << 20)
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])
        f.flush()
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
                    for k in ("throughput_gbps", "host_cpu_s_per_gb", "device_cpu_s_per_gb")
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
            f"{s['mode']:<12} {s['throughput_gbps']:>6.2f} {s['host_cpu_s_per_gb']:>10.3f} "
            f"{s['device_cpu_s_per_gb']:>9.3f} {rel:>10.2f}"
        )
    sw, nic, ooo = base["sw"], base["sim-nic"], base["sim-nic+ooo"]
    print(
        f"sim-nic/sw throughput {nic['throughput_gbps'] / sw['throughput_gbps']:.2f}x; "
        f"1% reorder/fast path {ooo['throughput_gbps'] / nic['throughput_gbps']:.2f}x"
    )
    # Ratios within each round as well: the modes of one round ran seconds
    # apart, so a machine that changes speed between rounds skews these less.
    pairs = (("sim-nic/sw", "sim-nic", "sw"), ("reorder/fast", "sim-nic+ooo", "sim-nic"))
    for name, num, den in pairs:
        per = sorted(
            a["throughput_gbps"] / b["throughput_gbps"]
            for a, b in zip(results[num], results[den], strict=True)
        )
        mid = statistics.median(per)
        print(f"{name} per round: median {mid:.2f}x (min {per[0]:.2f}, max {per[-1]:.2f})")


if __name__ == "__main__":
    main()
