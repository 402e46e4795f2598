"""``tlsctl send`` / ``tlsctl serve`` against real TLS peers on loopback.

Independent stacks (OpenSSL's s_server/s_client, Python's ssl, curl) are the
oracle: the bytes they received or sent must hash equal to the file.  Every
peer is a process with a deadline and is killed in ``finally`` (tests/helpers/peers.py).

The large transfer (send -> s_server, serve -WWW -> curl) is 64 MiB;
``TLSCTL_BIG_MIB=1024 pytest ...`` makes it 1 GiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.peers import (
    TLSCTL,
    Pki,
    free_port,
    make_pki,
    openssl_client,
    openssl_server,
    run_tlsctl,
    sha,
    spawn,
    tlsctl_server,
    wait_port,
)

pytestmark = pytest.mark.timeout(120)  # pytest-timeout; subprocess waits have their own

SUITES_13 = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
SUITES_12 = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
]
SIZES = [0, 1, 16383, 16384, 16385]
BIG = int(os.environ.get("TLSCTL_BIG_MIB", "64")) << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    d = tmp_path_factory.mktemp("data")
    out = {}
    for n in [*SIZES, 1 << 20]:
        p = d / f"f{n}.bin"
        p.write_bytes(os.urandom(n))
        out[n] = p
    return out


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("big") / "big.bin"
    with p.open("wb") as f:
        block = os.urandom(1 << 20)
        for i in range(BIG >> 20):
            f.write(hashlib.sha256(bytes([i & 255])).digest() + block[32:])
    return p


def send_to_s_server(
    pki: Pki,
    tmp: Path,
    src: Path,
    server_args: list[str],
    send_args: list[str],
    cert: Path | None = None,
    key: Path | None = None,
) -> tuple[dict[str, object], Path]:
    out_path = tmp / "s_server.out"
    with (
        out_path.open("wb") as out,
        openssl_server(cert or pki.cert, key or pki.key, out, *server_args) as (proc, port),
    ):
        r = run_tlsctl(
            "send",
            str(src),
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(pki.ca),
            "-servername",
            "localhost",
            "--json",
            *send_args,
        )
        assert r.returncode == 0, r.stderr
        proc.wait(10)
    return json.loads(r.stdout), out_path


# --- tlsctl send -> openssl s_server -----------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("version", "suite"),
    [("1.3", s) for s in SUITES_13] + [("1.2", s) for s in SUITES_12],
)
def test_send_to_openssl_s_server(
    pki: Pki, files: dict[int, Path], tmp_path: Path, version: str, suite: str, size: int
) -> None:
    flag = "-ciphersuites" if version == "1.3" else "-cipher"
    vflag = "-tls1_3" if version == "1.3" else "-tls1_2"
    summary, out = send_to_s_server(pki, tmp_path, files[size], [vflag, flag, suite], [])
    assert summary["bytes"] == size
    assert summary["cipher"] == suite
    assert summary["version"] == f"TLSv{version}"
    assert summary["offload"] == "sw" and summary["offload_requested"] == "auto"
    assert summary["sha256"] == sha(files[size]) == sha(out)
    # JSON has numbers with their unit in the name, not "1.0 MB/s" strings.
    rate = summary["bytes_per_second"]
    assert isinstance(rate, float) and rate >= 0
    # Each is rounded on its own (rates to 0.1, seconds to 1e-6): a 1-byte
    # transfer gives 380.2 bits/s beside 8 x 47.5 bytes/s.
    assert summary["bits_per_second"] == pytest.approx(8 * rate, rel=1e-6, abs=1)
    seconds = summary["seconds"]
    assert isinstance(seconds, float)
    assert rate == pytest.approx(size / seconds, rel=1e-3, abs=1)
    assert "throughput" not in summary
    if version == "1.2":
        assert (summary["tx_seq_at_handoff"], summary["rx_seq_at_handoff"]) == (1, 1)
    else:
        # Client: 0/0 at handoff; the server's two tickets arrive through the
        # layer afterwards and are skipped, then its close_notify (seq 2).
        assert (summary["tx_seq_at_handoff"], summary["rx_seq_at_handoff"]) == (0, 0)
        assert summary["session_tickets_ignored"] == 2
        assert summary["rx_seq_at_end"] == 3


def test_send_rsa_certificate(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    summary, out = send_to_s_server(
        pki,
        tmp_path,
        files[1 << 20],
        ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
        [],
        cert=pki.rsa_cert,
        key=pki.rsa_key,
    )
    assert summary["cipher"] == "ECDHE-RSA-AES128-GCM-SHA256"
    assert sha(out) == summary["sha256"] == sha(files[1 << 20])


@pytest.mark.parametrize(
    ("server_args", "send_args"),
    [
        (["-ciphersuites", "TLS_AES_128_CCM_SHA256"], ["-ciphersuites", "TLS_AES_128_CCM_SHA256"]),
        (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-CCM"], ["-cipher", "ECDHE-ECDSA-AES128-CCM"]),
    ],
    ids=["1.3-AES-128-CCM", "1.2-AES-128-CCM"],
)
def test_send_ccm(
    pki: Pki, files: dict[int, Path], tmp_path: Path, server_args: list[str], send_args: list[str]
) -> None:
    """AES-128-CCM: not in OpenSSL's default lists, but Linux kTLS takes it."""
    summary, out = send_to_s_server(pki, tmp_path, files[16385], server_args, send_args)
    assert summary["offload"] == "sw" and summary["offload_requested"] == "auto"
    assert sha(out) == summary["sha256"] == sha(files[16385])


def test_send_big_file(pki: Pki, big_file: Path, tmp_path: Path) -> None:
    summary, out = send_to_s_server(pki, tmp_path, big_file, [], [])
    assert summary["bytes"] == BIG
    assert sha(out) == summary["sha256"] == sha(big_file)


def test_send_stdin_and_offload_none(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    out_path = tmp_path / "out"
    with (
        out_path.open("wb") as out,
        openssl_server(pki.cert, pki.key, out) as (proc, port),
        files[1 << 20].open("rb") as stdin,
    ):
        r = run_tlsctl(
            "send",
            "-",
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(pki.ca),
            "--offload",
            "none",
            "--json",
            stdin=stdin,
        )
        assert r.returncode == 0, r.stderr
        proc.wait(10)
    summary = json.loads(r.stdout)
    assert summary["offload"] == "none"
    assert sha(out_path) == summary["sha256"] == sha(files[1 << 20])


def test_send_plain_output_and_keylog(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    keylog = tmp_path / "keys.log"
    with (tmp_path / "o").open("wb") as out, openssl_server(pki.cert, pki.key, out) as (p, port):
        r = run_tlsctl(
            "send",
            str(files[1]),
            "--connect",
            f"localhost:{port}",
            "--CAfile",
            str(pki.ca),
            "-keylogfile",
            str(keylog),
        )
        assert r.returncode == 0, r.stderr
        p.wait(10)
    assert "sha256: " in r.stdout and "offload: auto (sw)" in r.stdout
    assert re.search(r"^throughput: [\d.]+ [kMG]?B/s \([\d.]+ [kMG]?bit/s\)$", r.stdout, re.M)
    assert "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()
    assert keylog.read_text().split()[2] not in r.stdout + r.stderr


def test_unsupported_suite_falls_back_or_fails(
    pki: Pki, files: dict[int, Path], tmp_path: Path
) -> None:
    cbc = ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]
    summary, out = send_to_s_server(pki, tmp_path, files[16385], cbc, [])
    assert summary["offload"] == "none" and summary["offload_requested"] == "auto"
    assert sha(out) == sha(files[16385])
    with (tmp_path / "o").open("wb") as o, openssl_server(pki.cert, pki.key, o, *cbc) as (_p, port):
        r = run_tlsctl(
            "send",
            str(files[1]),
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(pki.ca),
            "--offload",
            "sw",
        )
    assert r.returncode != 0  # sw offers only what it carries (test_offload_suites.py)
    assert "alert handshake failure" in r.stderr and "Traceback" not in r.stderr


# --- clients -> tlsctl serve ------------------------------------------------------


@pytest.mark.parametrize("vflag", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_to_serve_output(
    pki: Pki, files: dict[int, Path], tmp_path: Path, vflag: str
) -> None:
    dest = tmp_path / "got.bin"
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "-o", str(dest), "-naccept", "1"
    ) as srv:
        r = openssl_client(srv.port, files[1 << 20], vflag)
        assert r.returncode == 0, r.stderr
        (rec,) = srv.records()
    assert rec["ok"], rec
    assert rec["sha256"] == sha(dest) == sha(files[1 << 20])
    assert rec["clean_close"] is True
    if vflag == "-tls1_3":
        assert rec["tx_seq_at_handoff"] == 2  # two NewSessionTickets under app keys


def test_s_client_to_serve_save_dir_and_sink(
    pki: Pki, files: dict[int, Path], tmp_path: Path
) -> None:
    with tlsctl_server("--save-dir", str(tmp_path), "-naccept", "2") as srv:
        for n in (16385, 0):
            assert openssl_client(srv.port, files[n]).returncode == 0
        recs = sorted(srv.records(), key=lambda r: r["conn"])
    assert [r["sha256"] for r in recs] == [sha(files[16385]), sha(files[0])]
    assert [sha(Path(r["file"])) for r in recs] == [sha(files[16385]), sha(files[0])]
    with tlsctl_server("--sink", "-naccept", "1") as srv:
        assert openssl_client(srv.port, files[1 << 20], "-tls1_2").returncode == 0
        (rec,) = srv.records()
    assert rec["bytes_in"] == 1 << 20 and rec["ok"]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_send_big_file_to_serve_echo_does_not_stall(big_file: Path, version: str) -> None:
    """The echo comes back while the file goes out: send reads it concurrently.

    Reading only after close_notify, as send once did, deadlocks here: both
    TCP send buffers fill (64 MiB is far more than they hold) and neither
    side reads.  The echoed bytes are counted in the summary.
    """
    with tlsctl_server("--echo", "-naccept", "1") as srv:
        out = run_tlsctl(
            "send",
            str(big_file),
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-k",
            "--json",
            version,
            "--timeout",
            "20",
            timeout=100,
        )
        assert out.returncode == 0, out.stderr
        (rec,) = srv.records()
    summary = json.loads(out.stdout)
    assert summary["sha256"] == sha(big_file)
    assert summary["bytes_received"] == BIG == rec["bytes_in"] == rec["bytes_out"]


def _ssl_echo_client(
    port: int, ca: Path | None, data: bytes, version: ssl.TLSVersion, result: list[bytes]
) -> None:
    """Send ``data`` and read the echo, interleaved in one thread (an SSL
    object must not be read and written from two threads at once)."""
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    deadline = time.monotonic() + 60
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.setblocking(False)
        sent, got = 0, bytearray()
        while len(got) < len(data) and time.monotonic() < deadline:
            progressed = False
            if sent < len(data):
                with contextlib.suppress(ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    sent += s.send(data[sent : sent + 16384])
                    progressed = True
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                progressed = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            if not progressed:
                select.select([s], [s] if sent < len(data) else [], [], 0.5)
        s.setblocking(True)
        s.unwrap()  # close_notify, then the server's
        result.append(bytes(got))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_python_ssl_to_serve_echo(pki: Pki, version: ssl.TLSVersion) -> None:
    """Echo through the layer: RX after the handshake, TX after the tickets."""
    data = os.urandom(300_000)
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "--echo", "-naccept", "1"
    ) as srv:
        result: list[bytes] = []
        _ssl_echo_client(srv.port, pki.ca, data, version, result)
        (rec,) = srv.records()
    assert result == [data]
    assert rec["ok"] and rec["bytes_in"] == len(data) == rec["bytes_out"]
    assert rec["tx_seq_at_handoff"] == (2 if version == ssl.TLSVersion.TLSv1_3 else 1)
    # The log line says received and sent apart (not their sum as "bytes in").
    from tlsctl.commands.serve import _amounts

    line = _amounts(rec)
    assert line.startswith(f"received {len(data)} bytes (") and f"sent {len(data)} bytes (" in line


def test_64_concurrent_clients(files: dict[int, Path]) -> None:
    n = 64
    data = files[16385].read_bytes() * 4
    with tlsctl_server("--echo", "-naccept", str(n), "--handshake-timeout", "60") as srv:
        results: list[bytes] = []
        threads = [
            threading.Thread(
                target=_ssl_echo_client,
                args=(srv.port, None, data, ssl.TLSVersion.TLSv1_3, results),
            )
            for _ in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        recs = srv.records(timeout=60)
    assert len(results) == n and all(r == data for r in results)
    assert len(recs) == n and all(r["ok"] for r in recs)


def test_serve_www_with_curl(pki: Pki, big_file: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not for you")
    root = big_file.parent
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "-WWW", str(root), "-naccept", "2"
    ) as srv:
        out = tmp_path / "dl.bin"
        r = subprocess.run(
            [
                "curl",
                "-sS",
                "--cacert",
                str(pki.ca),
                "-o",
                str(out),
                f"https://localhost:{srv.port}/{big_file.name}",
            ],
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        r2 = subprocess.run(
            [
                "curl",
                "-sS",
                "--path-as-is",
                "--cacert",
                str(pki.ca),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                f"https://localhost:{srv.port}/../{tmp_path.name}/secret.txt",
            ],
            capture_output=True,
            timeout=30,
            text=True,
        )
        recs = srv.records()
    assert sha(out) == sha(big_file)
    assert r2.stdout == "403"
    assert sorted(q["status"] for r in recs for q in r["requests"]) == [200, 403]


# --- failures: one line, non-zero exit, no traceback; the server keeps going -----


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_send_refuses_untrusted_and_wrong_name(
    pki: Pki, files: dict[int, Path], tmp_path: Path
) -> None:
    for cert, key, args, needle in [
        (pki.self_signed, pki.self_signed_key, ["-CAfile", str(pki.ca)], "certificate verify"),
        (pki.wrong_name, pki.wrong_name_key, ["-CAfile", str(pki.ca)], "certificate verify"),
        (pki.cert, pki.key, [], "certificate verify"),  # system store does not know our CA
    ]:
        with (tmp_path / "o").open("wb") as o, openssl_server(cert, key, o) as (_p, port):
            r = run_tlsctl("send", str(files[1]), "-connect", f"localhost:{port}", *args)
        assert needle in one_line_error(r)
    with (
        (tmp_path / "o").open("wb") as o,
        openssl_server(pki.self_signed, pki.self_signed_key, o) as (p, port),
    ):
        r = run_tlsctl("send", str(files[1]), "-connect", f"localhost:{port}", "-k")
        p.wait(10)
    assert r.returncode == 0 and "NOT verified" in r.stderr


def test_send_errors(files: dict[int, Path], tmp_path: Path) -> None:
    port = free_port()
    assert "refused" in one_line_error(
        run_tlsctl("send", str(files[1]), "-connect", f"127.0.0.1:{port}")
    )
    assert "cannot open" in one_line_error(
        run_tlsctl("send", str(tmp_path / "nope"), "-connect", f"127.0.0.1:{port}")
    )
    assert "not TLS" in one_line_error(_send_to_fake(files, b"HTTP/1.1 400 Bad\r\n\r\n"))
    assert f"-CAfile {tmp_path / 'nope.pem'}: no such file" in one_line_error(
        run_tlsctl(
            "send",
            str(files[1]),
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(tmp_path / "nope.pem"),
        )
    )
    assert "exclude each other" in one_line_error(
        run_tlsctl("send", str(files[1]), "-connect", f"127.0.0.1:{port}", "-tls1_2", "-tls1_3")
    )
    # Closed at once: FIN or, with our ClientHello unread, RST; both are clear.
    assert "during the handshake" in one_line_error(_send_to_fake(files, None))


def test_send_offload_kernel_without_ktls(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    with (tmp_path / "o").open("wb") as o, openssl_server(pki.cert, pki.key, o) as (_p, port):
        r = run_tlsctl(
            "send",
            str(files[1]),
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(pki.ca),
            "--offload",
            "kernel",
        )
    assert "no kTLS" in one_line_error(r)


def _send_to_fake(files: dict[int, Path], reply: bytes | None) -> subprocess.CompletedProcess[str]:
    """A TCP server that answers the ClientHello with ``reply`` and closes
    (None: close at once)."""
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        port = ls.getsockname()[1]

        def serve_one() -> None:
            ls.settimeout(20)
            c, _ = ls.accept()
            with c:
                if reply is not None:
                    c.recv(4096)
                    c.sendall(reply)

        t = threading.Thread(target=serve_one, daemon=True)
        t.start()
        r = run_tlsctl("send", str(files[1]), "-connect", f"127.0.0.1:{port}")
        t.join(5)
        return r


def test_serve_errors(pki: Pki, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert "in use" in one_line_error(run_tlsctl("serve", "-accept", f"127.0.0.1:{port}"))
    assert f"-cert {tmp_path / 'missing.pem'}: no such file" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-cert", str(tmp_path / "missing.pem"))
    )
    assert "does not match" in one_line_error(
        run_tlsctl(
            "serve", "-accept", "127.0.0.1:0", "-cert", str(pki.cert), "-key", str(pki.rsa_key)
        )
    )
    assert f"no such directory {tmp_path / 'no'}" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-o", str(tmp_path / "no" / "f"))
    )
    assert "key log" in one_line_error(
        run_tlsctl("serve", "-accept", "127.0.0.1:0", "-keylogfile", str(tmp_path / "no" / "k"))
    )
    assert "choose one of" in run_tlsctl("serve", "--echo", "--sink").stderr


def test_serve_survives_bad_clients(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    """Garbage, a hang-up mid-handshake and a corrupted record, then a good client."""
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "--save-dir", str(tmp_path), "-naccept", "4"
    ) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.recv(100)
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(bytes.fromhex("160301020001"))  # a ClientHello header, then gone
        alert = _send_corrupted_record(srv.port)
        assert openssl_client(srv.port, files[16384]).returncode == 0
        recs = sorted(srv.records(), key=lambda r: r["conn"])
    errors = [r.get("error", "") for r in recs]
    assert "not TLS" in errors[0]
    assert "during the handshake" in errors[1]
    assert "authentication" in errors[2]
    assert "bad record mac" in alert  # the alert reached the client, sealed properly
    # Nothing after the bad record was kept: only the record before it, in a
    # file whose name says it is not a complete upload.
    assert recs[2]["file"].endswith(".partial") and recs[2]["truncated"]
    assert Path(recs[2]["file"]).read_bytes() == b"good" * 250
    assert recs[3]["ok"] and recs[3]["bytes_in"] == 16384


def _send_corrupted_record(port: int) -> str:
    """Handshake with pyOpenSSL; send a good record, a record with a flipped
    bit and another good one; return what OpenSSL makes of the reply."""
    from OpenSSL import SSL

    from tlsctl.handshake import run_handshake
    from tlsctl.tlsconf import TlsOptions, client_context

    with socket.create_connection(("127.0.0.1", port)) as s:
        ctx = client_context(TlsOptions(), verify=False)
        res = run_handshake(s, ctx, "client")
        conn: SSL.Connection = res.conn
        out = bytearray()
        for payload, corrupt in (
            (b"good" * 250, False),
            (b"x" * 1000, True),
            (b"after" * 200, False),
        ):
            conn.send(payload)
            rec = bytearray(conn.bio_read(65536))
            if corrupt:
                rec[100] ^= 1
            out += rec
        s.sendall(out)
        s.settimeout(10)
        reply = bytearray()
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                reply += chunk
        conn.bio_write(bytes(reply))
        try:
            conn.recv(65536)
        except SSL.Error as exc:
            return str(exc)
        return "no alert"


def test_serve_sigterm_clean_exit() -> None:
    """Nothing in flight: exit 0.  A client still in its handshake is cut by
    our stop: logged as such, and the exit status says not all went well."""
    with tlsctl_server("--sink") as srv:
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(10) == 0
    with tlsctl_server("--sink") as srv, socket.create_connection(("127.0.0.1", srv.port)):
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        (rec,) = srv.records(timeout=10)
        assert srv.proc.returncode == 3
    assert rec["interrupted"]
    assert rec["error"] == "interrupted by server shutdown during the handshake"


def test_help_has_examples() -> None:
    for cmd in ("send", "serve"):
        r = run_tlsctl(cmd, "--help")
        assert (
            r.returncode == 0
            and "Example" in r.stdout
            and "-connect" in run_tlsctl("send", "--help").stdout
        )


def test_spawn_cleans_up() -> None:
    with spawn(["sleep", "30"]) as p:
        pass
    assert p.returncode is not None


# --- TLS 1.3 KeyUpdate, workers, client certificates, peers that vanish -----------


@pytest.mark.parametrize("suite", SUITES_13)
def test_key_update_from_s_client(pki: Pki, suite: str) -> None:
    """s_client's 'K' (update requested) and 'k': we rekey RX, answer K with our
    own KeyUpdate and rekey TX; the echo after each update still decrypts."""
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "--echo", "-naccept", "1"
    ) as srv:
        cmd = [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-tls1_3",
            "-ciphersuites",
            suite,
            "-CAfile",
            str(pki.ca),
        ]
        with spawn(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as p:
            assert p.stdin is not None
            for line in (b"hello-1\n", b"K\n", b"hello-2\n", b"k\n", b"hello-3\n"):
                p.stdin.write(line)
                p.stdin.flush()
                time.sleep(0.3)
            out, _ = p.communicate(timeout=20)
        (rec,) = srv.records()
    text = out.decode(errors="replace")
    assert text.count("KEYUPDATE") == 2
    for n in (1, 2, 3):
        assert f"hello-{n}\n" in text
    assert rec["ok"] and rec["key_updates"] == 2 and rec["key_updates_sent"] == 1
    assert rec["cipher"] == suite
    assert rec["bytes_in"] == 3 * len(b"hello-1\n")


def test_serve_workers(files: dict[int, Path]) -> None:
    with tlsctl_server("--save-dir", str(files[1].parent), "--workers", "2") as srv:
        for _ in range(4):
            assert openssl_client(srv.port, files[16384]).returncode == 0
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        recs = [r for r in srv.records(timeout=15) if r.get("event") == "connection"]
        assert srv.proc.returncode == 0
    assert len(recs) == 4 and all(r["sha256"] == sha(files[16384]) for r in recs)


def test_client_certificates(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    with tlsctl_server(
        "-cert",
        str(pki.cert),
        "-key",
        str(pki.key),
        "-Verify",
        "1",
        "-CAfile",
        str(pki.ca),
        "-naccept",
        "3",
    ) as srv:
        ok = openssl_client(srv.port, files[16385], "-cert", str(pki.cert), "-key", str(pki.key))
        assert ok.returncode == 0, ok.stderr
        openssl_client(srv.port, files[1])  # no certificate: refused
        r = run_tlsctl(
            "send",
            str(files[16384]),
            "-connect",
            f"localhost:{srv.port}",
            "-CAfile",
            str(pki.ca),
            "-cert",
            str(pki.rsa_cert),
            "-key",
            str(pki.rsa_key),
        )
        assert r.returncode == 0, r.stderr
        recs = sorted(srv.records(), key=lambda r: r["conn"])
    assert recs[0]["ok"] and recs[0]["bytes_in"] == 16385
    assert not recs[1]["ok"] and "certificate" in recs[1]["error"]
    assert recs[2]["ok"] and recs[2]["bytes_in"] == 16384


def test_send_when_server_vanishes(pki: Pki, big_file: Path) -> None:
    """The server reads a little, then resets the connection."""
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(pki.cert, pki.key)
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)

        def server() -> None:
            ls.settimeout(20)
            raw, _ = ls.accept()
            tls = sctx.wrap_socket(raw, server_side=True)
            tls.recv(65536)
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            tls.close()  # RST

        t = threading.Thread(target=server, daemon=True)
        t.start()
        r = run_tlsctl(
            "send",
            str(big_file),
            "-connect",
            f"localhost:{ls.getsockname()[1]}",
            "-CAfile",
            str(pki.ca),
            "--timeout",
            "5",
            timeout=30,
        )
        t.join(5)
    assert "peer" in one_line_error(r)


def test_serve_when_client_vanishes_mid_record(pki: Pki) -> None:
    from OpenSSL import SSL

    from tlsctl.handshake import run_handshake
    from tlsctl.tlsconf import TlsOptions, client_context

    with tlsctl_server("--sink", "-naccept", "1") as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            res = run_handshake(s, client_context(TlsOptions(), verify=False), "client")
            conn: SSL.Connection = res.conn
            conn.send(b"y" * 5000)
            s.sendall(conn.bio_read(65536)[:3000])  # half a record, then FIN
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            while s.recv(65536):  # tickets, then the server closes
                pass
        (rec,) = srv.records()
    assert not rec["ok"] and "middle of a record" in rec["error"]


# --- our two halves, HelloRetryRequest, option parsing ---------------------------


@pytest.mark.parametrize(
    ("args", "offload"),
    [
        (["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"], "sw"),
        (["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"], "sw"),
        (["-tls1_3"], "none"),
    ],
)
def test_send_to_serve(
    pki: Pki, files: dict[int, Path], tmp_path: Path, args: list[str], offload: str
) -> None:
    keylog = tmp_path / "env.keys"
    with tlsctl_server(
        "-cert",
        str(pki.rsa_cert),
        "-key",
        str(pki.rsa_key),
        "--save-dir",
        str(tmp_path),
        "-naccept",
        "1",
        "--offload",
        offload,
    ) as srv:
        r = subprocess.run(
            [
                *TLSCTL,
                "send",
                str(files[1 << 20]),
                "-connect",
                f"localhost:{srv.port}",
                "-CAfile",
                str(pki.ca),
                "--json",
                "--offload",
                offload,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SSLKEYLOGFILE": str(keylog)},
        )
        assert r.returncode == 0, r.stderr
        (rec,) = srv.records()
    summary = json.loads(r.stdout)
    assert summary["sha256"] == rec["sha256"] == sha(files[1 << 20])
    assert rec["offload"] == offload and summary["offload"] == offload
    assert keylog.stat().st_size > 0


def test_send_after_hello_retry_request(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    """The server wants P-256, we offer X25519 first: an HRR round trip."""
    summary, out = send_to_s_server(pki, tmp_path, files[16385], ["-groups", "P-256"], [])
    assert summary["version"] == "TLSv1.3" and sha(out) == sha(files[16385])


def test_parse_hostport() -> None:
    import click

    from tlsctl.commands._options import parse_hostport

    assert parse_hostport("example.com:443") == ("example.com", 443)
    assert parse_hostport("[::1]:8443") == ("::1", 8443)
    assert parse_hostport("4433", default_host="0.0.0.0") == ("0.0.0.0", 4433)
    assert parse_hostport("localhost:https") == ("localhost", 443)  # a service name
    for bad in ("example.com", "host:nosuchservice", "host:70000", "[::1]8443", "::1:8443"):
        with pytest.raises(click.BadParameter):
            parse_hostport(bad)


@pytest.mark.parametrize("args", [["--size", "100000"], ["-tls1_2", "--offload", "none"]])
def test_send_loopback(files: dict[int, Path], args: list[str]) -> None:
    """The no-preparation main job: a built-in server, verification on."""
    r = run_tlsctl(
        "send", "--loopback", "--json", *args, *([] if "--size" in args else [str(files[16385])])
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["match"] is True and summary["sha256"] == summary["server_sha256"]


# --- GnuTLS (an independent TLS implementation), both ways ------------------------

GNUTLS_PRIOS = [
    f"NORMAL:-VERS-ALL:+VERS-TLS{v}:-CIPHER-ALL:+{c}"
    for v in ("1.3", "1.2")
    for c in ("AES-128-GCM", "AES-256-GCM", "CHACHA20-POLY1305")
]
needs_gnutls = pytest.mark.skipif(
    shutil.which("gnutls-cli") is None, reason="gnutls-bin not installed (apt install gnutls-bin)"
)


def gnutls_cli(port: int, data: Path, prio: str, ca: Path) -> subprocess.CompletedProcess[bytes]:
    """gnutls-cli sends ``data`` from stdin, prints what comes back, says bye at EOF."""
    cmd = [
        "gnutls-cli",
        "-p",
        str(port),
        "localhost",
        "--x509cafile",
        str(ca),
        "--priority",
        prio,
        "--logfile=/dev/null",
    ]
    with (
        data.open("rb") as f,
        spawn(cmd, stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p,
    ):
        out, err = p.communicate(timeout=30)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@needs_gnutls
@pytest.mark.parametrize("prio", GNUTLS_PRIOS)
def test_gnutls_cli_to_serve_echo(pki: Pki, files: dict[int, Path], prio: str) -> None:
    """Our RX and TX against GnuTLS: the echo gnutls-cli prints equals the file."""
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "--echo", "-naccept", "1"
    ) as srv:
        r = gnutls_cli(srv.port, files[16385], prio, pki.ca)
        (rec,) = srv.records()
    assert r.returncode == 0, r.stderr
    assert r.stdout == files[16385].read_bytes()
    assert rec["ok"] and rec["clean_close"] and rec["bytes_in"] == 16385


@needs_gnutls
def test_gnutls_cli_to_serve_save_dir(pki: Pki, files: dict[int, Path], tmp_path: Path) -> None:
    with tlsctl_server(
        "-cert", str(pki.cert), "-key", str(pki.key), "--save-dir", str(tmp_path), "-naccept", "1"
    ) as srv:
        r = gnutls_cli(srv.port, files[1 << 20], GNUTLS_PRIOS[0], pki.ca)
        (rec,) = srv.records()
    assert r.returncode == 0, r.stderr
    assert rec["sha256"] == sha(Path(rec["file"])) == sha(files[1 << 20])


@needs_gnutls
@pytest.mark.parametrize("vflag", ["-tls1_3", "-tls1_2"])
def test_send_to_gnutls_serv(pki: Pki, files: dict[int, Path], vflag: str) -> None:
    """GnuTLS decrypts every record we send (a bad one would end in an alert)
    and answers our close_notify with its own."""
    port = free_port()
    cmd = [
        "gnutls-serv",
        "-p",
        str(port),
        "--x509certfile",
        str(pki.cert),
        "--x509keyfile",
        str(pki.key),
    ]
    with spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        wait_port(port, proc)
        r = run_tlsctl(
            "send",
            str(files[1 << 20]),
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(pki.ca),
            "--json",
            vflag,
        )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes"] == 1 << 20
