"""32-bit TCP sequence numbers: wrap-around arithmetic and segmentation.

The device path gives every byte a virtual TCP sequence number, starting at
a random ISN and wrapping at 2^32 as on the wire, so drivers must handle the
wrap exactly as a NIC does.  Internally the layer counts a 64-bit stream
offset that never wraps; these helpers convert between the two.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

from offload.netdev import Segment

SEQ_MOD = 1 << 32
TSO_MSS = 64 * 1024
"""Default segment size: one TSO super-segment (GSO max is 64 KiB)."""


def seq_add(seq: int, n: int) -> int:
    return (seq + n) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in sequence space (RFC 1982 style, +-2^31)."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


def random_isn() -> int:
    return secrets.randbelow(SEQ_MOD)


class SeqSpace:
    """Maps stream offsets to TCP sequence numbers and back (near a reference)."""

    def __init__(self, isn: int | None = None) -> None:
        self.isn = random_isn() if isn is None else isn % SEQ_MOD

    def seq(self, offset: int) -> int:
        return (self.isn + offset) % SEQ_MOD

    def offset(self, seq: int, near: int) -> int:
        """The stream offset of ``seq`` closest to offset ``near``."""
        return near + seq_diff(seq, self.seq(near))


class Segmenter:
    """Cuts the byte stream into segments of at most ``mss`` bytes.

    A segment never spans two framing buffers (as an skb frag list would
    allow): that keeps payloads contiguous views without copying.
    """

    def __init__(self, space: SeqSpace, mss: int = TSO_MSS) -> None:
        if mss < 1:
            raise ValueError("mss must be positive")
        self.space = space
        self.mss = mss

    def segments(self, offset: int, data: memoryview) -> Iterator[tuple[int, Segment]]:
        """(stream offset, segment) pairs covering ``data`` sent at ``offset``."""
        mss = self.mss
        for i in range(0, len(data), mss):
            yield offset + i, Segment(self.space.seq(offset + i), data[i : i + mss])
