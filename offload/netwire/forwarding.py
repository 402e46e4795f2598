"""The NIC process's forwarding loop: frames from one TUN to the other.

One loop for both directions (``offload.netwire.nic`` runs one thread per
direction).  What differs is where the wire's seeded faults sit
(``offload.netwire.faults``): away from the host they act *after* the NIC
(a frame it encrypted and the wire then lost comes back as the sender's
retransmission, out of order: TX resync); towards the host they act
*before* it (``faults_first``: the peer's retransmissions meet the RX
engine, and the NIC works on each copy the wire delivers).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from offload.netwire.faults import FaultStage
from offload.netwire.tun import MAX_FRAME


def forward(
    src: int,
    dst: int,
    process: Callable[[memoryview], bool],
    stage: FaultStage | None = None,
    *,
    faults_first: bool = False,
) -> None:
    """Move frames from ``src`` to ``dst`` until either goes away.

    ``process`` is the NIC (True: send the frame on, possibly rewritten in
    place); with a fault stage, the faults act after it, or before it with
    ``faults_first``, where each delivered copy is the wire's own bytearray
    (a duplicate never shares the bytes the NIC rewrote)."""
    buf = bytearray(MAX_FRAME)
    mv = memoryview(buf)
    iov = [buf]
    readv = os.readv
    oswrite = os.write

    def write(frame: memoryview | bytes) -> None:
        try:  # noqa: SIM105 - per frame: no context manager in the hot loop
            oswrite(dst, frame)
        except OSError:
            pass  # the receiving namespace may be down for a moment; a NIC drops too

    def through_nic(frame: memoryview | bytes) -> None:
        view = memoryview(bytearray(frame))
        if process(view):
            write(view)

    if stage is None:
        while True:  # once per frame: the NIC works in the read buffer, the write inlined
            try:
                n = readv(src, iov)
            except OSError:
                return
            frame = mv[:n]
            if process(frame):
                try:  # noqa: SIM105
                    oswrite(dst, frame)
                except OSError:
                    pass
    poller = select.poll()
    poller.register(src, select.POLLIN)
    clock = time.monotonic
    wait: float | None = None
    deliver = through_nic if faults_first else write
    while True:
        ready = poller.poll(None if wait is None else max(0, int(wait * 1000) + 1))
        if ready:
            try:
                n = readv(src, iov)
            except OSError:
                return
            frame = mv[:n]
            if faults_first or process(frame):
                stage.send(frame, deliver, clock())
        wait = stage.release(deliver, clock())


__all__ = ["forward"]
