"""The send summary as people read it: on a terminal of any width and piped."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tlsctl.commands._output import emit_summary

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
