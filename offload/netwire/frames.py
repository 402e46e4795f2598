"""Reading TCP frames the way a NIC's parser does: just enough to find a flow.

A frame from the TUN is ``virtio_net_hdr | IP header | TCP header |
payload``; the NIC needs the flow's 4-tuple (to find its TLS context), the
TCP sequence number, the flags (to learn the ISN from the SYN) and where the
payload starts.  IPv4 fragments, IPv6 extension headers and anything not
TCP are not parsed: they pass through untouched, as they would past a NIC
whose parser gives up on them (no context can match them).

After the payload was rewritten the TCP checksum must be right for what now
crossed the wire.  A frame the kernel handed over with
``VIRTIO_NET_HDR_F_NEEDS_CSUM`` still has its checksum to be filled in (the
TSO NIC's job): passing the header through leaves that to the receiving
side, which is correct for any payload.  A frame that came with a complete
checksum is turned into such a partial one (``make_partial``), so the
payload can change without recomputing a sum over 64 KiB in Python.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from offload.netwire.tun import VIRTIO_NET_HDR_F_NEEDS_CSUM, VNET_HDR, VNET_HDR_LEN

IPPROTO_TCP = 6
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
_TCP_CSUM_OFFSET = 16


class FlowKey(NamedTuple):
    """One direction of a TCP connection: source and destination (packed
    addresses, ports)."""

    src: bytes
    sport: int
    dst: bytes
    dport: int


@dataclass(slots=True)
class TcpFrame:
    """Where things are in one TCP frame (offsets into the frame buffer)."""

    key: FlowKey
    seq: int
    flags: int
    tcp: int
    """Offset of the TCP header."""
    payload: int
    """Offset of the first payload byte."""
    end: int
    """Offset just past the payload (the IP packet's end)."""


_IP4 = struct.Struct(">BxHxxHxB2x4s4s")
"""IPv4 header fields the parser needs in one call: version/IHL, total
length, flags/fragment offset, protocol, source, destination."""
_TCP = struct.Struct(">HHI4xBB")
"""TCP header: ports, sequence number, data offset byte, flags."""
_U16 = struct.Struct(">H")
_new_tuple = tuple.__new__


def parse_tcp(frame: memoryview) -> TcpFrame | None:
    """The TCP view of a frame (starting with its virtio header), or None
    for anything the NIC does not look into.

    Once per frame in the NIC process: the IPv4 and TCP headers are read
    with one ``struct`` call each, and the flow key is built without the
    named tuple's Python-level constructor."""
    ip = VNET_HDR_LEN
    n = len(frame)
    if n < ip + 20:
        return None
    ver = frame[ip] >> 4
    if ver == 4:
        vihl, total, frag, proto, src, dst = _IP4.unpack_from(frame, ip)
        ihl = (vihl & 0x0F) * 4
        if proto != IPPROTO_TCP or ihl < 20 or frag & 0x3FFF:  # MF or a fragment offset
            return None
        tcp = ip + ihl
    elif ver == 6:
        if n < ip + 40 or frame[ip + 6] != IPPROTO_TCP:
            return None
        total = 40 + _U16.unpack_from(frame, ip + 4)[0]
        src, dst = bytes(frame[ip + 8 : ip + 24]), bytes(frame[ip + 24 : ip + 40])
        tcp = ip + 40
    else:
        return None
    end = min(n, ip + total)
    if end < tcp + 20:
        return None
    sport, dport, seq, doff, flags = _TCP.unpack_from(frame, tcp)
    doff = (doff >> 4) * 4
    payload = tcp + doff
    if doff < 20 or payload > end:
        return None
    key: FlowKey = _new_tuple(FlowKey, (src, sport, dst, dport))
    return TcpFrame(key, seq, flags, tcp, payload, end)


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def make_partial(frame: memoryview, t: TcpFrame) -> None:
    """Leave the TCP checksum to the receiving side (CHECKSUM_PARTIAL).

    A frame already marked ``NEEDS_CSUM`` is left alone.  Otherwise the
    virtio header is rewritten to ``NEEDS_CSUM`` at the TCP checksum field
    and the field gets the pseudo-header sum, exactly what the kernel's
    ``tcp_v4_send_check``/``tcp_v6_send_check`` leave for a NIC.
    """
    if frame[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM:  # every TSO frame: nothing to do
        return
    flags, gso_type, hdr_len, gso_size, _, _ = VNET_HDR.unpack_from(frame, 0)
    addrs = t.key.src + t.key.dst
    s = sum(struct.unpack(f">{len(addrs) // 2}H", addrs))
    s += IPPROTO_TCP + (t.end - t.tcp)
    struct.pack_into(">H", frame, t.tcp + _TCP_CSUM_OFFSET, _fold(s))
    VNET_HDR.pack_into(
        frame,
        0,
        flags | VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type,
        hdr_len,
        gso_size,
        t.tcp - VNET_HDR_LEN,
        _TCP_CSUM_OFFSET,
    )


__all__ = [
    "TCP_ACK",
    "TCP_FIN",
    "TCP_RST",
    "TCP_SYN",
    "FlowKey",
    "TcpFrame",
    "make_partial",
    "parse_tcp",
]
