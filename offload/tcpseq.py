"""32-bit TCP sequence numbers: wrap-around arithmetic and segmentation.

The device path gives every byte a virtual TCP sequence number, starting at
a random ISN and wrapping at 2^32 as on the wire, so drivers must handle the
wrap exactly as a NIC does.  Internally the layer counts a 64-bit stream
offset that never wraps; these helpers convert between the two.

Sequence numbers are only ever compared with serial-number arithmetic
(RFC 1982, the kernel's ``before()``/``after()`` in include/net/tcp.h): a
32-bit number says where a byte is only relative to another one less than
2^31 away.  So a sequence number is turned into a stream offset next to a
reference inside the TCP window (the oldest unacknowledged byte; the
kernel's ``tls_get_record`` likewise compares it only with records not yet
acknowledged), never next to a fixed point such as the ISN or the start
marker, which the stream leaves more than 2^31 behind after 2 GiB.
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
    """Signed distance a - b in sequence space, in [-2^31, 2^31).

    The kernel's ``(s32)(a - b)``: at exactly 2^31 apart, where RFC 1982
    leaves the order undefined, it is -2^31 both ways.
    """
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


def seq_before(a: int, b: int) -> bool:
    """``before(a, b)``: a comes earlier than b in sequence space (at exactly
    2^31 apart both ``before`` and ``after`` hold, as in the kernel)."""
    return seq_diff(a, b) < 0


def seq_after(a: int, b: int) -> bool:
    """``after(a, b)``: a comes later than b in sequence space."""
    return seq_diff(b, a) < 0


def random_isn() -> int:
    return secrets.randbelow(SEQ_MOD)


class SeqSpace:
    """Maps stream offsets to TCP sequence numbers and back (near a reference)."""

    def __init__(self, isn: int | None = None) -> None:
        self.isn = random_isn() if isn is None else isn % SEQ_MOD

    def seq(self, offset: int) -> int:
        return (self.isn + offset) % SEQ_MOD

    def offset(self, seq: int, near: int) -> int:
        """The stream offset of ``seq`` closest to offset ``near``.

        Right only when the byte really lies less than 2^31 from ``near``:
        pass a point inside the TCP window (the acknowledged offset), not
        one the stream has left behind.
        """
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
