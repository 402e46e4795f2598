"""The loopback receiver's 16-byte report: how the sender knows every byte arrived.

When the sender has finished, the receiver child sends the plaintext byte
count it read and its own CPU time in microseconds, both 8 bytes
big-endian.  Over TLS the report is application data sent after the
sender's close_notify and before the receiver's own, so the sender also
sees a clean close.  A remote ``tlsctl serve --sink`` sends no report;
there the receiver's close_notify, sent only after it has read and
authenticated every record before ours, is the confirmation.
"""

from __future__ import annotations

from tlsctl.benchrun.errors import BenchError

REPORT_SIZE = 16


def make_report(total: int, cpu_seconds: float) -> bytes:
    """The receiver's side: ``total`` bytes read using ``cpu_seconds`` of CPU."""
    return total.to_bytes(8, "big") + int(cpu_seconds * 1e6).to_bytes(8, "big")


def read_report(data: bytes, mode: str, sent: int) -> tuple[int, float]:
    """The sender's side: (bytes the receiver got, its CPU seconds).

    :class:`BenchError` unless it is a whole report and the count is ``sent``.
    """
    if len(data) != REPORT_SIZE:
        raise BenchError(f"{mode}: receiver sent a {len(data)}-byte report, expected 16")
    got = int.from_bytes(data[:8], "big")
    if got != sent:
        raise BenchError(f"{mode}: receiver got {got} of {sent} bytes")
    return got, int.from_bytes(data[8:], "big") / 1e6
