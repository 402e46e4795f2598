"""Helpers for tests on the real wire (offload.netwire): peers in namespaces,
a capture of the receiver's link, a TLS client whose TX goes through the NIC."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from offload.ktls_socket import KTLSSocket
from offload.netwire.control import ControlClient, flow_of, flow_to_json
from offload.netwire.netns import NetnsWire
from offload.netwire.txpath import NetTxPath
from tests.helpers.peers import Pki, spawn
from tlsctl.handshake import HandshakeResult, install_keylog, install_offload, run_handshake
from tlsctl.session.channel import KtlsChannel
from tlsctl.tlsconf import TlsOptions, client_context

ETH_P_ALL = 0x0003
SUITES = [
    ("1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("1.2", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("1.2", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("1.3", "TLS_AES_128_GCM_SHA256"),
    ("1.3", "TLS_AES_256_GCM_SHA384"),
    ("1.3", "TLS_CHACHA20_POLY1305_SHA256"),
]


def listening_in(pid: int, port: int) -> bool:
    """Something in LISTEN on ``port`` in the namespace of process ``pid``."""
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_listening(proc: subprocess.Popen[Any], port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited early with status {proc.returncode}")
        if listening_in(proc.pid, port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


def s_server_args(pki: Pki, version: str, suite: str, port: int) -> list[str]:
    args = [
        "openssl",
        "s_server",
        "-quiet",
        "-accept",
        str(port),
        "-naccept",
        "1",
        "-cert",
        str(pki.rsa_cert),
        "-key",
        str(pki.rsa_key),
    ]
    if version == "1.3":
        return [*args, "-tls1_3", "-ciphersuites", suite]
    return [*args, "-tls1_2", "-cipher", suite]


@contextlib.contextmanager
def s_server_in_rx(
    wire: NetnsWire, pki: Pki, version: str, suite: str, out: IO[bytes], port: int = 4433
) -> Iterator[subprocess.Popen[bytes]]:
    """``openssl s_server`` in the receiver namespace, writing what it gets to ``out``."""
    cmd = wire.argv("rx", s_server_args(pki, version, suite, port))
    with spawn(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE) as proc:
        wait_listening(proc, port)
        yield proc


def client_opts(version: str, suite: str) -> TlsOptions:
    if version == "1.3":
        return TlsOptions(tls1_3=True, ciphersuites=suite)
    return TlsOptions(tls1_2=True, cipher=suite)


def connect_tls(
    wire: NetnsWire, version: str, suite: str, port: int = 4433
) -> tuple[socket.socket, HandshakeResult]:
    """A TCP connection from the sender namespace and a finished handshake."""
    sock = wire.socket("tx")
    sock.settimeout(15)
    sock.connect((wire.addr("rx"), port))
    ctx = client_context(client_opts(version, suite), verify=False)
    install_keylog(ctx)
    return sock, run_handshake(sock, ctx, "client")


def offload_channel(
    wire: NetnsWire, sock: socket.socket, res: HandshakeResult, **path_kw: Any
) -> tuple[KtlsChannel, NetTxPath]:
    """``send --offload sim-nic`` through the library: the layer's TX on the NIC."""
    path = NetTxPath(sock, wire.control, **path_kw)
    k = install_offload(KTLSSocket(sock, backend="sw", txpath=path), res)
    if k.offload_refused:
        raise AssertionError(f"the NIC refused the context: {k.offload_refused}")
    return KtlsChannel(k, res), path


def nic_stats(wire: NetnsWire) -> dict[str, Any]:
    c = ControlClient(wire.control)
    try:
        return c.call("stats")
    finally:
        c.close()


def flow_seen(wire: NetnsWire, sock: socket.socket) -> dict[str, Any]:
    c = ControlClient(wire.control)
    try:
        return c.call("flow", flow=flow_to_json(flow_of(sock)))
    finally:
        c.close()


def lose_frames(wire: NetnsWire, sock: socket.socket, frames: list[int]) -> None:
    c = ControlClient(wire.control)
    try:
        c.call("lose", flow=flow_to_json(flow_of(sock)), frames=frames)
    finally:
        c.close()


class RxCapture:
    """Every TCP frame that crossed the receiver's link towards ``port``:
    an AF_PACKET socket on ``nic0`` in the receiver namespace (what arrived
    after the NIC, read by the receiver's kernel, not by the NIC)."""

    def __init__(self, wire: NetnsWire, port: int) -> None:
        self.port = port
        self.frames: list[tuple[int, bytes]] = []  # (TCP seq, payload)
        self.syn_isn: int | None = None
        self._sock = wire.socket("rx", socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)  # SO_RCVBUFFORCE
        self._sock.bind(("nic0", ETH_P_ALL))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pkt = self._sock.recv(1 << 17)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
                continue
            ihl = (pkt[0] & 15) * 4
            total = struct.unpack_from(">H", pkt, 2)[0] or len(pkt)
            dport, seq = struct.unpack_from(">HI", pkt, ihl + 2)
            if dport != self.port:
                continue
            doff = (pkt[ihl + 12] >> 4) * 4
            if pkt[ihl + 13] & 0x02:
                self.syn_isn = seq
            payload = pkt[ihl + doff : min(total, len(pkt))]
            if payload:
                self.frames.append((seq, payload))

    def stop(self) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def payload_bytes(self) -> bytes:
        return b"".join(p for _, p in self.frames)


def marker_file(path: Path, size: int) -> bytes:
    """A file of a repeated recognisable marker (its plaintext is findable)."""
    unit = b"<<tlsctl-marker-PLAINTEXT-must-not-cross-the-wire>>"
    data = (unit * (size // len(unit) + 1))[:size]
    path.write_bytes(data)
    return unit
