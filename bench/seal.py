"""TX sealing throughput: the layer vs a bare ``cryptography`` AEAD call.

Both sides seal the same 16 KiB plaintexts in the same process, interleaved
round by round so machine noise hits both alike.  The baseline is one
``AESGCM.encrypt(nonce, data, aad)`` per record with a fixed nonce and AAD:
the cost of the AEAD alone.  The layer must also build each record's
header, nonce and AAD and advance its state; the ratio is what that framing
costs.  Paths measured:

* ``send``      - ``SwTx.frame`` on the caller's buffer, as ``KTLSSocket.send``
                  does (TLS 1.2 encrypts straight from it; TLS 1.3 places
                  each chunk next to its inner type byte, the one copy
                  Linux makes from user memory too);
* ``sendfile``  - ``SwTx.lay_out`` + ``push_slots``, as
                  ``KTLSSocket.sendfile`` does: the reader (``os.preadv``)
                  fills the plaintext slots, which are sealed in place, so
                  the AEAD output is the only copy.

Usage: python bench/seal.py [--records N] [--rounds R] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from offload.tls_sw import BATCH_RECORDS, SwTx
from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, CipherType, CryptoInfo

RECORD = 16384


def _info(version: int) -> CryptoInfo:
    return CryptoInfo.create(
        version,
        CipherType.AES_GCM_128,
        key=os.urandom(16),
        iv=os.urandom(8),
        salt=os.urandom(4),
        seq=1,
    )


def bench(records: int, rounds: int) -> list[dict[str, object]]:
    data = os.urandom(RECORD * records)
    mv = memoryview(data)
    raw = AESGCM(os.urandom(16))
    nonce, aad = os.urandom(12), os.urandom(13)

    def baseline() -> None:
        enc = raw.encrypt
        for i in range(records):
            enc(nonce, mv[i * RECORD : (i + 1) * RECORD], aad)

    cases = {}
    for version, vname in ((TLS_1_2_VERSION, "1.2"), (TLS_1_3_VERSION, "1.3")):
        tx = SwTx(_info(version))

        def send(tx: SwTx = tx) -> None:
            # What KTLSSocket.send does per call, minus the socket write.
            for buf in tx.frame(23, data, False):
                tx.recycle(buf)

        def sendfile(tx: SwTx = tx) -> None:
            # What KTLSSocket.sendfile does per batch, minus preadv and the write:
            # the slots are the reader's destination, sealed in place.
            step = BATCH_RECORDS * RECORD
            for _ in range(0, len(data), step):
                buf, slots = tx.lay_out(step)
                tx.push_slots(buf, slots)
                tx.recycle(buf)

        cases[f"TLS {vname} send"] = send
        cases[f"TLS {vname} sendfile (in place)"] = sendfile

    timings: dict[str, list[float]] = {"baseline": []}
    for name in cases:
        timings[name] = []
    for _ in range(rounds):
        for name, fn in [("baseline", baseline), *cases.items()]:
            t0 = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t0)
    base = statistics.median(timings["baseline"])
    out = []
    nbytes = len(data)
    for name, ts in timings.items():
        med = statistics.median(ts)
        out.append(
            {
                "case": name,
                "median_s": med,
                "gb_per_s": nbytes / med / 1e9,
                "ratio_vs_raw_aesgcm": base / med,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=256, help="16 KiB records per round")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = bench(args.records, args.rounds)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{'case':<34} {'GB/s':>7} {'x raw AESGCM':>13}")
    for r in res:
        print(f"{r['case']:<34} {r['gb_per_s']:>7.2f} {r['ratio_vs_raw_aesgcm']:>13.3f}")


if __name__ == "__main__":
    main()
