"""What one bench run is asked to do: :class:`BenchOptions`, built by the caller.

The ``bench`` command parses its options into this and nothing else
reaches the runner, so a script measures exactly what the command would.
Values are checked here too (ValueError, one line): the command's usage
errors come first and name the option, a library caller gets these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from offload.wiremodel import FaultSpec
from tlsctl.addresses import is_ip
from tlsctl.benchrun.modes import ALL_MODES, DEFAULT_MODES, TLS_MAX_RECORD
from tlsctl.tlsconf import TlsOptions

WIRES = ("model", "netns")
"""``--wire``: the in-process wire model on loopback, or the real wire."""
DIRECTIONS = ("tx", "rx")
"""``--direction``: measure the sending host (tx) or the receiving host (rx,
:mod:`tlsctl.benchrun.rxbench`)."""


@dataclass(frozen=True)
class Remote:
    """A running ``tlsctl serve --sink`` to send to instead of the loopback
    receiver (like iperf3's client): no byte-count report there, its
    close_notify is the confirmation."""

    host: str
    port: int
    verify: bool = True  # check the certificate (against TlsOptions.cafile or the system)

    @property
    def server_name(self) -> str | None:
        """SNI and the name checked: the host, unless it is an IP literal."""
        return None if is_ip(self.host) else self.host


@dataclass(frozen=True)
class BenchOptions:
    """One run: every mode on the same data, interleaved over ``repeat`` rounds."""

    size: int
    """Bytes per stream per transfer (the data file's size)."""
    modes: tuple[str, ...] = DEFAULT_MODES
    repeat: int = 5
    seconds: float | None = None
    """Resend the file on each connection until this many seconds have passed."""
    parallel: int = 1
    """Streams (sender processes) per mode and round."""
    record_size: int = TLS_MAX_RECORD
    """Plaintext bytes per record for userspace/sw/sim-nic/openssl."""
    faults: FaultSpec | None = None
    """Seeded wire faults for the sim-nic mode."""
    remote: Remote | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    data_dir: str | None = None
    """Where the run's temporary directory (data file, certificate) is made
    (None: the system's temporary directory)."""
    interval: float | None = None
    """Interval reports every this many seconds (``-i``; None: none)."""
    reverse: bool = False
    """``-R``: the bench's server sends, its client receives."""
    wire: str = "model"
    """``model``: loopback, sim-nic behind the in-process wire model;
    ``netns``: every mode over the real wire (:mod:`.wire`)."""
    wire_faults: str = ""
    """With ``wire="netns"``: the NIC process's frame faults (both directions)."""
    direction: str = "tx"
    """``tx``: the senders' CPU is the host's; ``rx``: the receiver's is
    (loopback, the in-process RX wire; :mod:`.rxbench`)."""
    rx_resync: str = "driver"
    """With ``direction="rx"``: the sim-nic's RX resync scheme (driver|core|async)."""

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in ALL_MODES]
        if bad or not self.modes:
            raise ValueError(f"unknown mode {', '.join(bad) or '(none)'}")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError("a mode is listed twice")
        if self.size < 1:
            raise ValueError("size must be at least 1 byte")
        if self.repeat < 1 or self.parallel < 1:
            raise ValueError("repeat and parallel must be at least 1")
        if not 1 <= self.record_size <= TLS_MAX_RECORD:
            raise ValueError(f"record size must be 1..{TLS_MAX_RECORD}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError("seconds must be positive")
        if self.faults is not None and "sim-nic" not in self.modes:
            raise ValueError("faults apply to the sim-nic mode only")
        if self.tls.tls1_2 and self.tls.tls1_3:
            raise ValueError("TLS 1.2 only and TLS 1.3 only exclude each other")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("interval must be positive")
        if self.wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}")
        if self.wire == "netns" and self.faults is not None:
            raise ValueError("with the netns wire, faults are the wire's (wire_faults)")
        if self.wire_faults and self.wire != "netns":
            raise ValueError("wire_faults need the netns wire")
        if self.remote is not None and (self.reverse or self.wire != "model"):
            raise ValueError(
                "a remote 'serve --sink' only receives on its own wire: "
                "no reverse, no netns wire with it"
            )
        if self.reverse and self.wire != "model":
            raise ValueError("reverse runs on loopback only (not over the netns wire)")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        if self.rx_resync not in ("driver", "core", "async"):
            raise ValueError("rx_resync must be one of driver, core, async")
        if self.direction == "rx" and (
            self.reverse
            or self.remote is not None
            or self.wire != "model"
            or self.seconds is not None
            or self.interval is not None
            or self.parallel != 1
        ):
            raise ValueError(
                "the rx direction runs one loopback stream on the model wire: "
                "no reverse, remote, netns wire, time bound, intervals or parallel streams"
            )
