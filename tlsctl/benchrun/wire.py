"""``bench --wire netns``: every mode over the real wire (``offload.netwire``).

The bench's senders (pool workers) move into the sender namespace ("tx")
and its receiver into the receiver namespace ("rx") of one
:class:`~offload.netwire.netns.NetnsWire`: the kernel's own TCP on both
sides, the NIC process between them, through which every mode goes: tcp
and sw pass through it without a TLS context (forwarding only: the
baseline), sim-nic's records are encrypted there (``NetTxPath``).

The NIC is a process of its own, so its CPU is its own (read from /proc,
per repeat, by the runner) and is reported as device CPU beside the
senders', not subtracted from it; its counters (``ethtool -S`` names) are
read over its control channel before and after each repeat, so a row's
counters are its own mode's.  ``bench/netwire.py`` measures the same path
as a standalone script.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from offload.netwire.control import ControlClient, ControlError
from tlsctl.benchrun.errors import BenchError

if TYPE_CHECKING:
    from offload.netwire.netns import Side


def enter_namespace(name: str | None) -> None:
    """Move this (single-threaded, forked) process into the namespace ``name``:
    every socket it makes from now on is there.  None: stay."""
    if name is None:
        return
    from pyroute2 import netns

    netns.setns(name, flags=0)


class BenchWire:
    """The real wire for one bench run (a context manager: the namespaces and
    the NIC process are gone when it exits, however the run ends)."""

    def __init__(self, faults: str = "") -> None:
        from pyroute2 import config

        from offload.netwire.netns import NetnsWire  # pyroute2: only when asked for

        # pyroute2 makes namespace sockets in forked children of this process
        # and ends them with SIGTERM.  A fork keeps the command's SIGTERM
        # handler (tlsctl.signals: raise Interrupted), so the child would not
        # die but unwind *this* process's stack: remove the run's directory,
        # tear the wire down, print partial results.  This setting has the
        # child take the default SIGTERM first.
        config.disable_mp_signal = True
        self.wire = NetnsWire("sim-nic", faults=faults)

    def __enter__(self) -> BenchWire:
        from offload.netwire.netns import WireUnavailable

        try:
            self.wire.__enter__()
        except WireUnavailable as exc:
            raise BenchError(str(exc)) from None
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the NIC process, remove the namespaces (idempotent)."""
        self.wire.close()

    def namespace(self, side: Side) -> str:
        return self.wire.ns[side]

    def addr(self, side: Side) -> str:
        return self.wire.addr(side)

    @property
    def control(self) -> str:
        return self.wire.control

    def nic_cpu(self) -> float:
        """The NIC process's CPU seconds so far (user + system)."""
        return self.wire.nic_cpu_seconds()

    def counters(self) -> dict[str, int]:
        """The NIC's device counters so far (NIC-wide, as ``ethtool -S``)."""
        try:
            client = ControlClient(self.wire.control)
        except ControlError as exc:
            raise BenchError(f"the NIC process does not answer: {exc}") from None
        try:
            stats = client.call("stats")
        except ControlError as exc:
            raise BenchError(f"the NIC process does not answer: {exc}") from None
        finally:
            client.close()
        return {str(k): int(v) for k, v in stats["device"].items()}


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What changed between two reads of the counters (gauges such as
    ``tx_tls_ctx`` included: the difference is what this repeat added)."""
    return {k: after[k] - before.get(k, 0) for k in after}


__all__ = ["BenchWire", "counters_delta", "enter_namespace"]
