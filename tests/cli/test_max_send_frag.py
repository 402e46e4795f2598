"""``-max_send_frag`` (s_client/s_server's option) as the layer's
``TLS_TX_MAX_PAYLOAD_LEN``: what an independent peer reads.

``openssl s_server -msgfile`` logs every record header it receives; after
the handoff each data record carries exactly the limit (the last one less),
for TLS 1.2 and 1.3, with the software layer and with sim-nic, and the
bytes s_server wrote hash equal to the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.cli.test_cli_send_serve import send_to_s_server
from tests.helpers.peers import Pki, make_pki, run_tlsctl, sha

pytestmark = pytest.mark.timeout(120)

LIMIT = 1000
SIZE = 300_007


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _received_record_lengths(msgfile: Path) -> list[int]:
    """Lengths of the application-data records s_server's -msg saw arrive."""
    text = msgfile.read_text(errors="replace")
    headers = re.findall(r"<<< [^\n]*RecordHeader \[length 0005\]\n\s+((?:[0-9a-f]{2} ?){5})", text)
    out = []
    for h in headers:
        b = bytes.fromhex(h.replace(" ", ""))
        if b[0] == 0x17:
            out.append(int.from_bytes(b[3:5], "big"))
    return out


@pytest.mark.parametrize("offload", ["sw", "sim-nic"])
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_reads_records_of_the_limit(
    pki: Pki, tmp_path: Path, version: str, offload: str
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(SIZE))
    msgfile = tmp_path / "msg.txt"
    _summary, out_path = send_to_s_server(
        pki,
        tmp_path,
        src,
        ["-msg", "-msgfile", str(msgfile)],
        [version, "--offload", offload, "-max_send_frag", str(LIMIT)],
    )
    assert sha(out_path) == sha(src)
    over = 16 + (1 if version == "-tls1_3" else 8)
    lengths = [n - over for n in _received_record_lengths(msgfile)]
    full, rest = divmod(SIZE, LIMIT)
    # The data records, in order, at the end of the stream (before them: the
    # client's Finished; after them: close_notify, shorter than any).
    data = [n for n in lengths if n > 2]
    assert data[-(full + 1) :] == [LIMIT] * full + [rest], data[-5:]
    assert max(lengths) == LIMIT


def test_refused_where_no_layer_takes_it(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    r = run_tlsctl("send", str(src), "--loopback", "--offload", "none", "-max_send_frag", "512")
    assert r.returncode == 2
    assert "-max_send_frag" in r.stderr and "--offload none" in r.stderr
    r = run_tlsctl("send", str(src), "--loopback", "-max_send_frag", "63")
    assert r.returncode == 2 and "64<=x<=16384" in r.stderr
