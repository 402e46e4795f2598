"""Errors that say why (issue 15, item 1): which check failed, on which
certificate or file, naming the option; refused at start-up, before any
connection; one line on stderr, the exit status of ``tlsctl.exitcodes``, no
traceback.

Verification is shown against ``openssl s_server`` serving crafted
certificates (made by ``tlsctl.certs``), with ``tlsctl send``/``bench`` as
real processes; fingerprints are checked against ``openssl x509
-fingerprint -sha256`` (an independent computation).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes

from offload.kernel import kernel_has_ktls
from tests.helpers.peers import (
    TLSCTL,
    kill_group,
    openssl_client,
    openssl_server,
    run_tlsctl,
    sha,
    tlsctl_server,
)
from tlsctl.certs import CertKey, make_cert, sha256_fingerprint
from tlsctl.cli import cli
from tlsctl.exitcodes import ExitStatus
from tlsctl.verify import parse_pin

CA_NAME = "tlsctl errors CA"


class Certs:
    """A CA, leaves it issued (DNS only, expired), a self-signed leaf, and an
    unrelated CA, all as files in ``d``."""

    def __init__(self, d: Path) -> None:
        self.d = d
        self.ca = make_cert([CA_NAME], is_ca=True)
        self.other_ca = make_cert(["some other CA"], is_ca=True)
        self.dns = make_cert(["localhost"], issuer=self.ca)
        self.self_signed = make_cert(["localhost"])
        self.expired = make_cert(
            ["localhost"], issuer=self.ca, days=1, backdate=datetime.timedelta(days=3)
        )
        for name in ("ca", "other_ca", "dns", "self_signed", "expired"):
            self.write(name, getattr(self, name))

    def write(self, name: str, ck: CertKey) -> None:
        (self.d / f"{name}.crt").write_bytes(ck.cert_pem())
        (self.d / f"{name}.key").write_bytes(ck.key_pem())

    def cert(self, name: str) -> Path:
        return self.d / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.d / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("errcerts"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("errdata") / "f.bin"
    p.write_bytes(os.urandom(100_000))
    return p


def only_line(r: subprocess.CompletedProcess[str]) -> str:
    """stderr is exactly one line (no traceback, nothing else): return it."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def openssl_fingerprint(cert: Path) -> str:
    """``openssl x509 -fingerprint -sha256``'s hex, colon-separated."""
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.strip().partition("=")[2]


# -- certificate verification ----------------------------------------------------


def _verify_cases(c: Certs) -> list[tuple[str, str, list[str], str]]:
    """(served cert name, -connect host, extra send args, expected line)."""
    fp = sha256_fingerprint(c.self_signed.cert)
    until = c.expired.cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    ca = c.cert("ca")
    return [
        (
            "self_signed",
            "localhost",
            [],
            f"Error: certificate verify failed: self-signed certificate CN=localhost (SHA-256 "
            f"{fp}) is not trusted by the system trust store: trust it with -CAfile, pin it "
            "with --pin-sha256, or skip the check with -k (verify error:num=18:self-signed "
            "certificate)",
        ),
        (
            "dns",
            "localhost",
            [],
            f"Error: certificate verify failed: unknown CA: the issuer CN={CA_NAME} of depth 0 "
            "CN=localhost is not in the system trust store (verify error:num=20:unable to get "
            "local issuer certificate)",
        ),
        (
            "dns",
            "localhost",
            ["-CAfile", str(c.cert("other_ca"))],
            f"Error: certificate verify failed: unknown CA: the issuer CN={CA_NAME} of depth 0 "
            f"CN=localhost is not in -CAfile {c.cert('other_ca')} (verify error:num=20:unable "
            "to get local issuer certificate)",
        ),
        (
            "dns",
            "localhost",
            ["-CAfile", str(ca), "-servername", "other.example"],
            "Error: certificate verify failed: no alternative certificate subject name matches "
            "target host name 'other.example' (depth 0 CN=localhost is for DNS:localhost; "
            "verify error:num=62:hostname mismatch)",
        ),
        (
            "dns",
            "127.0.0.1",
            ["-CAfile", str(ca)],
            "Error: certificate verify failed: no alternative certificate subject name matches "
            "target host name '127.0.0.1' (depth 0 CN=localhost is for DNS:localhost: an IP "
            "address needs an IP SAN; connect by a name it has or give -servername NAME; "
            "verify error:num=64:IP address mismatch)",
        ),
        (
            "expired",
            "localhost",
            ["-CAfile", str(ca)],
            f"Error: certificate verify failed: certificate expired: depth 0 CN=localhost was "
            f"valid until {until} (verify error:num=10:certificate has expired)",
        ),
    ]


@pytest.mark.parametrize(
    "case",
    range(6),
    ids=[
        "self-signed",
        "unknown-ca-system",
        "unknown-ca-cafile",
        "servername",
        "ip-vs-dns",
        "expired",
    ],
)
def test_verify_failure_says_which_check(
    certs: Certs, data: Path, tmp_path: Path, case: int
) -> None:
    """Each failed check has its own line (was: "TLS handshake failed:
    certificate verify failed" for all); exit 1; nothing reached the server."""
    served, host, args, expected = _verify_cases(certs)[case]
    with (
        (tmp_path / "got").open("wb") as got,
        openssl_server(certs.cert(served), certs.key(served), got) as (_p, port),
    ):
        r = run_tlsctl("send", str(data), "-connect", f"{host}:{port}", *args)
    assert r.returncode == ExitStatus.FAILED
    assert only_line(r) == expected
    assert (tmp_path / "got").read_bytes() == b""


def test_verified_with_the_right_ca_still_works(certs: Certs, data: Path, tmp_path: Path) -> None:
    """The verify callback does not change a good verdict."""
    with (
        (tmp_path / "got").open("wb") as got,
        openssl_server(certs.cert("dns"), certs.key("dns"), got) as (proc, port),
    ):
        r = run_tlsctl(
            "send",
            str(data),
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(certs.cert("ca")),
            "--json",
        )
        assert r.returncode == 0, r.stderr
        proc.wait(10)
    assert sha(tmp_path / "got") == sha(data)


# -- fingerprints and --pin-sha256 ---------------------------------------------------


def test_send_k_v_shows_the_fingerprint_openssl_computes(
    certs: Certs, data: Path, tmp_path: Path
) -> None:
    with (
        (tmp_path / "got").open("wb") as got,
        openssl_server(certs.cert("self_signed"), certs.key("self_signed"), got) as (_proc, port),
    ):
        r = run_tlsctl("send", str(data), "-connect", f"localhost:{port}", "-k", "-v")
        assert r.returncode == 0, r.stderr
    fp = openssl_fingerprint(certs.cert("self_signed"))
    assert (
        "server certificate: CN=localhost (issuer CN=localhost), NOT verified (-k), "
        f"SHA-256 fingerprint {fp}"
    ) in r.stderr.splitlines()


@pytest.mark.parametrize("spelling", ["openssl", "colons", "bare-lower"])
def test_pin_accepts_the_pasted_fingerprint(
    certs: Certs, data: Path, tmp_path: Path, spelling: str
) -> None:
    """``openssl x509 -fingerprint`` output pasted whole, as ``serve`` prints
    it, or 64 lower-case hex digits: the self-signed server is accepted
    without -k, and every byte arrives."""
    fp = openssl_fingerprint(certs.cert("self_signed"))
    pin = {
        "openssl": f"sha256 Fingerprint={fp}",
        "colons": fp,
        "bare-lower": fp.replace(":", "").lower(),
    }[spelling]
    with (
        (tmp_path / "got").open("wb") as got,
        openssl_server(certs.cert("self_signed"), certs.key("self_signed"), got) as (proc, port),
    ):
        r = run_tlsctl(
            "send", str(data), "-connect", f"localhost:{port}", "--pin-sha256", pin, "-v"
        )
        assert r.returncode == 0, r.stderr
        proc.wait(10)
    assert sha(tmp_path / "got") == sha(data)
    assert f"pinned (--pin-sha256), SHA-256 fingerprint {fp}" in r.stderr


def test_pin_mismatch_names_both(certs: Certs, data: Path, tmp_path: Path) -> None:
    """A pin that does not match fails the handshake (even with a trusted CA
    and the right name): one line with both fingerprints, exit 1."""
    wrong = sha256_fingerprint(certs.self_signed.cert)
    seen = openssl_fingerprint(certs.cert("dns"))
    with (
        (tmp_path / "got").open("wb") as got,
        openssl_server(certs.cert("dns"), certs.key("dns"), got) as (_p, port),
    ):
        r = run_tlsctl(
            "send",
            str(data),
            "-connect",
            f"localhost:{port}",
            "-CAfile",
            str(certs.cert("ca")),
            "--pin-sha256",
            wrong.lower(),
        )
    assert r.returncode == ExitStatus.FAILED
    assert only_line(r) == (
        f"Error: --pin-sha256: the server's certificate has SHA-256 {seen}, not the pinned {wrong}"
    )
    assert (tmp_path / "got").read_bytes() == b""


def test_pin_from_serve_start_up(data: Path) -> None:
    """What ``serve`` prints at start-up pastes into --pin-sha256 (its own
    ephemeral certificate, no -k, no -CAfile)."""
    with tlsctl_server("-naccept", "1") as srv:
        fp = srv.listening["fingerprint"]
        r = run_tlsctl(
            "send", str(data), "-connect", f"localhost:{srv.port}", "--pin-sha256", fp, "-q"
        )
        recs = srv.records()
    assert r.returncode == 0, r.stderr
    assert recs[0]["ok"] and recs[0]["bytes_in"] == data.stat().st_size


def test_serve_prints_the_cert_fingerprint(certs: Certs, tmp_path: Path) -> None:
    """With -cert too (not only the ephemeral certificate): the text line,
    in the format openssl prints and --pin-sha256 takes."""
    fp = openssl_fingerprint(certs.cert("dns"))
    proc = subprocess.Popen(
        [
            *TLSCTL,
            "serve",
            "-accept",
            "127.0.0.1:0",
            "-cert",
            str(certs.cert("dns")),
            "-key",
            str(certs.key("dns")),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline(), proc.stderr.readline()]
    finally:
        kill_group(proc)
    assert lines[1].rstrip("\n") == (
        f"certificate, SHA-256 fingerprint {fp} (for send --pin-sha256)"
    )
    assert parse_pin(fp) == certs.dns.cert.fingerprint(hashes.SHA256())


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("abc", "'abc': a SHA-256 fingerprint has 64 hex digits, this has 3"),
        ("zz" * 32, f"'{'zz' * 32}' is not a SHA-256 fingerprint (64 hex digits, colons optional)"),
    ],
)
def test_pin_bad_value_is_a_usage_error(value: str, why: str) -> None:
    r = CliRunner().invoke(cli, ["send", "x", "-connect", "localhost:1", "--pin-sha256", value])
    assert r.exit_code == ExitStatus.USAGE
    assert f"Error: Invalid value for '--pin-sha256': {why}" in r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_pin_with_k_is_refused() -> None:
    r = CliRunner().invoke(
        cli, ["send", "x", "-connect", "localhost:1", "-k", "--pin-sha256", "00" * 32]
    )
    assert r.exit_code == ExitStatus.USAGE
    assert "Error: --pin-sha256 goes with -connect and verification (not with -k)" in r.stderr


# -- loading certificates and keys ---------------------------------------------------


def _serve_error(*args: str) -> tuple[int, str]:
    """``serve ARGS`` through click's runner: exit status and stderr (one line)."""
    r = CliRunner().invoke(cli, ["serve", "-accept", "127.0.0.1:0", *args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    return r.exit_code, lines[0]


def test_loading_errors_each_have_their_reason(certs: Certs, tmp_path: Path) -> None:
    """Was: "cannot load certificate/private key 'PATH'" for all of them
    (and for a key that loads fine but belongs to another certificate)."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    enc = tmp_path / "enc.key"
    subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(certs.key("dns")),
            "-aes256",
            "-passout",
            "pass:secret",
            "-out",
            str(enc),
        ],
        check=True,
        capture_output=True,
    )
    rsa = make_cert(["localhost"], key_type="rsa")
    certs.write("rsa", rsa)
    missing = tmp_path / "missing.pem"
    dns, dkey = str(certs.cert("dns")), str(certs.key("dns"))
    cases = [
        (["-cert", str(missing)], f"-cert {missing}: no such file"),
        (["-cert", dns, "-key", str(missing)], f"-key {missing}: no such file"),
        (
            ["-cert", dns, "-key", str(certs.key("self_signed"))],
            f"-key {certs.key('self_signed')} does not match -cert {dns} "
            "(a different EC secp256r1 key)",
        ),
        (
            ["-cert", dns, "-key", str(certs.key("rsa"))],
            f"-key {certs.key('rsa')} does not match -cert {dns} (the key is RSA 2048, the "
            "certificate's is EC secp256r1)",
        ),
        (
            ["-cert", str(garbage), "-key", dkey],
            f"-cert {garbage}: no PEM certificate in it (no -----BEGIN CERTIFICATE----- block)",
        ),
        (
            ["-cert", dns, "-key", str(garbage)],
            f"-key {garbage}: no private key in it (no -----BEGIN PRIVATE KEY----- block)",
        ),
        (
            ["-cert", dkey, "-key", dns],
            f"-cert {dkey}: no PEM certificate in it (it holds a private key: -cert and -key "
            "swapped?)",
        ),
        (
            ["-cert", dns],
            f"-cert {dns}: no private key in it (and no -key given: give the key file with -key)",
        ),
        (
            ["-cert", dns, "-key", str(enc)],
            f"-key {enc}: the private key is encrypted and tlsctl takes no pass phrase "
            f"(decrypt it: openssl pkey -in {enc} -out plain.key)",
        ),
        (["-verify", "1", "-CAfile", str(missing)], f"-CAfile {missing}: no such file"),
        (
            ["-verify", "1", "-CAfile", str(garbage)],
            f"-CAfile {garbage}: no PEM certificate in it (no -----BEGIN CERTIFICATE----- block)",
        ),
    ]
    for args, line in cases:
        assert _serve_error(*args) == (ExitStatus.FAILED, f"Error: {line}"), args


def test_send_loading_errors(certs: Certs, data: Path, tmp_path: Path) -> None:
    """The client side names the same options (-CAfile, -cert/-key) before
    connecting (port 1: nothing listens, so a connection error would show)."""
    missing = tmp_path / "none.pem"
    for args, line in [
        (["-CAfile", str(missing)], f"-CAfile {missing}: no such file"),
        (
            ["-cert", str(certs.cert("dns")), "-key", str(certs.key("self_signed"))],
            f"-key {certs.key('self_signed')} does not match -cert {certs.cert('dns')} "
            "(a different EC secp256r1 key)",
        ),
    ]:
        r = CliRunner().invoke(cli, ["send", str(data), "-connect", "127.0.0.1:1", *args])
        assert r.exit_code == ExitStatus.FAILED
        assert r.stderr.splitlines() == [f"Error: {line}"]


# -- start-up checks -----------------------------------------------------------------


def test_serve_start_up_checks_name_the_option(tmp_path: Path) -> None:
    """Refused before listening; was: "-WWW DIR: not a directory" for a
    missing one, and a --save-dir that root's access(2) calls writable
    (/proc/sys) was accepted, every connection then failing."""
    (tmp_path / "file").write_text("x")
    for args, line in [
        (["-WWW", str(tmp_path / "nope")], f"-WWW {tmp_path / 'nope'}: no such directory"),
        (
            ["-WWW", str(tmp_path / "file")],
            f"-WWW {tmp_path / 'file'}: not a directory (give the directory to serve)",
        ),
        (
            ["--save-dir", str(tmp_path / "nope")],
            f"--save-dir {tmp_path / 'nope'}: no such directory",
        ),
        (
            ["--save-dir", "/proc/sys"],
            "--save-dir /proc/sys: cannot write in /proc/sys: Permission denied",
        ),
        (
            ["-o", str(tmp_path)],
            f"-o {tmp_path}: is a directory (use --save-dir {tmp_path} "
            "to store one file per connection)",
        ),
        (
            ["-o", str(tmp_path / "nope" / "f")],
            f"-o {tmp_path / 'nope' / 'f'}: no such directory {tmp_path / 'nope'}",
        ),
    ]:
        assert _serve_error(*args) == (ExitStatus.FAILED, f"Error: {line}"), args
    assert list(tmp_path.iterdir()) == [tmp_path / "file"]  # the probe left nothing


@pytest.mark.parametrize("command", ["send", "serve"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_timeout_must_be_positive(command: str, value: str) -> None:
    """Was a traceback (ValueError: Timeout value out of range) for -1."""
    args = ["send", "x", "-connect", "localhost:1"] if command == "send" else ["serve"]
    r = CliRunner().invoke(cli, [*args, "--timeout", value])
    assert r.exit_code == ExitStatus.USAGE
    assert r.stderr.splitlines()[-1] == (
        f"Error: Invalid value for '--timeout': {float(value)} is not in the range x>0."
    )


@pytest.mark.parametrize("command", ["send", "serve"])
def test_offload_kernel_needs_ktls_at_start_up(command: str, data: Path) -> None:
    """``--offload kernel`` where TCP_ULP "tls" does not attach: refused at
    start-up (was: serve started and waited for clients, send failed after
    the handshake).  Where the kernel has kTLS the check passes (send then
    fails to connect: nothing listens on port 1).  A real process with a
    deadline: a serve that starts anyway fails the test by TimeoutExpired."""
    has, why = kernel_has_ktls()
    args = (
        ["send", str(data), "-connect", "127.0.0.1:1"]
        if command == "send"
        else ["serve", "-accept", "127.0.0.1:0", "-naccept", "1"]
    )
    if has:
        if command == "send":
            r = run_tlsctl(*args, "--offload", "kernel", timeout=30)
            assert only_line(r) == "Error: cannot connect to 127.0.0.1:1: Connection refused"
        return
    r = run_tlsctl(*args, "--offload", "kernel", timeout=30)
    assert r.returncode == ExitStatus.FAILED
    assert only_line(r) == (
        f"Error: --offload kernel: no kTLS on this host: {why}; use --offload sw or auto"
    )


def test_service_name_ports(data: Path) -> None:
    """``-connect HOST:SERVICE`` as OpenSSL takes it, in send and bench
    (tcpmux is port 1, where nothing listens)."""
    r = CliRunner().invoke(cli, ["send", str(data), "-connect", "127.0.0.1:tcpmux"])
    assert r.exit_code == ExitStatus.FAILED
    assert r.stderr.splitlines() == ["Error: cannot connect to 127.0.0.1:1: Connection refused"]
    r = CliRunner().invoke(
        cli,
        [
            "bench",
            "-connect",
            "127.0.0.1:tcpmux",
            "-k",
            "--size",
            "1K",
            "--repeat",
            "1",
            "--modes",
            "sw",
        ],
    )
    assert r.exit_code == ExitStatus.FAILED
    assert r.stderr.splitlines()[-1] == "Error: cannot connect to 127.0.0.1:1: Connection refused"


def test_size_options_take_suffixes() -> None:
    """--record-size 16K and --mss 64K are sizes like --size; a too-large one
    names its option."""
    r = CliRunner().invoke(cli, ["bench", "--record-size", "32K"])
    assert r.exit_code == ExitStatus.USAGE
    assert "Error: Invalid value for '--record-size': '32K': at most 16384 bytes" in r.stderr
    r = CliRunner().invoke(
        cli, ["send", "--loopback", "--size", "1K", "--offload", "sim-nic", "--mss", "2K", "--json"]
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


# -- bench -----------------------------------------------------------------------------


def test_bench_record_size_skips_modes_that_cannot(tmp_path: Path) -> None:
    """--record-size 1: sw and sim-nic would split an alert (the receiver
    answered unexpected_message and the whole bench failed), openssl
    s_server refuses < 512 (the whole bench aborted): those modes are
    skipped with the reason, the rest run."""
    r = run_tlsctl(
        "bench",
        "--size",
        "4K",
        "--repeat",
        "1",
        "--record-size",
        "1",
        "--modes",
        "tcp,userspace,sw,sim-nic,openssl",
        "--json",
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    rows = {row["mode"]: row for row in json.loads(r.stdout)}
    alert = (
        "--record-size 1 is below the 2 it needs: an alert's 2 bytes must fit in one "
        "record (RFC 8446 5.1)"
    )
    assert rows["sw"]["skipped"] == alert and rows["sim-nic"]["skipped"] == alert
    assert rows["openssl"]["skipped"] == (
        "--record-size 1 is below the 512 it needs: s_server -max_send_frag takes 512..16384"
    )
    for mode in ("tcp", "userspace"):
        assert rows[mode]["skipped"] is None and rows[mode]["bytes"] == 4096


def test_bench_connect_to_an_echo_server_fails_at_once() -> None:
    """Was: a 68 s stall, then "a sender process did not finish in time".
    A sink never answers; the first answer ends the run, naming the server."""
    with tlsctl_server("--echo") as srv:
        for mode in ("sw", "userspace"):
            t0 = time.monotonic()
            # A deadline below the old stall (60 s + 32M at 2 MB/s before the
            # runner gave up): the stall fails this test by TimeoutExpired.
            r = run_tlsctl(
                "bench",
                "-connect",
                f"localhost:{srv.port}",
                "-k",
                "--size",
                "32M",
                "--repeat",
                "1",
                "--modes",
                mode,
                timeout=50,
            )
            took = time.monotonic() - t0
            line = only_line(r)
            assert r.returncode == ExitStatus.FAILED
            prefix = f"Error: {mode}: the server at localhost:{srv.port} sent "
            assert line.startswith(prefix), line
            assert line.endswith(
                " bytes back: -connect needs a sink ('tlsctl serve "
                "--sink'), not a server that answers (--echo, -WWW, "
                "s_server)"
            ), line
            assert int(line[len(prefix) :].split()[0]) > 0
            print(f"bench -connect echo ({mode}): failed after {took:.1f} s")


def test_bench_connect_unverified_is_one_line() -> None:
    """Without -k against a self-signed server: the verification line, not
    "[('SSL routines', '', 'certificate verify failed')]"."""
    with tlsctl_server("--sink") as srv:
        fp = srv.listening["fingerprint"]
        r = run_tlsctl(
            "bench",
            "-connect",
            f"localhost:{srv.port}",
            "--size",
            "1M",
            "--repeat",
            "1",
            "--modes",
            "userspace",
            timeout=120,
        )
    assert r.returncode == ExitStatus.FAILED
    assert only_line(r) == (
        "Error: userspace: certificate verify failed: self-signed certificate CN=localhost "
        f"(SHA-256 {fp}) is not trusted by the system trust store: trust it with -CAfile, "
        "pin it with --pin-sha256, or skip the check with -k (verify error:num=18:"
        "self-signed certificate)"
    )


def test_serve_says_why_a_client_certificate_failed(certs: Certs, data: Path) -> None:
    """``serve -Verify``: the connection's log record says which check failed
    on the client's certificate (openssl s_client presenting one issued by
    another CA), naming -CAfile; no client-side hints (-k, --pin-sha256)."""
    client = make_cert(["client.example"], issuer=certs.other_ca)
    certs.write("client", client)
    ca = certs.cert("ca")
    with tlsctl_server("-Verify", "1", "-CAfile", str(ca), "-naccept", "1") as srv:
        openssl_client(
            srv.port, data, "-cert", str(certs.cert("client")), "-key", str(certs.key("client"))
        )
        recs = srv.records()
    assert not recs[0]["ok"]
    assert recs[0]["error"] == (
        "certificate verify failed: unknown CA: the issuer CN=some other CA of depth 0 "
        f"CN=client.example is not in -CAfile {ca} (verify error:num=20:unable to get "
        "local issuer certificate)"
    )
