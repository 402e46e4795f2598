"""Sizes as people type them: ``65536``, ``64K``, ``1M``, ``2G``, ``1.5G``.

One parser for every size option (``send --size``, ``bench --size``,
``--key-update-every``, ``--record-size`` ...), so they all accept the same
spellings.  Multiples are binary (K = 1024), as ``dd``, ``iperf3 -n`` and
``curl --limit-rate`` take them; ``KiB``/``KB``/``k`` spellings are accepted
too.  Errors are ``ValueError`` with a one-line message; the CLI turns them
into usage errors naming the option.
"""

from __future__ import annotations

_MULTIPLES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int, *, minimum: int = 0) -> int:
    """Bytes in ``text``; at least ``minimum`` (ValueError otherwise)."""
    if isinstance(text, int):
        value = text
    else:
        t = text.strip().upper().removesuffix("B").removesuffix("I")
        unit = t[-1:] if t[-1:] in _MULTIPLES else ""
        number = t[: len(t) - len(unit)].strip()
        try:
            exact = int(number)
        except ValueError:
            try:
                scaled = float(number) * _MULTIPLES[unit]
            except ValueError:
                raise ValueError(f"{text!r} is not a size (e.g. 65536, 64K, 1M, 2G)") from None
            if scaled != scaled or scaled in (float("inf"), float("-inf")):
                raise ValueError(f"{text!r} is not a size (e.g. 65536, 64K, 1M, 2G)") from None
            value = int(scaled)
        else:
            value = exact * _MULTIPLES[unit]
    if value < minimum:
        raise ValueError(f"{text!r}: must be at least {minimum} byte{'s' if minimum != 1 else ''}")
    return value


def human_rate(nbytes: int, seconds: float) -> str:
    """``12.3 MB/s`` (decimal units, as throughput is usually quoted); n/a for 0 s."""
    if seconds <= 0:
        return "n/a"
    rate = nbytes / seconds
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if rate < 1000 or unit == "GB/s":
            return f"{rate:.1f} {unit}"
        rate /= 1000
    return f"{rate:.1f} GB/s"  # pragma: no cover


def human_size(nbytes: int, small: str = "bytes") -> str:
    """``2.0 GiB``: binary units, as ``ls -h`` and file sizes are read;
    below 1 KiB the count and ``small`` (``"B"`` where space is short)."""
    size = float(nbytes)
    for unit in ("", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{nbytes} {small}" if not unit else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def human_bits(bits_per_second: float) -> str:
    """``8.4 Gbit/s``: decimal, as link speeds and iperf3 quote them."""
    rate = bits_per_second
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if rate < 1000 or unit == "Gbit/s":
            return f"{rate:.1f} {unit}"
        rate /= 1000
    return f"{rate:.1f} Gbit/s"  # pragma: no cover


RATE_FORMATS = "kmgtKMGT"
"""``bench --format`` letters, as iperf3's ``-f``: lower case bits per second
(decimal: k = 1000 bit/s), upper case bytes per second (binary, as iperf3's
KBytes are: K = 1024 B/s)."""
_BIT_UNITS = {
    "k": ("kbit/s", 1e3),
    "m": ("Mbit/s", 1e6),
    "g": ("Gbit/s", 1e9),
    "t": ("Tbit/s", 1e12),
}
_BYTE_UNITS = {"K": ("KiB/s", 1 << 10), "M": ("MiB/s", 1 << 20), "G": ("GiB/s", 1 << 30)}
_BYTE_UNITS["T"] = ("TiB/s", 1 << 40)


def rate_unit(fmt: str | None, bytes_per_second: float = 0.0) -> tuple[str, float]:
    """(label, bytes per second in one unit) for ``--format`` ``fmt``; None:
    bits per second in the unit that suits ``bytes_per_second`` (iperf3's
    default, adaptive bits).  ValueError for a letter iperf3 does not know."""
    if fmt is None:
        bits = bytes_per_second * 8
        fmt = "t" if bits >= 1e12 else "g" if bits >= 1e9 else "m" if bits >= 1e6 else "k"
    if fmt in _BIT_UNITS:
        label, per = _BIT_UNITS[fmt]
        return label, per / 8
    if fmt in _BYTE_UNITS:
        label, nbytes = _BYTE_UNITS[fmt]
        return label, float(nbytes)
    raise ValueError(f"{fmt!r} is not a format: choose one of {', '.join(RATE_FORMATS)}")


def format_rate(bytes_per_second: float, fmt: str | None = None) -> str:
    """``9.42 Gbit/s`` (``fmt`` None), ``1.10 GiB/s`` (``fmt`` "G")."""
    label, per = rate_unit(fmt, bytes_per_second)
    return f"{bytes_per_second / per:.2f} {label}"
