"""sim-nic resync cost against the bytes it re-feeds (DUMP work).

A packet the NIC does not expect (a retransmission, a reordered segment)
makes it rebuild the AEAD state of the packet's record from the record's
first byte: the bytes before the packet are processed and discarded (mlx5's
DUMP), then the packet is encrypted.  The cost should be a fixed part per
resync plus a part proportional to the bytes re-fed, at about the NIC's
streaming cost per byte - never the whole stream, never more than one
record.

This sends the same 1448-byte packet shape at growing offsets into held
records, each out of order, and fits device CPU per resync against the
bytes re-fed (least squares).  Every timed shape is first checked against
software TX's bytes, so what is timed is the real work.

Usage: python bench/resync.py [--tls 1.3] [--cipher aes128|aes256|chacha] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from offload.drivers.simnic import SimNic
from offload.netdev import NetDevice, Segment
from offload.tcpseq import SeqSpace
from offload.tls_device import DeviceTx
from offload.tls_sw import SwTx
from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, CipherType, CryptoInfo
from tlsctl.benchrun.fit import least_squares

CIPHERS = {
    "aes128": CipherType.AES_GCM_128,
    "aes256": CipherType.AES_GCM_256,
    "chacha": CipherType.CHACHA20_POLY1305,
}
PACKET = 1448
PREFIXES = (0, 1024, 2048, 4096, 6144, 8192, 10240, 12288, 14336)


def run(version: int, cipher: CipherType, rounds: int) -> dict[str, object]:
    info = CryptoInfo.random(version, cipher, seq=1)
    nic = SimNic()
    space = SeqSpace()
    tx = DeviceTx(info, NetDevice("nic0", nic), space, 0)
    data = os.urandom(16 * 16384)
    framed = b"".join(bytes(b) for b in tx.frame(23, data, False))  # held, never acked
    ref = b"".join(bytes(b) for b in SwTx(info).frame(23, data, False))
    rsize = tx.sealer.sealed_size(16384)
    records = len(data) // 16384
    out = memoryview(bytearray(PACKET))
    shapes: dict[int, list[Segment]] = {}
    for prefix in PREFIXES:
        # One packet per record: consecutive packets are never the one the
        # NIC expects next, so every one of them resyncs.
        segs = shapes[prefix] = []
        for r in range(records):
            start = r * rsize + prefix
            seg = Segment(space.seq(start), memoryview(bytearray(framed[start : start + PACKET])))
            if not nic.xmit(tx.ctx, seg, tx, out) or out != ref[start : start + PACKET]:
                raise SystemExit(f"resync at {start}: not software TX's bytes")
            segs.append(seg)
    best = dict.fromkeys(PREFIXES, float("inf"))
    dumped = dict.fromkeys(PREFIXES, 0)
    for _ in range(rounds):  # prefixes interleaved: a noisy moment hits all alike
        for prefix, segs in shapes.items():
            before = nic.stats["tx_tls_dump_bytes"]
            t0 = time.thread_time()
            for seg in segs:
                nic.xmit(tx.ctx, seg, tx, out)
            best[prefix] = min(best[prefix], (time.thread_time() - t0) / len(segs))
            dumped[prefix] = (nic.stats["tx_tls_dump_bytes"] - before) // len(segs)
    rows: list[dict[str, float]] = [
        {"prefix": p, "dump_bytes_per_resync": dumped[p], "us_per_resync": best[p] * 1e6}
        for p in PREFIXES
    ]
    # A packet at a record's start re-feeds nothing; any other pays a DUMP
    # pass (a fixed part) and then its bytes: the slope is fitted over those.
    fed = [r for r in rows if r["prefix"]]
    a, b, r2 = least_squares([r["prefix"] for r in fed], [r["us_per_resync"] for r in fed])
    return {
        "version": "1.3" if version == TLS_1_3_VERSION else "1.2",
        "cipher": cipher.name,
        "packet": PACKET,
        "rows": rows,
        "us_per_resync_no_dump": rows[0]["us_per_resync"],
        "us_per_resync_dump_fixed": a,
        "ns_per_refed_byte": b * 1e3,
        "r2": r2,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tls", choices=("1.2", "1.3"), default="1.3")
    ap.add_argument("--cipher", choices=sorted(CIPHERS), default="aes128")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    version = TLS_1_3_VERSION if args.tls == "1.3" else TLS_1_2_VERSION
    res = run(version, CIPHERS[args.cipher], args.rounds)
    rows: list[dict[str, float]] = res["rows"]  # type: ignore[assignment]
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"TLS {res['version']} {res['cipher']}, {PACKET}-byte packets, each out of order")
    print(f"{'re-fed bytes':>12}  {'dump/resync':>11}  {'us/resync':>9}")
    for r in rows:
        print(f"{r['prefix']:>12}  {r['dump_bytes_per_resync']:>11}  {r['us_per_resync']:>9.2f}")
    print(
        f"resync at a record start: {res['us_per_resync_no_dump']:.2f} us; with re-fed bytes: "
        f"{res['us_per_resync_dump_fixed']:.2f} us + {res['ns_per_refed_byte']:.3f} ns per "
        f"re-fed byte (least squares, r^2 = {res['r2']:.3f})"
    )


if __name__ == "__main__":
    main()
