"""The real wire, measured: plain TCP vs software TX vs sim-nic over one path.

The rows are ``tlsctl bench --wire netns``'s (``tlsctl.benchrun``, whose
``wire`` module holds what this script used to do itself): every mode sends
the same file from the sender namespace to the bench's receiver in the
receiver namespace, through the same NIC process (``offload.netwire``):

* ``tcp``     - plain TCP, ``readinto`` + ``sendall`` (the forwarder only:
                the flow has no TLS context);
* ``sw``      - the layer's software TX (TLS_CONF_SW);
* ``sim-nic`` - records framed by the host, encrypted by the NIC process.

Host CPU is the senders' CPU time; NIC CPU is the NIC process's own (user +
system, from /proc), reported beside it, not added.  Interleaved over
``--repeat`` rounds, medians.

``--breakdown`` adds where the NIC's time goes per GB, measured on the NIC
engine in this process with 64 KiB frames of framed records (no TUN): the
parser alone (a flow without a context), the whole engine (parser, sim-nic
driver, AEAD) and the bare AES-GCM of the same records; frame I/O is the
NIC process's CPU in the ``tcp`` row, which does nothing but parse and
forward.

Usage: python bench/netwire.py [--size 256M] [--repeat 1] [--breakdown] [--json]
Needs root and /dev/net/tun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from offload.netwire.netns import unavailable_reason
from offload.uapi import TLS_1_3_VERSION, CipherType, CryptoInfo
from tlsctl.units import parse_size

MODES = ("tcp", "sw", "sim-nic")


def rows(size: int, repeat: int) -> list[dict[str, Any]]:
    """``tlsctl bench --wire netns --modes tcp,sw,sim-nic`` as a library call."""
    from tlsctl.benchrun import Bench, BenchOptions

    return Bench(BenchOptions(size=size, modes=MODES, repeat=repeat, wire="netns")).run()


def breakdown(size: int = 32 << 20) -> dict[str, float]:
    """Seconds per GB of the NIC engine's parts (see the module docstring)."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from offload.batch import TxBatches
    from offload.netdev import TLS_OFFLOAD_CTX_DIR_TX, create_device
    from offload.netwire.nic import Nic
    from offload.netwire.recstore import StoreReader, StoreWriter
    from offload.netwire.tun import VNET_HDR
    from offload.record import RecordSealer

    info = CryptoInfo.create(
        TLS_1_3_VERSION,
        CipherType.AES_GCM_128,
        key=os.urandom(16),
        iv=os.urandom(8),
        salt=os.urandom(4),
        seq=0,
    )
    sealer = RecordSealer(info)
    batches = TxBatches(sealer, 16384, size // 16384, 1)
    buf, slots = batches.lay_out(size)
    batches.frame_plaintext(buf, 23, slots)
    isn = 1000

    def frames() -> list[memoryview]:
        out = []
        for off in range(0, len(buf), 65000):
            body = buf[off : off + 65000]
            ip = struct.pack(
                ">BBHHHBBH4s4s",
                0x45,
                0,
                40 + len(body),
                1,
                0x4000,
                64,
                6,
                0,
                b"\x0a\0\0\1",
                b"\x0a\0\0\2",
            )
            tcp = struct.pack(">HHIIBBHHH", 1, 2, (isn + off) % 2**32, 1, 5 << 4, 0x18, 1, 0, 0)
            out.append(memoryview(bytearray(VNET_HDR.pack(1, 0, 0, 0, 20, 16) + ip + tcp + body)))
        return out

    store = StoreWriter(isn, 0, ring_size=len(buf) + (1 << 20), entries=16)
    reader = StoreReader(store.path)
    store.unlink()
    store.append(buf, 0, 0, sealer.sealed_size(16384), len(slots))
    rows: dict[str, float] = {}
    for name, with_ctx in (("parse_forward_bookkeeping", False), ("engine_total", True)):
        nic = Nic(create_device("sim-nic"))
        fs = frames()
        nic.egress(fs[0])  # the flow is known
        if with_ctx:
            ctx = nic.device.driver.dev_add(TLS_OFFLOAD_CTX_DIR_TX, info, isn)
            nic.flows[next(iter(nic.flows))].offload = (ctx, reader)
            fs = frames()
        t = time.process_time()
        for f in fs:
            nic.egress(f)
        rows[name] = round((time.process_time() - t) / (len(buf) / 1e9), 3)
    aead = AESGCM(info.key)
    out = bytearray(16384 + 16)
    src = memoryview(bytearray(16384))
    t = time.process_time()
    for _ in range(len(slots)):
        aead.encrypt_into(b"\0" * 12, src, b"", out)
    rows["aes_gcm_only"] = round((time.process_time() - t) / (len(buf) / 1e9), 3)
    reader.close()
    store.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="256M")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--breakdown", action="store_true")
    a = ap.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    measured = rows(parse_size(a.size, minimum=1), a.repeat)
    parts = breakdown() if a.breakdown else None
    if a.json:
        print(json.dumps({"rows": measured, "nic_breakdown_s_per_gb": parts}, indent=1))
        return
    print(f"{'mode':8} {'Gbit/s':>8} {'host s/GB':>10} {'NIC s/GB':>9}")
    for r in measured:
        print(
            f"{r['mode']:8} {r['bits_per_second'] / 1e9:8.3f} {r['host_cpu_s_per_gb']:10.3f} "
            f"{r['device_cpu_s_per_gb']:9.3f}"
        )
    if parts:
        print("NIC engine, s/GB: " + ", ".join(f"{k} {v}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
