"""Exact handoff whatever the record boundaries of the peer's Finished.

tlslite-ng sends its Finished in 1, 2 or 16 records, as a client uploading
to ``tlsctl serve`` and as a server receiving from ``tlsctl send`` (the
checks and why: finished_fragments.py).  TLS 1.2 with AES-GCM and
ChaCha20-Poly1305, where the count sets the first application record's
sequence number, and TLS 1.3, where the Finished is under the handshake
keys and the count must change nothing.  The same checks run on the real
kernel in the kTLS VM (tests/offload/test_kernel_vm.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.finished_fragments import check_send, check_serve
from tests.helpers.peers import Pki, make_pki

pytestmark = pytest.mark.timeout(120)

# (version, tlslite-ng cipher name, the OpenSSL name it negotiates with an RSA cert)
CASES = [
    ("1.2", "aes128gcm", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("1.2", "chacha20-poly1305", "ECDHE-RSA-CHACHA20-POLY1305"),
    ("1.3", "aes256gcm", "TLS_AES_256_GCM_SHA384"),
]
PARAMS = [
    pytest.param(*c, n, id=f"tls{c[0]}-{c[1]}-finished-in-{n}") for c in CASES for n in (1, 2, 16)
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "data.bin"
    p.write_bytes(os.urandom(3 * 16384 + 1000))  # several records each way
    return p


@pytest.mark.parametrize(("version", "cipher", "openssl_name", "n"), PARAMS)
def test_serve_takes_fragmented_client_finished(
    version: str, cipher: str, openssl_name: str, n: int, pki: Pki, data: Path, tmp_path: Path
) -> None:
    check_serve("sw", version, cipher, openssl_name, n, pki, data, tmp_path)


@pytest.mark.parametrize(("version", "cipher", "openssl_name", "n"), PARAMS)
def test_send_takes_fragmented_server_finished(
    version: str, cipher: str, openssl_name: str, n: int, pki: Pki, data: Path, tmp_path: Path
) -> None:
    check_send("sw", version, cipher, openssl_name, n, pki, data, tmp_path)
