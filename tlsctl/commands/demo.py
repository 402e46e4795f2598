"""``tlsctl demo``: a loopback transfer through the kTLS layer, no set-up.

Until ``serve``/``send`` exist this is the main job: it installs random
keys on both ends of a loopback TCP connection for each TLS version and
cipher, moves the data through the socket-option layer, checks the SHA-256
on the far side and prints throughput, record sequence numbers and the
/proc/net/tls_stat-style counters.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import click
from rich.console import Console
from rich.table import Table

from offload import GLOBAL_STATS, KTLSSocket
from offload.uapi import (
    CIPHER_SPECS,
    SOL_TCP,
    SOL_TLS,
    TCP_ULP,
    TLS_1_2_VERSION,
    TLS_1_3_VERSION,
    TLS_RX,
    TLS_TX,
    CipherType,
    CryptoInfo,
)


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        c = socket.create_connection(lsock.getsockname())
        s, _ = lsock.accept()
    return c, s


def _transfer(version: int, cipher: CipherType, size: int) -> tuple[float, bool, int]:
    spec = CIPHER_SPECS[cipher]
    info = CryptoInfo.create(
        version,
        cipher,
        key=os.urandom(spec.key_size),
        iv=os.urandom(spec.iv_size),
        salt=os.urandom(spec.salt_size),
        seq=1,
    )
    c, s = _pair()
    tx = KTLSSocket(c, backend="user")
    rx = KTLSSocket(s, backend="user")
    tx.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    rx.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    tx.setsockopt(SOL_TLS, TLS_TX, info.pack())
    rx.setsockopt(SOL_TLS, TLS_RX, info.pack())
    data = os.urandom(size)
    start = time.perf_counter()

    def send() -> None:
        tx.sendall(data)
        tx.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    h = hashlib.sha256()
    while chunk := rx.recv(1 << 20):
        h.update(chunk)
    sender.join()
    elapsed = time.perf_counter() - start
    rec_seq = CryptoInfo.unpack(rx.getsockopt(SOL_TLS, TLS_RX, spec.struct_size)).seq  # type: ignore[arg-type]
    tx.close()
    rx.close()
    return elapsed, h.digest() == hashlib.sha256(data).digest(), rec_seq


@click.command()
@click.option("--size", default=8 << 20, show_default=True, help="Bytes per transfer.")
def demo(size: int) -> None:
    """Move data through the kTLS layer on loopback for every version and cipher.

    \b
    Example:
      tlsctl demo --size 16777216
    """
    console = Console()
    table = Table(title=f"kTLS software path, loopback, {size} bytes per run")
    for col in ("version", "cipher", "MB/s", "sha256", "rx rec_seq"):
        table.add_column(col)
    ok = True
    for version in (TLS_1_2_VERSION, TLS_1_3_VERSION):
        for cipher in CipherType:
            elapsed, same, rec_seq = _transfer(version, cipher, size)
            ok &= same
            table.add_row(
                "1.2" if version == TLS_1_2_VERSION else "1.3",
                cipher.name,
                f"{size / elapsed / 1e6:.0f}",
                "match" if same else "MISMATCH",
                str(rec_seq),
            )
    console.print(table)
    stats = {k: v for k, v in GLOBAL_STATS.snapshot().items() if v}
    console.print("tls_stat: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    if not ok:
        raise click.ClickException("received data did not match what was sent")
