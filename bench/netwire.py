"""The real wire, measured: plain TCP vs software TX vs sim-nic over one path.

Every mode sends the same file from the sender namespace to a receiver
process in the receiver namespace that drains raw bytes (the same receive
work for all), through the same NIC process (``offload.netwire``):

* ``tcp``     - plain TCP, ``readinto`` + ``sendall`` (the forwarder only:
                the flow has no TLS context);
* ``sw``      - ``KTLSSocket.sendfile``, software TX (TLS_CONF_SW);
* ``sim-nic`` - ``KTLSSocket.sendfile`` through ``NetTxPath``: records framed
                by the host, encrypted by the NIC process.

Sender CPU is this process's CPU time (the receiver is another process);
NIC CPU is the NIC process's own (user + system, from /proc), reported
beside it, not added.  Interleaved over ``--repeat`` rounds.

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
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from offload import KTLSSocket
from offload.netwire.netns import NetnsWire
from offload.netwire.txpath import NetTxPath
from offload.uapi import SOL_TCP, SOL_TLS, TCP_ULP, TLS_1_3_VERSION, TLS_TX, CipherType, CryptoInfo

MODES = ("tcp", "sw", "sim-nic")
PORT = 5001
SINK = f"""
import socket, sys
ls = socket.socket(); ls.bind(("0.0.0.0", {PORT})); ls.listen(8)
print("ready", flush=True)
buf = bytearray(1 << 20)
while True:
    c, _ = ls.accept()
    total = 0
    while n := c.recv_into(buf):
        total += n
    c.sendall(total.to_bytes(8, "big")); c.close()
"""


def one(wire: NetnsWire, mode: str, path: str, size: int) -> dict[str, Any]:
    info = CryptoInfo.create(
        TLS_1_3_VERSION,
        CipherType.AES_GCM_128,
        key=os.urandom(16),
        iv=os.urandom(8),
        salt=os.urandom(4),
        seq=0,
    )
    raw = wire.socket("tx")
    raw.connect((wire.addr("rx"), PORT))
    nic0 = wire.nic_cpu_seconds()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        if mode == "tcp":
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while n := f.readinto(buf):
                raw.sendall(view[:n])
            raw.shutdown(socket.SHUT_WR)
            k = None
        else:
            txpath = NetTxPath(raw, wire.control) if mode == "sim-nic" else None
            k = KTLSSocket(raw, backend="sw", txpath=txpath)
            k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            k.setsockopt(SOL_TLS, TLS_TX, info.pack())
            if mode == "sim-nic" and k.offload_refused:
                raise RuntimeError(f"NIC refused: {k.offload_refused}")
            k.sendfile(f, 0, size)
            k.shutdown(socket.SHUT_WR)
        got = int.from_bytes(raw.recv(8), "big")
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    nic = wire.nic_cpu_seconds() - nic0
    if k is not None:
        k.close()
    else:
        raw.close()
    if got < size:
        raise RuntimeError(f"{mode}: receiver got {got} of {size} bytes")
    gb = size / 1e9
    return {
        "mode": mode,
        "bytes": size,
        "wire_bytes": got,
        "seconds": round(wall, 3),
        "throughput_gbps": round(size * 8 / wall / 1e9, 3),
        "host_cpu_s_per_gb": round(cpu / gb, 3),
        "nic_cpu_s_per_gb": round(nic / gb, 3),
    }


def breakdown(size: int = 32 << 20) -> dict[str, float]:
    """Seconds per GB of the NIC engine's parts (see the module docstring)."""
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
    buf, slots = sealer.layout(size, 16384)
    sealer.frame_slots(buf, 23, slots)
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
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(a.size[:-1]) * mult[a.size[-1]] if a.size[-1] in mult else int(a.size)
    rows: list[dict[str, Any]] = []
    with tempfile.NamedTemporaryFile(prefix="tlsctl-bench-") as tf, NetnsWire() as wire:
        block = os.urandom(1 << 20)
        for _ in range(size // len(block)):
            tf.write(block)
        tf.write(block[: size % len(block)])
        tf.flush()
        sink = subprocess.Popen(
            wire.argv("rx", [sys.executable, "-c", SINK]),
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert sink.stdout is not None
            sink.stdout.readline()
            for _ in range(a.repeat):
                for mode in MODES:
                    rows.append(one(wire, mode, tf.name, size))
        finally:
            sink.kill()
            sink.wait()
    parts = breakdown() if a.breakdown else None
    if a.json:
        print(json.dumps({"rows": rows, "nic_breakdown_s_per_gb": parts}, indent=1))
        return
    print(f"{'mode':8} {'Gbit/s':>8} {'host s/GB':>10} {'NIC s/GB':>9}")
    for r in rows:
        print(
            f"{r['mode']:8} {r['throughput_gbps']:8.3f} {r['host_cpu_s_per_gb']:10.3f} "
            f"{r['nic_cpu_s_per_gb']:9.3f}"
        )
    if parts:
        print("NIC engine, s/GB: " + ", ".join(f"{k} {v}" for k, v in parts.items()))


if __name__ == "__main__":
    main()
