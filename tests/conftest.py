"""Shared fixtures: loopback TCP pairs and crypto_infos with random keys."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator

import pytest

from offload.uapi import TLS_1_2_VERSION, TLS_1_3_VERSION, CipherType, CryptoInfo

VERSIONS = [TLS_1_2_VERSION, TLS_1_3_VERSION]
CIPHERS = list(CipherType)
COMBOS = [(v, c) for v in VERSIONS for c in CIPHERS]


def combo_id(vc: tuple[int, CipherType]) -> str:
    v, c = vc
    return f"{'1.2' if v == TLS_1_2_VERSION else '1.3'}-{c.name}"


def random_info(version: int, cipher: CipherType, seq: int = 0) -> CryptoInfo:
    return CryptoInfo.random(version, cipher, seq=seq)


@pytest.fixture
def tcp_pair() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    """Factory of connected loopback TCP pairs (client, server); all closed after."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lsock:
            lsock.bind(("127.0.0.1", 0))
            lsock.listen(1)
            c = socket.create_connection(lsock.getsockname())
            s, _ = lsock.accept()
        c.settimeout(20)
        s.settimeout(20)
        made.extend([c, s])
        return c, s

    yield make
    for s in made:
        with contextlib.suppress(OSError):
            s.close()
