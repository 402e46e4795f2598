"""``tlsctl serve --wire netns``: the server behind the NIC on a real wire.

The server is the host whose TX the NIC offloads (what it sends: ``--echo``,
``-WWW``), so it listens in the host namespace; clients run in the peer
namespace beyond the NIC (``ip netns exec <peer ns> curl ...``, ``openssl
s_client``, ``tlsctl send`` with ``--wire model``), connecting to the host
address.  The wire lives as long as the server: :func:`serve_wire` builds
it, prepares the server in it, and at the end measures it
(:class:`tlsctl.realwire.WireMeter`) and finishes the capture (``--pcap``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlsctl.pcapture import Capture, KeylogBuffer
from tlsctl.realwire import (
    HOST_SIDE,
    Peer,
    WireMeter,
    WireSpec,
    netns_facts,
    on_wire,
    open_wire,
)
from tlsctl.server.setup import Listening, ServeOptions, prepare

if TYPE_CHECKING:
    from offload.netwire.netns import NetnsWire
    from tlsctl.server.server import Server

__all__ = ["ClientPeer", "WiredServer", "serve_wire"]


@dataclass
class WiredServer:
    """A prepared server on a real wire, and what measures it."""

    wire: NetnsWire
    listening: Listening
    meter: WireMeter
    capture: Capture | None

    def facts(self) -> dict[str, Any]:
        """Where the server and its clients are (for the listening line)."""
        return {"wire": "netns", "nic_pid": self.wire.nic_pid, **netns_facts(self.wire)}

    def start_peer(self, command: str) -> ClientPeer:
        """``serve --exec-peer``: ``command`` in the peer namespace, told
        where the server listens."""
        host, port = self.listening.listener.getsockname()[:2]
        connect = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        env = {"TLSCTL_HOST": host, "TLSCTL_PORT": str(port), "TLSCTL_CONNECT": connect}
        return ClientPeer(self.wire, command, stdin=subprocess.DEVNULL, env=env)

    def finish(self) -> dict[str, Any]:
        """The wire's summary: host and NIC CPU, the NIC's counters, the capture."""
        out: dict[str, Any] = {"event": "wire", **self.meter.report()}
        if self.capture is not None:
            out["pcap"] = self.capture.path
            out["pcap_bytes"] = self.capture.finish()
            out["pcap_dropped"] = self.capture.dropped  # > 0: the file misses packets
            self.capture = None
        return out


class ClientPeer(Peer):
    """A client run in the peer namespace: the server stops accepting
    once it has exited (:meth:`stops`, the server's ``started`` hook)."""

    def stops(self, server: Server) -> None:
        """Watch the peer from a thread: when it exits, ``server`` stops
        accepting (``Server.enough``) and ends with its connections."""

        def watch() -> None:
            self.proc.wait()
            server.enough.set()

        threading.Thread(target=watch, name="exec-peer", daemon=True).start()


def _tee(*sinks: Any) -> Any:
    given = [s for s in sinks if s is not None]

    def tee(line: bytes) -> None:
        for sink in given:
            sink(line)

    return tee


@contextlib.contextmanager
def serve_wire(opts: ServeOptions, spec: WireSpec) -> Iterator[WiredServer]:
    """Build the wire, prepare the server in its host namespace (every
    connection's record gets its CPU time), start the capture; tear it all
    down however the block ends (a capture not finished is discarded)."""
    with open_wire(spec, opts.offload) as wire, contextlib.ExitStack() as stack:
        opts = dataclasses.replace(opts, device=on_wire(opts.device, wire), count_cpu=True)
        if opts.host == "::":
            # The default (dual-stack) would make every peer an IPv4-mapped
            # IPv6 address, which is not the flow the NIC sees in the frames.
            opts = dataclasses.replace(opts, host=wire.addr(HOST_SIDE))
        with wire.inside(HOST_SIDE):
            listening = prepare(opts)
        stack.callback(listening.listener.close)
        capture: Capture | None = None
        if spec.pcap:
            keys = KeylogBuffer()
            capture = Capture(wire, spec.pcap, keys)
            stack.callback(capture.close)
            listening.keylog = _tee(listening.keylog, keys)
        yield WiredServer(wire, listening, WireMeter(wire), capture)
