"""``--wire netns``: the real wire as the commands use it (``send``, ``serve``; ``bench`` too).

The library (:mod:`offload.netwire`) builds two network namespaces joined
only through a NIC process.  Here is what a command needs around it, kept
in one module so every command that offers ``--wire netns`` builds and
reports the wire the same way:

* :class:`WireSpec` and :func:`wire_spec`: the options, checked at start-up
  (``--pcap`` and ``--exec-peer`` need ``--wire netns``; the real wire's
  faults are checked by :func:`tlsctl.offloadmode.device_spec`);
* :func:`open_wire`: the wire for a run (one line, :class:`WireUnavailable`,
  without root or /dev/net/tun);
* :func:`on_wire`: a NIC mode's device spec pointed at the wire's NIC;
* :class:`WireMeter`: host CPU and the NIC process's CPU, apart, and the
  NIC's counters over a run (the summary of ``send``/``serve``);
* :class:`Peer`: a command run in the peer namespace (``--exec-peer``);
* :func:`listening`: is something listening on a port in a namespace.

The namespaces are named for the NIC's offloaded direction: ``tx`` is the
host behind the NIC (where our TLS sender runs: ``send``, or ``serve``
whose replies are the offloaded direction), ``rx`` the peer beyond it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlsctl.offloadmode import DeviceSpec, Offload, OffloadOptionError, Wire, is_nic

if TYPE_CHECKING:  # pyroute2 and the wire load when a run needs them, not for --help
    from offload.netwire.netns import NetnsWire, Side

__all__ = [
    "HOST_SIDE",
    "PEER_SIDE",
    "Peer",
    "WireMeter",
    "WireSpec",
    "WireUnavailable",
    "listening",
    "netns_facts",
    "on_wire",
    "open_wire",
    "unavailable_reason",
    "wire_spec",
]

HOST_SIDE: Side = "tx"
"""Our side: the host whose TX the NIC offloads."""
PEER_SIDE: Side = "rx"
"""The peer's side, beyond the NIC (where the capture is taken)."""
_PEER_GRACE = 5.0  # seconds a peer gets to exit by itself once the transfer is over


class WireUnavailable(RuntimeError):
    """The real wire cannot be built here; the message is one line."""


@dataclass(frozen=True)
class WireSpec:
    """``--wire netns``'s settings: the real wire's faults (checked) and the
    capture file (``--pcap``, not yet created)."""

    faults: str = ""
    pcap: str | None = None


def wire_spec(
    wire: Wire, *, faults: str | None = None, pcap: str | None = None, exec_peer: str | None = None
) -> WireSpec | None:
    """The real wire's settings (None for the wire model); refuses the
    options that mean something only on the real wire."""
    if wire != "netns":
        for name, value in (("--pcap", pcap), ("--exec-peer", exec_peer)):
            if value:
                raise OffloadOptionError(f"{name} needs --wire netns (the real wire)")
        return None
    return WireSpec(faults=faults or "", pcap=pcap or None)


def unavailable_reason() -> str | None:
    """Why the real wire cannot be built on this machine (no root, no
    /dev/net/tun), or None: :func:`offload.netwire.netns.unavailable_reason`."""
    from offload.netwire.netns import unavailable_reason as why

    return why()


@contextlib.contextmanager
def open_wire(spec: WireSpec, offload: Offload) -> Iterator[NetnsWire]:
    """The wire for one run, torn down however the block ends.

    The NIC process runs ``offload``'s driver, or ``sim-nic`` for a mode
    without a NIC (``sw``: the flow has no context and passes through
    untouched, the plain-forwarding baseline).
    """
    from offload.netwire.netns import NetnsWire
    from offload.netwire.netns import WireUnavailable as Unavailable

    reason = unavailable_reason()
    if reason:
        raise WireUnavailable(reason)
    try:
        wire = NetnsWire(offload if is_nic(offload) else "sim-nic", faults=spec.faults)
        with _default_stop_signals():
            wire.__enter__()
    except Unavailable as exc:
        raise WireUnavailable(str(exc)) from None
    except OSError as exc:
        raise WireUnavailable(
            f"cannot build the real wire (--wire netns): {exc.strerror or exc}"
        ) from None
    try:
        yield wire
    finally:
        wire.close()


@contextlib.contextmanager
def _default_stop_signals() -> Iterator[None]:
    """SIGINT/SIGTERM at their defaults while the wire is built.

    pyroute2 builds namespaces and addresses in forked children of this
    process and ends them with SIGTERM.  A child inherits the Python
    handlers: with the commands' own (``StopSignals``, ``serve``'s), the
    SIGTERM becomes an exception that unwinds the *child* through a copy
    of the command, which then tears down the wire the parent is building
    (seen as vanished links, "Network is unreachable", "interrupted by
    SIGTERM").  With the defaults the child just dies; a signal to us in
    that moment ends us, and the NIC process cleans up after us
    (``PR_SET_PDEATHSIG``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def on_wire(device: DeviceSpec | None, wire: NetnsWire) -> DeviceSpec | None:
    """A NIC mode's device spec with TX through ``wire``'s NIC process."""
    return None if device is None else dataclasses.replace(device, control=wire.control)


def netns_facts(wire: NetnsWire) -> dict[str, str]:
    """Where things are, for the user: both namespaces and addresses."""
    return {
        "host_netns": wire.ns[HOST_SIDE],
        "host_addr": wire.addr(HOST_SIDE),
        "peer_netns": wire.ns[PEER_SIDE],
        "peer_addr": wire.addr(PEER_SIDE),
    }


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _nic_stats(wire: NetnsWire) -> dict[str, Any]:
    from offload.netwire.control import ControlClient, ControlError

    try:
        c = ControlClient(wire.control, timeout=10)
    except ControlError:
        return {}
    try:
        return c.call("stats")
    except ControlError:
        return {}
    finally:
        c.close()


def _moved(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    """Counters that moved, by how much (zeros left out, as ethtool -S users filter)."""
    out = {k: int(v) - int(before.get(k, 0)) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


class WireMeter:
    """CPU and counters over a stretch of a run on the real wire.

    Host CPU is this process's (user + system) and the NIC's is its own
    process's, reported apart, never added: on hardware the NIC's work is
    not the host's.  The counters are the NIC's (frames seen, encrypted,
    passed through untouched, dropped because their record was freed) and
    its driver's (ethtool names: ``tx_tls_dump_*``, ``tx_tls_ooo``,
    ``tx_tls_drop_no_sync_data`` ...), NIC-wide as ``ethtool -S`` is.
    """

    def __init__(self, wire: NetnsWire) -> None:
        self.wire = wire
        self.host0 = _process_cpu()
        self.nic0 = wire.nic_cpu_seconds()
        self.stats0 = _nic_stats(wire)

    def report(self, not_host: float = 0.0) -> dict[str, Any]:
        """``not_host``: CPU seconds of this process that are not the host
        side's (``send --loopback``'s built-in receiver, a thread here)."""
        stats = _nic_stats(self.wire)
        before = self.stats0
        out: dict[str, Any] = {
            "wire": "netns",
            "host_cpu_seconds": round(max(0.0, _process_cpu() - self.host0 - not_host), 6),
            "nic_cpu_seconds": round(self.wire.nic_cpu_seconds() - self.nic0, 6),
            "nic_driver": stats.get("driver"),
            "nic_counters": _moved(stats.get("nic", {}), before.get("nic", {})),
            "device_counters": _moved(stats.get("device", {}), before.get("device", {})),
        }
        faults = stats.get("faults") or {}
        if faults:
            out["faults"] = self.wire.faults
            out["faults_injected"] = {
                f"{d}_{k}": v
                for d, counts in faults.items()
                for k, v in _moved(counts, before.get("faults", {}).get(d, {})).items()
            }
        return out


def listening(wire: NetnsWire, side: Side, port: int) -> bool:
    """Is a TCP socket listening on ``port`` in ``side``'s namespace?

    Read from ``/proc/thread-self/net/tcp{,6}`` inside the namespace: a
    look that, unlike a trial connection, does not use up the one accept
    of a peer such as ``s_server -naccept 1``.
    """
    with wire.inside(side):
        for name in ("tcp", "tcp6"):
            with contextlib.suppress(OSError), open(f"/proc/thread-self/net/{name}") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
    return False


def wait_listening(
    wire: NetnsWire, side: Side, port: int, timeout: float, peer: Peer | None = None
) -> None:
    """Wait for a listener on ``port`` in ``side``'s namespace; TimeoutError
    (one line) when none comes, RuntimeError when ``peer`` exits first."""
    deadline = time.monotonic() + timeout
    while not listening(wire, side, port):
        if peer is not None and peer.proc.poll() is not None:
            raise RuntimeError(
                f"--exec-peer exited with status {peer.proc.returncode} "
                f"before it listened on port {port}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"nothing listened on {wire.addr(side)}:{port} in namespace "
                f"{wire.ns[side]} within {timeout:g} s"
            )
        time.sleep(0.05)


class Peer:
    """``--exec-peer CMD``: a shell command line run in the peer namespace.

    Its stdin is a pipe kept open until the end (``openssl s_server``
    shuts down at EOF on stdin), its stdout goes to our stderr (our stdout
    is the summary, or JSON), it runs in its own process group so the whole
    pipeline can be stopped.  :meth:`finish` gives it a moment to exit by
    itself, then SIGTERM, and returns its status.
    """

    def __init__(
        self,
        wire: NetnsWire,
        command: str,
        *,
        stdin: int = subprocess.PIPE,
        env: dict[str, str] | None = None,
    ) -> None:
        """``stdin``: a pipe kept open (a server peer), or DEVNULL (a client
        peer reads its input from a redirection in ``command``); ``env``
        is added to ours."""
        self.command = command
        self.proc = subprocess.Popen(
            wire.argv(PEER_SIDE, ["sh", "-c", command]),
            stdin=stdin,
            stdout=2,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )

    def finish(self, grace: float = _PEER_GRACE) -> int:
        """The peer's exit status (negative: the signal that ended it)."""
        p = self.proc
        with contextlib.suppress(OSError):
            if p.stdin is not None:
                p.stdin.close()
        try:
            return p.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            try:
                return p.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return p.wait()

    def __str__(self) -> str:
        return shlex.quote(self.command)
