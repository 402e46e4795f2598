"""``tlsctl send --wire netns``: the same transfer, on the real wire.

The command builds a wire of its own (:func:`tlsctl.realwire.open_wire`):
the sender runs in the host namespace, behind the NIC process, and the
receiver beyond it, in the peer namespace:

* ``--loopback``: the built-in server, a thread of this process whose
  listening socket belongs to the peer namespace;
* ``-connect 10.213.0.2:PORT --exec-peer CMD``: CMD (``openssl s_server``,
  ``tlsctl serve``, ``gnutls-serv`` ...) started in the peer namespace;
  the transfer starts once it listens on PORT, and it gets a moment to exit
  by itself afterwards;
* ``-connect 10.213.0.2:PORT`` alone: the namespace is named on stderr,
  for the user to start the receiver there (``ip netns exec NS CMD``),
  and the transfer starts once something listens on PORT.

The summary adds the wire's facts (:class:`tlsctl.realwire.WireMeter`:
host and NIC CPU apart, the NIC's counters) and, with ``--pcap``, the
capture (:mod:`tlsctl.pcapture`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from typing import TYPE_CHECKING, Any

from tlsctl.pcapture import Capture, KeylogBuffer
from tlsctl.realwire import (
    HOST_SIDE,
    PEER_SIDE,
    Peer,
    WireMeter,
    WireSpec,
    netns_facts,
    on_wire,
    open_wire,
    wait_listening,
)
from tlsctl.session.channel import ChannelError
from tlsctl.signals import StopSignals
from tlsctl.transfer.loopback import send_loopback
from tlsctl.transfer.sender import NO_HOOKS, ClientOptions, SendHooks, send_to

if TYPE_CHECKING:
    from offload.netwire.netns import NetnsWire

__all__ = ["send_on_wire"]


def _connector(wire: NetnsWire) -> Any:
    def connect(addr: tuple[str, int], timeout: float) -> socket.socket:
        sock = wire.socket(HOST_SIDE)
        try:
            sock.settimeout(timeout)
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def send_on_wire(
    file: str | None,
    size: int,
    target: tuple[str, int] | None,
    opts: ClientOptions,
    stop: StopSignals,
    spec: WireSpec,
    hooks: SendHooks = NO_HOOKS,
    exec_peer: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Send over a real wire built for this run (see the module docstring).

    ``target`` None: ``--loopback`` (the result has ``match``, as
    :func:`~tlsctl.transfer.send_loopback`'s).  Returns the summary and the
    target for its title; raises what ``send_to`` raises, and
    :class:`tlsctl.realwire.WireUnavailable`, ``ConfigError`` (``--pcap``),
    ``ChannelError`` (the receiver never listened).
    """
    with open_wire(spec, opts.offload) as wire, contextlib.ExitStack() as stack:
        facts = netns_facts(wire)
        hooks.detail(
            f"real wire: host namespace {facts['host_netns']} ({facts['host_addr']}), "
            f"NIC process {wire.nic_pid} ({wire.driver}), peer namespace "
            f"{facts['peer_netns']} ({facts['peer_addr']})"
        )
        opts = dataclasses.replace(opts, device=on_wire(opts.device, wire))
        hooks = dataclasses.replace(hooks, connect=_connector(wire))
        capture: Capture | None = None
        if spec.pcap:
            keys = KeylogBuffer()
            capture = Capture(wire, spec.pcap, keys)
            stack.callback(capture.close)
            hooks = dataclasses.replace(hooks, keylog=keys)
        meter = WireMeter(wire)
        peer: Peer | None = None
        if target is None:
            listener = wire.socket(PEER_SIDE)
            listener.bind((wire.addr(PEER_SIDE), 0))
            result, where = send_loopback(file, size, opts, stop, hooks, listener=listener)
        else:
            host, port = target
            if exec_peer:
                peer = Peer(wire, exec_peer)
                stack.callback(peer.finish)
            else:
                hooks.warn(
                    f"real wire up: start the receiver in namespace {facts['peer_netns']} "
                    f"(ip netns exec {facts['peer_netns']} COMMAND), listening on "
                    f"{facts['peer_addr']}:{port}; waiting up to {opts.timeout:g} s"
                )
            try:
                wait_listening(wire, PEER_SIDE, port, opts.timeout, peer)
            except (TimeoutError, RuntimeError) as exc:
                raise ChannelError(str(exc)) from None
            result = send_to(file or "-", host, port, opts, stop, hooks)
            where = f"{host}:{port} (peer namespace {facts['peer_netns']})"
        report = meter.report(not_host=float(result.pop("server_cpu_seconds", 0.0)))
        result.pop("device_cpu_seconds", None)  # the NIC's is nic_cpu_seconds, its own process's
        ours = result.get("device_counters") or {}
        result.update(report)
        # How TCP got the record ring's bytes (sent from its pages, or copied when the
        # kernel refused): the host's counters, not the NIC's.
        host_tx = {k: v for k, v in ours.items() if k.startswith("host_tx_")}
        if host_tx:
            result["host_counters"] = host_tx
        result["netns"] = facts
        if peer is not None:
            status = peer.finish()
            result["peer_status"] = status
            if status != 0:
                hooks.warn(f"warning: --exec-peer {peer} exited with status {status}")
        if capture is not None:
            result["pcap"] = spec.pcap
            result["pcap_bytes"] = capture.finish()
            result["pcap_dropped"] = capture.dropped
            if capture.dropped:
                hooks.warn(
                    f"warning: --pcap: the capture missed {capture.dropped} packets "
                    "(dumpcap could not keep up): it does not hold the whole stream"
                )
        return result, where
