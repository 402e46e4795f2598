"""TCP sequence-number arithmetic across the 2^32 wrap and at 2^31 apart.

The reference is the kernel's own definition (include/net/tcp.h):
``before(a, b)`` is ``(s32)(a - b) < 0``, computed here with ``struct``
casts rather than with the modular formulas ``offload.tcpseq`` uses.
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from offload.tcpseq import (
    SEQ_MOD,
    SeqSpace,
    seq_add,
    seq_after,
    seq_before,
    seq_diff,
)

HALF = SEQ_MOD // 2


def u32(x: int) -> int:
    return int(struct.unpack("<I", struct.pack("<Q", x % (1 << 64))[:4])[0])


def s32(x: int) -> int:
    return int(struct.unpack("<i", struct.pack("<I", u32(x)))[0])


# Sequence numbers with the edges well represented: 0, 2^31, 2^32 - 1 and
# their neighbours, where off-by-one and sign mistakes live.
EDGES = [0, 1, HALF - 1, HALF, HALF + 1, SEQ_MOD - 1, SEQ_MOD - 2]
seqs = st.one_of(st.sampled_from(EDGES), st.integers(0, SEQ_MOD - 1))
# Distances up to 2^31 in both directions.
dists = st.one_of(
    st.sampled_from([0, 1, -1, HALF - 1, -(HALF - 1), HALF, -HALF]),
    st.integers(-HALF, HALF),
)


@given(a=seqs, b=seqs)
def test_before_after_are_the_kernels(a: int, b: int) -> None:
    assert seq_before(a, b) == (s32(a - b) < 0)
    assert seq_after(a, b) == (s32(b - a) < 0)
    assert seq_diff(a, b) == s32(a - b)


@given(a=seqs, d=st.integers(1, HALF - 1))
def test_order_holds_across_the_wrap(a: int, d: int) -> None:
    """Whatever side of 2^32 (or of 2^31) a and b sit, b = a + d with
    0 < d < 2^31 is after a, a is before b, and the distance is d."""
    b = seq_add(a, d)
    assert seq_after(b, a) and seq_before(a, b)
    assert not seq_before(b, a) and not seq_after(a, b)
    assert seq_diff(b, a) == d and seq_diff(a, b) == -d
    assert not seq_before(a, a) and not seq_after(a, a)


@given(a=seqs)
def test_exactly_half_apart_is_ambiguous_as_in_the_kernel(a: int) -> None:
    """2^31 apart RFC 1982 leaves the order undefined; the kernel's (s32)
    cast makes each number both before and after the other, and the
    distance -2^31 either way: no caller may rely on an order there."""
    b = seq_add(a, HALF)
    assert seq_before(a, b) and seq_before(b, a)
    assert seq_after(a, b) and seq_after(b, a)
    assert seq_diff(a, b) == seq_diff(b, a) == -HALF


@given(
    isn=seqs,
    near=st.one_of(st.sampled_from([0, HALF, SEQ_MOD, 3 * HALF, 5 << 32]), st.integers(0, 1 << 40)),
    d=dists,
)
def test_offset_is_exact_within_2_31_of_the_reference(isn: int, near: int, d: int) -> None:
    """A 64-bit stream offset survives seq() and offset() when read next to
    a reference less than 2^31 away, on either side, wherever the ISN sits
    (the stream far past 2^32 bytes too); 2^31 away it is read as 2^31
    behind, the kernel's choice."""
    space = SeqSpace(isn)
    off = near + d
    if off < 0:
        return
    got = space.offset(space.seq(off), near)
    if d == HALF:
        assert got == off - SEQ_MOD
    else:
        assert got == off
