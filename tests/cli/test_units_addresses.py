"""The one size parser and the one address parser every command uses."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from tlsctl.addresses import format_addr, is_ip, parse_hostport
from tlsctl.cli import cli
from tlsctl.units import human_bits, human_size, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("4096", 4096),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("64KiB", 64 << 10),
        ("64KB", 64 << 10),
        ("1M", 1 << 20),
        (" 2g ", 2 << 30),
        ("1.5G", 3 << 29),
        ("1T", 1 << 40),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "1Q", "K", "1.2.3M", "nan", "inf", "1e999G"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_minimum() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        parse_size("0", minimum=1)
    with pytest.raises(ValueError, match="at least 512 bytes"):
        parse_size("511", minimum=512)


@given(st.integers(min_value=0, max_value=1 << 40), st.sampled_from(["", "K", "M", "G"]))
def test_integer_sizes_are_exact(n: int, unit: str) -> None:
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
    assert parse_size(f"{n}{unit}") == n * mult


def test_every_size_option_takes_suffixes() -> None:
    """``send --size 16M`` was refused while ``bench --size`` took it."""
    r = CliRunner().invoke(cli, ["send", "--loopback", "--size", "16Q"])
    assert r.exit_code == 2 and "'16Q' is not a size" in r.output


def test_addresses() -> None:
    assert parse_hostport("localhost:https") == ("localhost", 443)
    assert parse_hostport("[::1]:4433") == ("::1", 4433)
    assert parse_hostport("4433", "::") == ("::", 4433)
    assert parse_hostport(":4433", "0.0.0.0") == ("0.0.0.0", 4433)
    for bad, why in (
        ("::1:4433", "brackets"),
        ("h:70000", "out of range"),
        ("h:nosuchservice", "service name"),
        ("h", "HOST:PORT"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_hostport(bad)
    assert is_ip("127.0.0.1") and is_ip("::1") and not is_ip("localhost")
    assert format_addr("::ffff:127.0.0.1", 5) == "127.0.0.1:5"
    assert format_addr("::1", 4433) == "[::1]:4433"
    assert format_addr("10.0.0.1", 1) == "10.0.0.1:1"


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0 bytes"),
        (1023, "1023 bytes"),
        (1024, "1.0 KiB"),
        (48 << 20, "48.0 MiB"),
        (2 << 30, "2.0 GiB"),
        (5 << 40, "5120.0 GiB"),
    ],
)
def test_human_size_is_binary(nbytes: int, text: str) -> None:
    """A 2 GiB file shows 2.0 GiB (not "2.1 GB") in the progress bar."""
    assert human_size(nbytes) == text


@pytest.mark.parametrize(
    ("bits", "text"),
    [(0.0, "0.0 bit/s"), (999.0, "999.0 bit/s"), (8e6, "8.0 Mbit/s"), (9.4e9, "9.4 Gbit/s")],
)
def test_human_bits_is_decimal(bits: float, text: str) -> None:
    assert human_bits(bits) == text
