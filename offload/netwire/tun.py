"""TUN devices as a TSO NIC sees its TX ring: GSO frames behind a virtio header.

A TUN opened with ``IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`` and told with
``TUNSETOFFLOAD`` that its reader copes with partial checksums and TSO
(``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``) is, to the kernel, a NIC with
TSO: TCP hands it super-frames of up to 64 KiB, each behind a 10-byte
``struct virtio_net_hdr`` (include/uapi/linux/virtio_net.h) saying how to
cut it (``gso_type``, ``gso_size``) and where the checksum still has to go
(``VIRTIO_NET_HDR_F_NEEDS_CSUM``, ``csum_start``/``csum_offset``).  Written
to another TUN with the same header, the frame enters that namespace as the
same GSO packet: the forwarder never segments or checksums anything.

The device is created in the network namespace of the thread that opens
it, and lives exactly as long as the file descriptor (not persistent):
closing the fd, or the owning process dying, removes the link.
"""

from __future__ import annotations

import fcntl
import os
import struct
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

VNET_HDR = struct.Struct("<BBHHHH")
"""``struct virtio_net_hdr`` (legacy layout, little-endian on this host)."""
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_TCPV6 = 4

TUN_PATH = "/dev/net/tun"
MAX_FRAME = VNET_HDR_LEN + 65535 + 256
"""The largest read a TSO frame needs: header, 64 KiB IP packet, slack."""


@dataclass(frozen=True)
class VnetHdr:
    """The fields of one frame's virtio header."""

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @classmethod
    def parse(cls, frame: bytes | bytearray | memoryview) -> VnetHdr:
        return cls(*VNET_HDR.unpack_from(frame, 0))


def open_tun(name: str) -> int:
    """Create TUN ``name`` in the calling thread's network namespace; its fd.

    Raises OSError (ENOENT without /dev/net/tun, EPERM without
    CAP_NET_ADMIN) with the kernel's errno.
    """
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = [
    "MAX_FRAME",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VNET_HDR",
    "VNET_HDR_LEN",
    "VnetHdr",
    "open_tun",
]
