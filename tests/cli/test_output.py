"""The send summary as people read it: on a terminal of any width and piped."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from tests.helpers.peers import make_pki, openssl_server
from tlsctl.cli import cli
from tlsctl.commands._inspect_render import render_rich
from tlsctl.commands._output import emit_summary

TLSCTL = Path(sys.executable).with_name("tlsctl")
SHA = "3a07a00d5f139b58f7d82c057e047796232bbd254c078c3be1ab527c5f6beb33"
FIELDS = {
    "ok": True,
    "sha256": SHA,
    "device_counters": {"tx_tls_encrypted_packets": 18, "tx_tls_ooo": 3},
    "fallback_device_counters": {},
}


def _render(width: int) -> list[str]:
    buf = io.StringIO()
    emit_summary("tlsctl send", FIELDS, console=Console(file=buf, width=width))
    return buf.getvalue().splitlines()


def test_wide_terminal_table_keeps_the_hash_whole_and_counters_as_rows() -> None:
    lines = _render(120)
    assert sum(SHA in line for line in lines) == 1
    assert not any("{" in line or "'" in line for line in lines)  # no Python dict repr
    row = next(line for line in lines if "tx_tls_ooo" in line)
    assert row.split("│")[2].split() == ["tx_tls_ooo", "3"]


@pytest.mark.parametrize("width", [60, 80])
def test_narrow_terminal_gets_plain_lines(width: int, capsys: pytest.CaptureFixture[str]) -> None:
    """At 60 columns a table would fold the SHA-256 over three lines inside
    its cell; plain lines keep it whole on one logical line."""
    assert _render(width) == []  # nothing drawn by rich
    out = capsys.readouterr().out.splitlines()
    assert f"sha256: {SHA}" in out
    assert out[out.index("device_counters:") + 1] == "     tx_tls_encrypted_packets: 18"
    assert "fallback_device_counters: (none)" in out


def test_piped_output_is_key_value_lines(capsys: pytest.CaptureFixture[str]) -> None:
    emit_summary("t", FIELDS)  # stdout is captured: not a terminal
    assert capsys.readouterr().out.splitlines() == [
        "ok: True",
        f"sha256: {SHA}",
        "device_counters:",
        "     tx_tls_encrypted_packets: 18",
        "     tx_tls_ooo: 3",
        "fallback_device_counters: (none)",
    ]


def _stderr_on_a_terminal(argv: list[str], stdin: bytes | None = None) -> tuple[int, bytes, str]:
    """Run ``argv`` with stderr on a pseudo-terminal and stdout on a pipe;
    returns the exit status, stdout and everything the terminal showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = bytearray()

    def pump() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=pump)
    reader.start()
    out, _ = proc.communicate(stdin, timeout=300)
    reader.join(30)
    os.close(master)
    return proc.returncode, out, seen.decode(errors="replace")


def test_progress_bar_on_a_terminal_stderr_while_stdout_is_piped() -> None:
    """As curl: the bar goes to stderr when that is a terminal, even though
    stdout (the summary) is piped; it shows a percentage and binary units."""
    code, out, tty = _stderr_on_a_terminal([str(TLSCTL), "send", "--loopback", "--size", "48M"])
    assert code == 0, tty
    assert b"match: True" in out
    assert re.search(r"\d+%", tty), tty[-500:]
    assert "MiB" in tty and "/48.0 MiB" in tty, tty[-500:]


def test_stdin_send_counts_bytes_on_a_terminal(tmp_path: Path) -> None:
    """``producer | tlsctl send -``: no size to show a percentage of, so the
    terminal shows a byte counter (binary units) while the stream goes out."""
    pki = make_pki(tmp_path)
    data = os.urandom(12 << 20)
    with (tmp_path / "got").open("wb") as got, openssl_server(pki.cert, pki.key, got) as (p, port):
        code, _, tty = _stderr_on_a_terminal(
            [str(TLSCTL), "send", "-", "-connect", f"localhost:{port}", "-CAfile", str(pki.ca)],
            stdin=data,
        )
        p.wait(30)
    assert code == 0, tty
    assert (tmp_path / "got").read_bytes() == data
    assert re.search(r"\d+\.\d MiB sent", tty), tty[-500:]


@pytest.mark.parametrize("command", ["send", "serve", "bench", "inspect-context"])
def test_help_shows_examples_before_options(command: str) -> None:
    res = CliRunner().invoke(cli, [command, "--help"])
    assert res.exit_code == 0
    assert 0 < res.output.index("Examples:") < res.output.index("Options:")


def test_watch_footer_names_its_process() -> None:
    """With two processes on screen each table's footer says whose it is (a
    bare "started ..." under the first read as the second one's header)."""
    doc = {
        "processes": [
            {
                "pid": pid,
                "argv": ["tlsctl", "send"],
                "started": f"2026-12-02T00:0{pid % 10}:00Z",
                "connections": [{"id": 1, "label": "x", "stats": {"TlsTxSw": 1}}],
            }
            for pid in (4101, 4102)
        ]
    }
    buf = io.StringIO()
    Console(file=buf, width=100).print(render_rich(doc, False, 100))
    feet = [line for line in buf.getvalue().splitlines() if "started" in line]
    assert [f.split(":")[0].strip() for f in feet] == ["pid 4101", "pid 4102"]
    assert "counters of pid 4101" in buf.getvalue()
