"""The NIC process: two TUN devices, one per namespace, and the offload engine.

Run as ``python -m offload.netwire.nic --tx-ns A --rx-ns B --control PATH``
(``offload.netwire.netns.NetnsWire`` starts it).  It creates TUN ``nic0``
in the sender's namespace and ``nic0`` in the receiver's, then forwards
frames both ways, one thread per direction (through seeded faults,
``offload.netwire.faults``, when ``--faults`` is given): what the sender's kernel hands
it (GSO frames up to 64 KiB, see ``offload.netwire.tun``) goes out on the
receiver's TUN, and the receiver's ACKs (and data) come back, through the
RX offload engine (``offload.netwire.nic_rx``: the host's received bytes
decrypted by sequence number, marks in a ring beside them).  Its CPU
time is its own, as a NIC's is.

Frames from the sender of a flow with a TLS TX context go through the
driver exactly as the in-process wire hands them (``Driver.xmit`` with
``offload.netdev.Segment``): the payload is encrypted in place by TCP
sequence number; the driver's slow path reads records from the host's
store in shared memory (``offload.netwire.recstore.StoreReader``, the
``RecordLookup``); a frame the driver drops (a record already freed) is
not forwarded, and neither is a retransmission (bytes the NIC forwarded
before) that starts at a byte the host's TCP already has acknowledged
(``StoreReader.acked``: a stale copy whose ring pages the host may have
reused) - the driver would take one that happens to start where it
expects the next in-order frame and encrypt whatever the pages now hold
under the old records' nonces.  Bytes before the start marker and flows
without a context pass through untouched.  The NIC learns each flow's ISN from the SYN it
forwards and tracks the next sequence number after what it forwarded, which
is how the host learns the sequence number of its first offloaded byte.

Linux has no such process, of course: it is the stand-in for the hardware.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import netns

from offload.netdev import TLS_OFFLOAD_CTX_DIR_TX, NetDevice, OffloadRefused, Segment, create_device
from offload.netwire.control import MAX_MESSAGE, flow_from_json
from offload.netwire.faults import FaultStage, WireFaults
from offload.netwire.forwarding import forward
from offload.netwire.frames import TCP_SYN, FlowKey, make_partial, parse_tcp
from offload.netwire.nic_rx import NicRx, forward_rx
from offload.netwire.recstore import StoreReader
from offload.netwire.tun import open_tun
from offload.tcpseq import SEQ_MOD
from offload.uapi import CryptoInfo

TUN_NAME = "nic0"
_HALF = SEQ_MOD // 2
_PR_SET_PDEATHSIG = 1

NIC_COUNTERS = (
    "frames_out",  # sender -> receiver, seen
    "frames_back",  # receiver -> sender, forwarded
    "frames_offloaded",  # went through the driver with a context
    "frames_passed",  # no context (or no payload): forwarded untouched
    "frames_dropped",  # the driver refused them (record freed): not forwarded
    "frames_lost",  # lost on purpose after the NIC (``lose``): TCP retransmits them
    "bytes_out",
    "bytes_back",
)


@dataclass
class Flow:
    """What the NIC knows of one direction of a TCP connection."""

    isn: int | None = None
    snd_nxt: int | None = None
    offload: tuple[object, StoreReader] | None = None
    """The driver context and the record store, set by ``add``."""
    data_frames: int = 0
    """Offloaded frames with payload seen so far (their ordinal)."""
    lose: frozenset[int] = frozenset()
    """Ordinals of offloaded data frames to lose after encrypting them."""
    lost: list[tuple[int, int]] = field(default_factory=list)
    """(sequence number, length) of each frame lost that way."""


@dataclass
class Nic:
    """The forwarding and offload engine (everything but the fds)."""

    device: NetDevice
    flows: dict[FlowKey, Flow] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NIC_COUNTERS, 0))
    lock: threading.Lock = field(default_factory=threading.Lock)
    stages: dict[str, FaultStage] = field(default_factory=dict)
    """The fault stage of each direction ("out", "back"), if any."""
    rx: NicRx = field(init=False)
    """The receive direction's offload engine (``offload.netwire.nic_rx``)."""

    def __post_init__(self) -> None:
        self.rx = NicRx(self.device)
        driver = self.device.driver
        burst = getattr(driver, "xmit_burst", None)
        if burst is not None:
            # The frame is the NIC's own buffer, encrypted in place: one
            # segment for xmit_burst (see offload.netdev), without the
            # Segment descriptor and the call layers of xmit.
            def send(ctx: object, seq: int, payload: memoryview, store: StoreReader) -> bool:
                n = len(payload)
                return bool(burst(ctx, seq, payload, n, store) == n)
        else:

            def send(ctx: object, seq: int, payload: memoryview, store: StoreReader) -> bool:
                return driver.xmit(ctx, Segment(seq, payload), store, payload)

        self._send = send

    def egress(self, frame: memoryview) -> bool:
        """A frame from the sender: encrypt what has a context; False drops it."""
        c = self.counters
        c["frames_out"] += 1
        c["bytes_out"] += len(frame)
        t = parse_tcp(frame)
        if t is None:
            c["frames_passed"] += 1
            return True
        flow = self.flows.get(t.key)
        if flow is None:
            flow = self.flows[t.key] = Flow()
        n = t.end - t.payload
        sent_before = flow.snd_nxt  # the end of what the NIC forwarded so far
        if t.flags & TCP_SYN:
            flow.isn = t.seq
            flow.snd_nxt = (t.seq + 1) % SEQ_MOD
        elif n:
            end = (t.seq + n) % SEQ_MOD
            # seq_after(end, snd_nxt), inlined (once per frame)
            if flow.snd_nxt is None or (flow.snd_nxt - end) % SEQ_MOD >= _HALF:
                flow.snd_nxt = end
        off = flow.offload
        if off is None or n == 0:
            c["frames_passed"] += 1
            return True
        ctx, store = off
        if (
            sent_before is not None
            and 0 < (sent_before - t.seq) % SEQ_MOD < _HALF  # seq_before(seq, sent_before)
            and store.acked(t.seq)
        ):  # a stale copy of bytes forwarded before: never to the driver, whatever it expects
            self.device.stats.inc("tx_tls_drop_no_sync_data")
            c["frames_dropped"] += 1
            return False
        if not self._send(ctx, t.seq, frame[t.payload : t.end], store):
            c["frames_dropped"] += 1
            return False
        make_partial(frame, t)
        c["frames_offloaded"] += 1
        flow.data_frames += 1
        if flow.lose and flow.data_frames in flow.lose:  # through the NIC, then lost
            c["frames_lost"] += 1
            flow.lost.append((t.seq, n))
            return False
        return True

    def back(self, frame: memoryview) -> bool:
        """A frame from the peer towards the host: through the RX engine."""
        self.counters["frames_back"] += 1
        self.counters["bytes_back"] += len(frame)
        return self.rx.ingress(frame)

    # -- control requests -------------------------------------------------------

    def handle(self, req: dict[str, Any], owner: int = 0) -> dict[str, Any]:
        """One control request; ``owner`` names the host connection it came
        on (RX state it adds goes when that connection does)."""
        op = req.get("op")
        if op == "stats":
            t = os.times()
            return {
                "nic": dict(self.counters),
                "device": self.device.stats.snapshot(),
                "driver": self.device.driver.name,
                "cpu_seconds": t.user + t.system,
                "faults": {d: dict(st.counts) for d, st in self.stages.items()},
                "rx_nic": dict(self.rx.counters),
            }
        try:
            key = flow_from_json(req.get("flow"))
        except (ValueError, TypeError):
            return {"error": "bad flow in request"}
        if req.get("direction") == "rx":  # the peer -> host direction: nic_rx
            return self.rx.handle(str(op), key, req, owner)
        if op == "flow":
            flow = self.flows.get(key)
            if flow is None:
                return {"isn": None, "snd_nxt": None, "lost": []}
            return {"isn": flow.isn, "snd_nxt": flow.snd_nxt, "lost": flow.lost}
        if op == "add":
            return self._add(key, req)
        if op == "del":
            return self._del(key)
        if op == "lose":
            return self._lose(key, req)
        if op in ("rekey", "rekey_done"):
            return self._rekey(key, op, req)
        return {"error": "unknown request"}

    def _add(self, key: FlowKey, req: dict[str, Any]) -> dict[str, Any]:
        flow = self.flows.get(key)
        if flow is None or flow.snd_nxt is None:
            return {"error": "the NIC has not seen this flow"}
        if flow.offload is not None:
            return {"error": "the flow already has a TX context"}
        try:
            info = CryptoInfo.unpack(bytes.fromhex(str(req["crypto_info"])))
            start = int(req["start_seq"]) % SEQ_MOD
            store = StoreReader(str(req["store"]))
        except (KeyError, ValueError, OSError):
            return {"error": "bad add request (crypto_info, start_seq or store)"}
        try:
            ctx = self.device.driver.dev_add(TLS_OFFLOAD_CTX_DIR_TX, info, start)
        except OffloadRefused as exc:
            store.close()
            return {"error": f"offload refused: {exc}"}
        flow.offload = (ctx, store)
        return {"driver": self.device.driver.name}

    def _rekey(self, key: FlowKey, op: str, req: dict[str, Any]) -> dict[str, Any]:
        """``dev_rekey`` / ``dev_rekey_done`` on the flow's context (device
        rekey, sim-nic's own op: see ``offload.drivers.simnic``)."""
        flow = self.flows.get(key)
        if flow is None or flow.offload is None:
            return {"error": "the flow has no TX context"}
        driver = self.device.driver
        call = getattr(driver, "dev_" + op, None)
        if call is None:
            return {"error": f"{driver.name} cannot rekey a device context"}
        try:
            start = int(req["start_seq"]) % SEQ_MOD
            if op == "rekey":
                info = CryptoInfo.unpack(bytes.fromhex(str(req["crypto_info"])))
        except (KeyError, ValueError):
            return {"error": f"bad {op} request (crypto_info or start_seq)"}
        ctx = flow.offload[0]
        try:
            if op == "rekey":
                call(ctx, info, start)
            else:
                call(ctx, start)
        except OffloadRefused as exc:
            return {"error": f"rekey refused: {exc}"}
        return {}

    def _lose(self, key: FlowKey, req: dict[str, Any]) -> dict[str, Any]:
        """Lose these offloaded data frames of the flow (1 = the first) after
        the NIC encrypted them: a frame dropped past the NIC, which the
        sender's TCP then retransmits (the resync path on a real
        retransmission).  Not a Linux operation: a test bench hook."""
        flow = self.flows.get(key)
        if flow is None:
            return {"error": "the NIC has not seen this flow"}
        try:
            flow.lose = frozenset(int(n) for n in req.get("frames", []))
        except (TypeError, ValueError):
            return {"error": "frames must be a list of integers"}
        return {}

    def _del(self, key: FlowKey) -> dict[str, Any]:
        flow = self.flows.get(key)
        if flow is not None and flow.offload is not None:
            ctx, store = flow.offload
            flow.offload = None
            self.device.driver.dev_del(ctx)
            store.close()
        return {}


def serve_control(nic: Nic, path: str) -> socket.socket:
    """Listen on ``path``; one thread per host connection."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    srv.bind(path)
    srv.listen(64)

    def conn_loop(conn: socket.socket) -> None:
        try:
            serve_conn(conn)
        finally:
            with nic.lock:  # a host gone without ``close``: its RX state goes too
                nic.rx.disconnected(id(conn))

    def serve_conn(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    raw = conn.recv(MAX_MESSAGE)
                except OSError:
                    return
                if not raw:
                    return
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict):
                        raise ValueError
                except ValueError:
                    answer: dict[str, Any] = {"error": "not a JSON object"}
                else:
                    with nic.lock:
                        answer = nic.handle(req, id(conn))
                with contextlib.suppress(OSError):
                    conn.send(json.dumps(answer).encode())

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=conn_loop, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return srv


def open_in(ns: str) -> int:
    """TUN ``nic0`` created inside namespace ``ns`` (this thread enters it
    for the ioctl and comes back)."""
    netns.pushns(ns)
    try:
        return open_tun(TUN_NAME)
    finally:
        netns.popns()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="offload.netwire.nic")
    ap.add_argument("--tx-ns", required=True)
    ap.add_argument("--rx-ns", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--driver", default="sim-nic")
    ap.add_argument("--faults", default="")
    args = ap.parse_args(argv)
    try:
        faults = WireFaults.parse(args.faults)
    except ValueError as exc:
        print(f"nic: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    _die_with_parent()
    try:
        nic = Nic(create_device(args.driver, TUN_NAME))
        tx_fd = open_in(args.tx_ns)
        rx_fd = open_in(args.rx_ns)
        srv = serve_control(nic, args.control)
    except (OSError, LookupError) as exc:
        print(f"nic: {exc}", file=sys.stderr)
        return 2
    for src, dst, fn, name in ((tx_fd, rx_fd, nic.egress, "out"), (rx_fd, tx_fd, nic.back, "back")):
        stage = FaultStage(faults, name) if faults.any else None
        if stage is not None:
            nic.stages[name] = stage
        # Towards the host the faults act before the NIC (its RX engine
        # meets the peer's retransmissions); away from it, after.
        loop = forward_rx if name == "back" else forward
        threading.Thread(target=loop, args=(src, dst, fn, stage), daemon=True).start()
    print("ready", flush=True)
    while not stop.wait(3600):
        pass
    srv.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    with contextlib.suppress(OSError):  # the owner's private directory, if now empty
        os.rmdir(os.path.dirname(args.control))
    os.close(tx_fd)
    os.close(rx_fd)
    for ns in (args.tx_ns, args.rx_ns):  # the owner may be gone (SIGKILL): clean up for it
        with contextlib.suppress(OSError):
            netns.remove(ns)
    return 0


def _die_with_parent() -> None:
    """SIGTERM when the process that started us dies (``PR_SET_PDEATHSIG``),
    so a killed owner cannot leave a NIC, its TUN links or the namespaces
    behind (the NIC removes the namespaces on its way out)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() == 1:  # the owner died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
