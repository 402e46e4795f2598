"""``bench --direction rx``: the receiving host's CPU per GB, with and without the NIC.

The TX bench measures senders; this measures the receiver.  One sender
process replays the same bytes to every mode over loopback TCP
(``sendfile`` of a stream of TLS records sealed once, up front, with a
random key handed to the receiver in memory), so the sender's work is the
same for all and is not measured; the receiver (a pool worker, one
process per transfer so its CPU time is its own) reads to the end:

* ``tcp``     - the raw socket drained with ``recv_into`` into a 1 MiB
                buffer (the floor: no user-space reader costs less);
* ``sw``      - ``KTLSSocket`` with software RX (TLS_CONF_SW);
* ``sim-nic`` - RX through the in-process RX wire (``offload.rxwire``) and
                the sim-nic, which decrypts what it can (TLS_CONF_HW on RX);
                with faults (``drop=0.01``: 1% of the segments lost before
                the NIC, arriving later as retransmissions) it resyncs.

Host CPU is the receiver process's CPU minus the time inside the NIC's
``rx`` calls (what hardware would do: ``RxWire.device_seconds``, metered as
the TX wire meters ``xmit``); device CPU is that time, beside it, never
added.  Linux has no such bench: it is this package's view of what
``perf`` would show on a host with an RX-offload NIC.

Used by :class:`tlsctl.benchrun.Bench` (``direction="rx"``) and by
``bench/rx.py`` and ``bench/rx_resync.py`` (the same measuring code).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from offload import KTLSSocket
from offload.keys import UnsupportedSuiteError, suite_from_openssl_name
from offload.netdev import RxSyncType, create_device
from offload.rxwire import RxWire
from offload.tls_sw import SwTx
from offload.uapi import (
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_RX,
    CipherType,
    ContentType,
    CryptoInfo,
)
from offload.wiremodel import FaultSpec
from tlsctl.benchrun.errors import BenchError, ModeUnavailable
from tlsctl.benchrun.modes import RX_MODES
from tlsctl.benchrun.procs import detach_signals
from tlsctl.benchrun.results import Result
from tlsctl.tlsconf import TlsOptions

READ_BUF = 1 << 20
SYNC_TYPES = {
    "driver": RxSyncType.DRIVER_REQ,
    "core": RxSyncType.CORE_NEXT_HINT,
    "async": RxSyncType.DRIVER_REQ_ASYNC,
}
"""``--rx-resync`` spellings, as ``serve``/``send`` take them."""


@dataclass(frozen=True)
class RxStream:
    """What the receiver is handed: the sealed stream's keys and shape (picklable)."""

    info: CryptoInfo
    size: int
    """Plaintext bytes in the stream."""
    sync_type: RxSyncType = RxSyncType.DRIVER_REQ


def stream_info(version: int, cipher: CipherType = CipherType.AES_GCM_128) -> CryptoInfo:
    """Fresh random keys for one sealed stream (the first record is seq 1, as
    after a handshake)."""
    return CryptoInfo.random(version, cipher, seq=1)


def seal_stream(path: str, info: CryptoInfo, size: int, record_size: int = 16384) -> None:
    """Write ``size`` bytes of random plaintext to ``path`` as sealed records
    of ``record_size`` (software TX, the same sealer ``send --offload sw`` uses)."""
    tx = SwTx(info)
    chunk = os.urandom(1 << 20)
    chunk = chunk[: len(chunk) - len(chunk) % record_size] or chunk[:record_size]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
        left = size
        while left:
            piece = chunk[: min(left, len(chunk))]
            for i in range(0, len(piece), record_size):
                for buf in tx.frame(
                    int(ContentType.APPLICATION_DATA), piece[i : i + record_size], False
                ):
                    f.write(buf)
            left -= len(piece)


def sender_main(conn: Any, path: str, parent: int) -> NoReturn:
    """Listen on loopback (the port goes to the parent over ``conn``) and
    send the whole file on every connection, one after the other (the
    receivers come one at a time); the receiver closes when it has read
    everything.  One process, not one per connection: a fork per transfer
    made the receiver's own CPU per GB measurably higher here (plain TCP's
    by 10-25%), which is the sender's doing, not the receiver's."""
    detach_signals(parent)
    ls = socket.create_server(("127.0.0.1", 0), backlog=16)
    conn.send(ls.getsockname()[1])
    conn.close()
    while True:
        sock, _addr = ls.accept()
        with contextlib.suppress(OSError), sock, open(path, "rb") as f:
            sock.sendfile(f)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)


@contextmanager
def sealed_sender(
    version: int, size: int, sync_type: RxSyncType = RxSyncType.DRIVER_REQ
) -> Iterator[tuple[int, RxStream]]:
    """For scripts (``bench/rx.py``, ``bench/rx_resync.py``): a sealed
    AES-128-GCM stream of ``size`` bytes in a temporary directory
    (``$BENCH_DIR`` or the system's) and a sender process replaying it:
    ``(port, stream)``; the sender is ended on the way out."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        stream = RxStream(stream_info(version), size, sync_type)
        path = os.path.join(tmp, "stream.tls")
        seal_stream(path, stream.info, size)
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=sender_main, args=(child, path, os.getpid()), daemon=True)
        proc.start()
        try:
            if not parent.poll(20):
                raise BenchError("the RX sender process did not start")
            yield int(parent.recv()), stream
        finally:
            proc.terminate()
            proc.join(10)


def receive(
    mode: str,
    port: int,
    stream: RxStream,
    faults: FaultSpec | None = None,
    mss: int | None = None,
) -> Result:
    """One transfer received as ``mode``: the Result's ``cpu`` is the
    receiver's process CPU, ``device_cpu`` the NIC's ``rx`` time within it
    (the host's part is the difference, as ``ModeRuns.add`` takes it), and
    ``receiver_cpu`` the receiving process's whole CPU, NIC included - the
    meaning the column has in the TX direction (the receiver process), so
    the "recv s/GB" column is host + device here, not a copy of "host
    s/GB" (it was, until issue 14's last round); ``extra`` has the
    host's record counts and the faults injected (sim-nic).  ``mss``: the
    RX wire's segment size (None: its TSO-sized default)."""
    raw = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(READ_BUF)
    wire: RxWire | None = None
    total = 0
    extra: dict[str, Any] = {}
    cpu0 = time.process_time()
    t0 = time.monotonic()
    with raw:
        if mode == "tcp":
            while n := raw.recv_into(buf):
                total += n
        else:
            if mode == "sim-nic":
                wire = RxWire(
                    create_device("sim-nic"), mss=mss, faults=faults, sync_type=stream.sync_type
                )
            elif mode != "sw":
                raise BenchError(f"{mode}: no RX mode of that name")
            k = KTLSSocket(raw, backend="sw", rxpath=wire)
            k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
            k.setsockopt(SOL_TLS, TLS_RX, stream.info.pack())
            if wire is not None and wire.rx is None:
                raise ModeUnavailable(
                    f"the NIC declined TLS_RX ({k.offload_refused}); try another cipher"
                )
            while n := k.recv_into(buf):
                total += n
            k.close()  # tls_dev_del: the NIC's context goes (rx_tls_del)
        t1 = time.monotonic()
        cpu = time.process_time() - cpu0
    expect = stream.size if mode != "tcp" else total
    if total != expect or total < stream.size:
        raise BenchError(f"{mode}: received {total} bytes, expected {stream.size}")
    dev = wire.device_seconds if wire is not None else 0.0
    counters: dict[str, int] | None = None
    if wire is not None and wire.rx is not None:
        report = wire.report()
        counters = {k: v for k, v in report.stats.items() if k.startswith("rx_tls_")}
        extra = {
            "records_device": wire.rx.records_device,
            "records_partial": wire.rx.records_partial,
            "records_sw": wire.rx.records_sw,
            "reencrypted_bytes": wire.rx.reencrypted_bytes,
            "faults_injected": report.faults_injected,
        }
    return Result(
        mode,
        stream.size,
        t0,
        t1,
        cpu,
        device_cpu=dev,
        receiver_cpu=cpu,
        confirmed="count",
        extra=extra,
        device_counters=counters,
    )


def stream_for(tls: TlsOptions, size: int, rx_resync: str = "driver") -> RxStream:
    """The stream the TLS options describe: TLS 1.2 with ``-tls1_2``, else
    1.3 (what the TX bench's handshake negotiates by default); the first
    suite of ``-cipher`` (1.2) or ``-ciphersuites`` (1.3), else AES-128-GCM.
    :class:`BenchError` naming the option for a suite kTLS cannot carry."""
    version = TLS_1_2_VERSION if tls.tls1_2 else TLS_1_3_VERSION
    option, names = ("-cipher", tls.cipher)
    if version == TLS_1_3_VERSION:
        option, names = ("-ciphersuites", tls.ciphersuites)
    cipher = CipherType.AES_GCM_128
    if names:
        try:
            cipher = suite_from_openssl_name(names.split(":")[0].strip()).cipher
        except UnsupportedSuiteError as exc:
            raise BenchError(str(exc), option) from None
    return RxStream(stream_info(version, cipher), size, SYNC_TYPES[rx_resync])


__all__ = [
    "READ_BUF",
    "RX_MODES",
    "SYNC_TYPES",
    "RxStream",
    "receive",
    "seal_stream",
    "sealed_sender",
    "sender_main",
    "stream_for",
    "stream_info",
]
