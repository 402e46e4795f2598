"""Fixtures the real-wire interop modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from offload.netwire.netns import NetnsWire, unavailable_reason


@pytest.fixture(scope="module")
def wire() -> Iterator[NetnsWire]:
    """One real wire (two namespaces and the NIC process) per test module;
    the module's tests skip with the reason where root or /dev/net/tun is
    missing."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with NetnsWire() as w:
        yield w
