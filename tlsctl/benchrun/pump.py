"""The loops that move the data file into a connection, bounded by size or time.

One pair of loops for every sender, forward or reverse (``-R``): a file
*range* sender (``sendfile``, the layer's ``send_file``) or a read-then-write
sender (``sendall``, ``SSL_write``).  Both send the file once, or with
``-t`` over and over until the time is up (looked at after each write of
:func:`~tlsctl.benchrun.job.step` bytes), and tell the interval clock what
each write moved.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BufferedReader
from typing import BinaryIO

from tlsctl.benchrun.intervals import IntervalClock
from tlsctl.benchrun.job import Job, more, step, time_up


def pump_ranges(
    job: Job,
    f: BinaryIO,
    t0: float,
    clock: IntervalClock,
    send_range: Callable[[BinaryIO, int, int], int],
    most: int | None = None,
) -> int:
    """``send_range(f, offset, count)`` (bytes sent; 0: the peer is gone)
    over the file in steps of at most ``most``; the bytes sent."""
    each = step(job) if most is None else min(most, step(job))
    sent = rounds = 0
    while more(job, t0, rounds):
        rounds += 1
        pos = 0
        while pos < job.size and not time_up(job, t0):
            n = send_range(f, pos, min(each, job.size - pos))
            if n == 0:
                break
            pos += n
            clock.add(n)
        sent += pos
    return sent


def pump_reads(
    job: Job,
    f: BufferedReader,
    t0: float,
    clock: IntervalClock,
    bufsize: int,
    write: Callable[[memoryview], object],
) -> int:
    """Read ``bufsize`` bytes of the file, ``write`` them, again; the bytes sent."""
    buf = bytearray(bufsize)
    view = memoryview(buf)
    sent = rounds = 0
    while more(job, t0, rounds):
        rounds += 1
        f.seek(0)
        while not time_up(job, t0) and (n := f.readinto(buf)):
            write(view[:n])
            sent += n
            clock.add(n)
    return sent
