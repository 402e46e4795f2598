"""The rest of OpenSSL's s_client/s_server dialect (issue 15, item 2), against real peers.

``-alpn`` negotiated with ``openssl s_server -alpn`` (and ``s_client -alpn``
against ``serve``), ``-CApath`` with an ``openssl rehash``ed directory (and
one without the CA: the reason), ``-verify_return_error``, ``-showcerts``
parsed back by ``openssl x509``, ``-brief``, ``-msg``/``-debug``/``-state``
lines of a real handshake and the records after the handoff, ``serve
-www``'s status page fetched with curl, ``-port`` on both commands, and the
message for a single-dash option tlsctl does not know.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.helpers.peers import (
    OPENSSL,
    Pki,
    free_port,
    make_pki,
    openssl_server,
    run_tlsctl,
    sha,
    spawn,
    tlsctl_server,
    wait_port,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "f.bin"
    p.write_bytes(os.urandom(50_000))
    return p


def _send(port: int, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tlsctl("send", str(data), "-connect", f"localhost:{port}", *args)


# --- -alpn -------------------------------------------------------------------------


def test_alpn_negotiated_with_openssl_server(pki: Pki, data: Path, tmp_path: Path) -> None:
    """s_server prefers h2 from its list; we offer foo and h2: h2, in --json
    and -brief; the bytes arrive."""
    got = tmp_path / "got.bin"
    with (
        got.open("wb") as out,
        openssl_server(pki.cert, pki.key, out, "-alpn", "h2,http/1.1") as (proc, port),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "-alpn", "foo,h2", "--json", "-brief")
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["alpn"] == "h2"
    assert "ALPN protocol: h2" in r.stderr
    assert sha(got) == sha(data)


def _python_client(port: int, payload: bytes, alpn: list[str] | None = None) -> str | None:
    """Python's ssl (an independent stack): send ``payload``, close_notify,
    wait for the server's; the ALPN protocol it got."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        tls = ctx.wrap_socket(raw)
        tls.sendall(payload)
        chosen = tls.selected_alpn_protocol()
        tls.unwrap()
    return chosen


def test_alpn_serve_picks_its_preference(data: Path) -> None:
    """serve -alpn: the first of its list the client offers (s_server's rule),
    in the log record; s_client and Python's ssl see the same protocol."""
    with tlsctl_server("-alpn", "http/1.1,h2", "-naccept", "2", "--offload", "sw") as srv:
        chosen = _python_client(srv.port, data.read_bytes(), ["h2", "http/1.1"])
        cmd = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{srv.port}", "-alpn", "h2,http/1.1"]
        c = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        recs = srv.records()
    assert chosen == "http/1.1"
    assert "ALPN protocol: http/1.1" in c.stdout.decode()
    assert recs[0]["ok"], recs
    assert [r["alpn"] for r in recs] == ["http/1.1", "http/1.1"]
    assert recs[0]["bytes_in"] == data.stat().st_size


def test_alpn_no_overlap_is_no_application_protocol(pki: Pki, data: Path, tmp_path: Path) -> None:
    """Nothing in common: the server's fatal no_application_protocol (RFC 7301
    3.2), from s_server to send and from serve to Python's ssl."""
    with (
        (tmp_path / "o").open("wb") as out,
        openssl_server(pki.cert, pki.key, out, "-alpn", "h2") as (proc, port),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "-alpn", "spdy/1")
        proc.kill()
    assert r.returncode == 1
    assert "no application protocol" in r.stderr
    with tlsctl_server("-alpn", "h2", "-naccept", "1") as srv:
        with pytest.raises(ssl.SSLError, match="alert no application protocol"):
            _python_client(srv.port, b"x", ["spdy/1"])
        (rec,) = srv.records()
    assert not rec["ok"] and "no -alpn protocol in common with the client's spdy/1" in rec["error"]


def test_alpn_absent_when_not_asked(pki: Pki, data: Path, tmp_path: Path) -> None:
    """No -alpn on our side: none negotiated, no "alpn" key in --json."""
    with (
        (tmp_path / "o").open("wb") as out,
        openssl_server(pki.cert, pki.key, out, "-alpn", "h2") as (proc, port),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "--json")
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert "alpn" not in json.loads(r.stdout)


def test_alpn_bad_list_is_a_usage_error(data: Path) -> None:
    r = run_tlsctl("send", str(data), "-connect", "localhost:1", "-alpn", "h2,,x")
    assert r.returncode == 2
    assert "-alpn" in r.stderr and "1 to 255 bytes" in r.stderr


# --- -CApath, -verify_return_error ---------------------------------------------------


def test_capath_rehashed_dir_verifies_and_one_without_the_ca_fails(
    pki: Pki, data: Path, tmp_path: Path
) -> None:
    good, other = tmp_path / "good", tmp_path / "other"
    good.mkdir()
    other.mkdir()
    shutil.copy(pki.ca, good / "ca.pem")
    shutil.copy(pki.self_signed, other / "unrelated.pem")  # a CA dir without ours
    for d in (good, other):
        subprocess.run([OPENSSL, "rehash", str(d)], check=True, capture_output=True)
    assert any(re.fullmatch(r"[0-9a-f]{8}\.0", p.name) for p in good.iterdir())
    got = tmp_path / "got.bin"
    with got.open("wb") as out, openssl_server(pki.cert, pki.key, out, naccept=2) as (_p, port):
        ok = _send(port, data, "-CApath", str(good))
        bad = _send(port, data, "-CApath", str(other))
    assert ok.returncode == 0, ok.stderr
    assert sha(got) == sha(data)
    assert bad.returncode == 1
    assert "unknown CA" in bad.stderr and f"-CApath {other}" in bad.stderr
    assert "verify error:num=20" in bad.stderr


def test_capath_missing_dir_is_named(data: Path, tmp_path: Path) -> None:
    r = run_tlsctl("send", str(data), "-connect", "localhost:1", "-CApath", str(tmp_path / "no"))
    assert r.returncode == 1
    assert f"-CApath {tmp_path / 'no'}: no such directory" in r.stderr


def test_verify_return_error_aborts_and_contradicts_k(pki: Pki, data: Path, tmp_path: Path) -> None:
    """tlsctl always aborts on a failed verification (s_client's
    -verify_return_error): the flag is accepted, the server gets nothing;
    with -k it is a usage error."""
    got = tmp_path / "got.bin"
    with (
        got.open("wb") as out,
        openssl_server(pki.self_signed, pki.self_signed_key, out) as (
            proc,
            port,
        ),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "-verify_return_error")
        proc.kill()
    assert r.returncode == 1
    assert "certificate verify failed: self-signed certificate" in r.stderr
    assert got.read_bytes() == b""
    k = _send(1, data, "-k", "-verify_return_error")
    assert k.returncode == 2 and "-verify_return_error and -k" in k.stderr


# --- -showcerts, -brief --------------------------------------------------------------


def test_showcerts_pem_parsed_by_openssl(pki: Pki, data: Path, tmp_path: Path) -> None:
    """The chain s_server sends (leaf, then the CA given with -cert_chain),
    each PEM block read back by ``openssl x509``."""
    with (
        (tmp_path / "o").open("wb") as out,
        openssl_server(pki.cert, pki.key, out, "-cert_chain", str(pki.ca)) as (proc, port),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "-showcerts", "-quiet")
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("---\nCertificate chain\n 0 s:CN = localhost\n")
    blocks = re.findall(
        r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", r.stdout, re.S
    )
    subjects = []
    for pem in blocks:
        x = subprocess.run(
            [OPENSSL, "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True
        )
        assert x.returncode == 0, x.stderr
        subjects.append(x.stdout.strip())
    assert subjects == ["subject=CN = localhost", "subject=CN = tlsctl test CA"]
    expected = subprocess.run(
        [OPENSSL, "x509", "-in", str(pki.cert)], capture_output=True, text=True, check=True
    ).stdout
    assert blocks[0] == expected


def test_showcerts_json_keeps_stdout_json(pki: Pki, data: Path, tmp_path: Path) -> None:
    with (
        (tmp_path / "o").open("wb") as out,
        openssl_server(pki.cert, pki.key, out) as (proc, port),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "-showcerts", "--json", "-msg")
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # nothing but the one object on stdout
    assert doc["peer_certificates"][0].startswith("-----BEGIN CERTIFICATE-----")
    assert ">>> TLS 1.3, Handshake" in r.stderr  # -msg went to stderr


# --- -msg, -debug, -state, -v levels --------------------------------------------------


def _msg_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((">>>", "<<<"))]


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_msg_real_handshake_and_records_after_handoff(
    pki: Pki, data: Path, tmp_path: Path, version: str
) -> None:
    got = tmp_path / "got.bin"
    with got.open("wb") as out, openssl_server(pki.cert, pki.key, out) as (proc, port):
        r = _send(port, data, "-CAfile", str(pki.ca), "-msg", "--offload", "sw", version)
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert sha(got) == sha(data)
    lines = _msg_lines(r.stdout)
    v = "TLS 1.3" if version == "-tls1_3" else "TLS 1.2"
    first = {
        name: next(i for i, line in enumerate(lines) if line.endswith(name))
        for name in ("ClientHello", "ServerHello", "Finished")
    }
    assert lines[first["ClientHello"]].startswith(f">>> {v}, Handshake [length ")
    assert lines[first["ServerHello"]].startswith(f"<<< {v}, Handshake")
    assert first["ClientHello"] < first["ServerHello"] < first["Finished"]
    finished = [line[:3] for line in lines if line.endswith(", Finished")]
    assert sorted(finished) == ["<<<", ">>>"]
    # The hex under the ClientHello line is the message: type 1, then its length.
    after = r.stdout.split(lines[first["ClientHello"]] + "\n", 1)[1]
    assert after.startswith("    01 00 ")
    # After the handoff: 50 000 bytes leave as application-data records
    # (type 0x17) the layer wrote, at least 4 of them, each shown with its header.
    handoff = max(i for i, line in enumerate(lines) if line.endswith(", Finished"))
    sent_headers = re.findall(
        r">>> TLS 1\.2, RecordHeader \[length 0005\]\n    17 03 03 ", r.stdout
    )
    assert len(sent_headers) >= 4
    assert any(">>> TLS 1.2, RecordHeader" in line for line in lines[handoff + 1 :])
    assert f">>> {v}, Alert [length 0002], warning close_notify" in lines
    assert f"<<< {v}, Alert [length 0002], warning close_notify" in lines


def test_msg_shows_our_key_updates(pki: Pki, data: Path, tmp_path: Path) -> None:
    """TLS 1.3 KeyUpdates the layer sends after the handoff are shown as
    handshake messages (their content is encrypted on the wire); s_server
    takes them and gets every byte."""
    got = tmp_path / "got.bin"
    with got.open("wb") as out, openssl_server(pki.cert, pki.key, out) as (proc, port):
        r = _send(
            port, data, "-CAfile", str(pki.ca), "-msg", "-tls1_3", "--key-update-every", "16K"
        )
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert sha(got) == sha(data)
    updates = [line for line in _msg_lines(r.stdout) if line.endswith("KeyUpdate")]
    assert len(updates) == 3  # after 16, 32 and 48 KiB of the 50 000 bytes
    assert all(u == ">>> TLS 1.3, Handshake [length 0005], KeyUpdate" for u in updates)
    assert "\n    18 00 00 01 00\n" in r.stdout  # key_update, length 1, update_not_requested


def test_debug_hexdump_and_state_lines(pki: Pki, data: Path, tmp_path: Path) -> None:
    with (
        (tmp_path / "o").open("wb") as out,
        openssl_server(pki.cert, pki.key, out) as (proc, port),
    ):
        r = _send(port, data, "-CAfile", str(pki.ca), "-debug", "-state", "--offload", "sw")
        proc.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^write to socket \(\d+ bytes\)\n0000 - 16 03 01 ", r.stdout, re.M)
    assert re.search(r"^0000 - 17 03 03 ", r.stdout, re.M)  # an application-data record
    state = r.stderr.splitlines()
    assert "SSL_connect:before SSL initialization" in state
    assert "SSL_connect:SSLv3/TLS write client hello" in state
    assert "SSL_connect:SSLv3/TLS read finished" in state


def test_verbose_levels_add_state_then_msg(pki: Pki, data: Path, tmp_path: Path) -> None:
    """-v: the certificate line; -vv: also -state; -vvv: also -msg."""
    outs = {}
    with (
        (tmp_path / "o").open("wb") as out,
        openssl_server(pki.cert, pki.key, out, naccept=3) as (_proc, port),
    ):
        for level in ("-v", "-vv", "-vvv"):
            outs[level] = _send(port, data, "-CAfile", str(pki.ca), level)
    for level, r in outs.items():
        assert r.returncode == 0, (level, r.stderr)
        assert "server certificate: CN=localhost" in r.stderr
    assert "SSL_connect:" not in outs["-v"].stderr
    assert "SSL_connect:SSLv3/TLS write client hello" in outs["-vv"].stderr
    assert not _msg_lines(outs["-vv"].stdout)
    assert "SSL_connect:" in outs["-vvv"].stderr
    assert any(line.endswith("ClientHello") for line in _msg_lines(outs["-vvv"].stdout))


def test_msg_on_serve_with_python_ssl_client(data: Path) -> None:
    """serve -msg: the server's view (ClientHello received, ServerHello sent)."""
    with tlsctl_server("-msg", "-naccept", "1", "--offload", "sw") as srv:
        _python_client(srv.port, data.read_bytes())
        recs = srv.records()
    err = srv.stderr()
    assert recs[-1]["ok"], recs
    assert "<<< TLS 1.3, Handshake" in err and "ClientHello" in err
    assert ">>> TLS 1.3, Handshake" in err and "ServerHello" in err
    assert "<<< TLS 1.2, RecordHeader [length 0005]\n    17 03 03 " in err


# --- serve -www, -port -----------------------------------------------------------------


def test_www_status_page_with_curl() -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is required")
    with tlsctl_server("-www", "-naccept", "1", "--offload", "sw", "-alpn", "http/1.1") as srv:
        c = subprocess.run(
            ["curl", "-sk", "-v", f"https://127.0.0.1:{srv.port}/anything"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        (rec,) = srv.records()
    assert c.returncode == 0, c.stderr
    m = re.search(r"SSL connection using (\S+) / (\S+)", c.stderr)
    assert m is not None
    page = c.stdout
    assert f"Cipher: {m.group(2)}" in page and f"Cipher: {rec['cipher']}" in page
    assert "Offload: sw" in page and "ALPN protocol: http/1.1" in page
    assert f"TX sequence number at handoff: {rec['tx_seq_at_handoff']}" in page
    # The page went in the first record after the handoff; curl's request was RX record 0.
    assert f"TX sequence number now (this page&#x27;s record): {rec['tx_seq_at_handoff']}" in page
    assert "RX sequence number now (next record): 1" in page
    assert rec["tx_seq_at_end"] > rec["tx_seq_at_handoff"]
    assert rec["requests"] == [
        {
            "method": "GET",
            "target": "/anything",
            "status": 200,
            "bytes": rec["requests"][0]["bytes"],
        }
    ]


def test_serve_port_and_send_port(pki: Pki, data: Path, tmp_path: Path) -> None:
    """serve -port N listens on N (every address); send -port N alone goes to localhost:N."""
    port = free_port()
    cmd = ["serve", "-port", str(port), "-naccept", "1", "--json", "-cert", str(pki.cert)]
    cmd += ["-key", str(pki.key)]
    from tests.helpers.peers import TLSCTL

    with spawn([*TLSCTL, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_port(port, proc)
        r = run_tlsctl("send", str(data), "-port", str(port), "-CAfile", str(pki.ca))
        out, _ = proc.communicate(timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"localhost:{port}" in r.stdout or f"localhost:{port}" in r.stderr
    listening, conn = (json.loads(line) for line in out.decode().splitlines())
    assert listening["port"] == port and conn["bytes_in"] == data.stat().st_size
    both = run_tlsctl("serve", "-port", "1", "-accept", "2")
    assert both.returncode == 2 and "not both" in both.stderr
    twice = run_tlsctl("send", str(data), "-connect", "localhost:5", "-port", "6")
    assert twice.returncode == 2 and "has a port already" in twice.stderr


# --- the unknown single-dash option ----------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["send", "x", "-nbio"], "-nbio"),
        (["send", "x", "-connectt", "h:1"], "-connectt"),
        (["serve", "-HTTP"], "-HTTP"),
        (["serve", "-verbose"], "-verbose"),
    ],
)
def test_unknown_single_dash_option_named_whole(argv: list[str], word: str) -> None:
    r = run_tlsctl(*argv)
    assert r.returncode == 2
    assert f"no such option '{word}'" in r.stderr
    assert "No such option: -" not in r.stderr


@pytest.mark.parametrize(
    ("argv", "word"), [(["bench", "-port", "5"], "-port"), (["inspect-context", "-xyz"], "-xyz")]
)
def test_unknown_single_dash_other_commands(argv: list[str], word: str) -> None:
    """Commands without their own check: the whole word from click's "-p"."""
    r = run_tlsctl(*argv)
    assert r.returncode == 2
    assert f"no such option '{word}'" in r.stderr


def test_short_flags_still_combine() -> None:
    r = run_tlsctl("send", "--loopback", "--size", "1K", "-vv", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


def test_serve_brief_per_connection(pki: Pki, data: Path) -> None:
    """serve -brief: s_server's block for each connection, on stderr, labelled;
    with -Verify the client's certificate (Python's ssl presents it)."""
    args = ["-brief", "-naccept", "1", "-alpn", "h2", "-Verify", "1", "-CAfile", str(pki.ca)]
    with tlsctl_server(*args) as srv:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # serve's ephemeral cert
        ctx.load_cert_chain(str(pki.cert), str(pki.key))
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as raw:
            tls = ctx.wrap_socket(raw)
            tls.sendall(data.read_bytes())
            tls.unwrap()
        (rec,) = srv.records()
    err = srv.stderr()
    assert rec["ok"], rec
    label = f"[1] {rec['peer']}"
    for line in (
        "CONNECTION ESTABLISHED",
        f"Protocol version: {rec['version']}",
        f"Ciphersuite: {rec['cipher']}",
        "Peer certificate: CN = localhost",
        "Verification: OK",
        "ALPN protocol: h2",
        f"Offload: {rec['offload']}",
    ):
        assert f"{label} {line}\n" in err, (line, err)
