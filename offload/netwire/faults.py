"""Seeded faults on real frames: what the wire does after the NIC.

``sch_netem`` is not in this kernel, so the NIC process itself loses,
duplicates, reorders and delays frames on their way out - in both
directions (a lost ACK is a fault too).  Away from the host the faults act
*after* the NIC: a frame the NIC encrypted and the wire then lost is
retransmitted by the sender's kernel, and that retransmission reaches the
NIC out of order and takes the resync path, exactly as on real hardware.
Towards the host they act *before* it (``offload.netwire.nic_rx.
forward_rx``): the wire loses, duplicates and reorders what the peer sent,
and the peer kernel's retransmissions then meet the NIC's RX engine.

The spec uses the in-process wire model's syntax (``offload.wiremodel.
FaultSpec``): ``drop=0.01,reorder=0.01,dup=0.005,delay=2,seed=N`` -
probabilities per frame, ``delay`` in milliseconds for every frame.  The
model's ``split`` and ``redirect`` mean nothing here (the kernel segments;
there is one device) and are refused with a clear message.

Reordering holds a frame back for a random 0.2-2 ms, so frames behind it
overtake it; decisions come from one ``random.Random`` per direction
seeded from ``seed``, so a run's fault *decisions* repeat, even though
which frame meets which decision depends on the kernel's timing.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from offload.faultspec import parse_faults

KINDS = ("drop", "dup", "reorder")
MODEL_ONLY = {"split": "the kernel segments on a real wire", "redirect": "there is one device"}


@dataclass(frozen=True)
class WireFaults:
    """Per-frame probabilities, a fixed delay and the seed."""

    drop: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    """Milliseconds every frame is held."""
    seed: int = 0

    @property
    def any(self) -> bool:
        return bool(self.drop or self.dup or self.reorder or self.delay)

    @classmethod
    def parse(cls, text: str) -> WireFaults:
        """``drop=0.01,dup=0.005,reorder=0.01,delay=1,seed=7``; ValueError
        with one line naming what is wrong."""
        refused = {
            name: f"fault {name!r} means nothing on a real wire ({why}); "
            "it exists with --wire model"
            for name, why in MODEL_ONLY.items()
        }
        values = parse_faults(
            text,
            KINDS,
            refused=refused,
            limits={"delay": (0.0, 1000.0, "a delay in milliseconds (0..1000)")},
        )
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = [f"{k}={getattr(self, k):g}" for k in (*KINDS, "delay") if getattr(self, k)]
        return ",".join([*parts, f"seed={self.seed}"])


class FaultStage:
    """One direction's faults between the NIC and the far TUN."""

    def __init__(self, spec: WireFaults, direction: str) -> None:
        self.spec = spec
        self.rng = random.Random(f"{spec.seed}/{direction}")
        self.counts = dict.fromkeys((*KINDS, "delayed"), 0)
        self._held: list[tuple[float, int, bytes]] = []
        self._order = 0

    def send(
        self, frame: memoryview, write: Callable[[memoryview | bytes], object], now: float
    ) -> None:
        """The wire takes ``frame`` (valid during the call only)."""
        s, r, c = self.spec, self.rng, self.counts
        if s.drop and r.random() < s.drop:
            c["drop"] += 1
            return
        copies = 1
        if s.dup and r.random() < s.dup:
            c["dup"] += 1
            copies = 2
        for _ in range(copies):
            hold = s.delay / 1000.0
            if s.reorder and r.random() < s.reorder:
                c["reorder"] += 1
                hold += r.uniform(0.0002, 0.002)
            if hold:
                c["delayed"] += 1
                self._order += 1
                heapq.heappush(self._held, (now + hold, self._order, bytes(frame)))
            else:
                write(frame)

    def release(self, write: Callable[[memoryview | bytes], object], now: float) -> float | None:
        """Send the held frames now due; seconds until the next one (None: none held)."""
        held = self._held
        while held and held[0][0] <= now:
            write(heapq.heappop(held)[2])
        return held[0][0] - now if held else None


__all__ = ["FaultStage", "WireFaults"]
