"""``tlsctl.offloadmode``: the one ``--offload`` vocabulary and the one place
a mode becomes a record layer (send, serve and bench all build it here)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from offload.wiremodel import FaultSpec
from tlsctl.offloadmode import (
    BASE_OFFLOADS,
    DeviceSpec,
    OffloadOptionError,
    device_report,
    device_spec,
    is_nic,
    layer_offload,
    needs_layer,
    offload_choices,
    open_layer,
    receiver_offload,
)


@pytest.fixture
def sock(tcp_pair: Callable[[], tuple[socket.socket, socket.socket]]) -> socket.socket:
    return tcp_pair()[0]


def test_choices_are_the_base_modes_then_the_drivers() -> None:
    choices = offload_choices()
    assert tuple(choices[: len(BASE_OFFLOADS)]) == ("auto", "sw", "kernel", "none")
    assert "sim-nic" in choices[len(BASE_OFFLOADS):]
    assert [is_nic(c) for c in ("auto", "sw", "kernel", "none", "sim-nic")] == [
        False, False, False, False, True]


def test_which_modes_need_the_layer_and_what_the_receiver_uses() -> None:
    assert [needs_layer(m) for m in ("auto", "none", "sw", "kernel", "sim-nic")] == [
        False, False, True, True, True]
    # A NIC offloads TX only: the built-in receiver of a NIC sender is sw.
    assert [receiver_offload(m) for m in ("auto", "sw", "kernel", "none", "sim-nic")] == [
        "auto", "sw", "kernel", "none", "sw"]


def test_device_spec() -> None:
    assert device_spec("sw") is None and device_spec("auto") is None
    spec = device_spec("sim-nic", faults="reorder=0.5,seed=3", mss=1400)
    assert spec == DeviceSpec("sim-nic", FaultSpec(reorder=0.5, seed=3), 1400)
    assert device_spec("sim-nic") == DeviceSpec("sim-nic")


@pytest.mark.parametrize(("offload", "kw", "option", "text"), [
    ("sw", {"faults": "drop=0.1"}, None, "--faults and --mss need a NIC offload"),
    ("kernel", {"mss": 1000}, None, "--faults and --mss need a NIC offload"),
    ("sim-nic", {"faults": "bogus=1"}, "--faults", "unknown fault 'bogus'"),
    ("sim-nic", {"key_update_every": 1 << 20}, None, "cannot be rekeyed yet"),
])
def test_device_spec_refusals(offload: str, kw: dict[str, object], option: str | None,
                              text: str) -> None:
    with pytest.raises(OffloadOptionError, match=text) as err:
        device_spec(offload, **kw)  # type: ignore[arg-type]
    assert err.value.option == option


def test_open_layer_sw(sock: socket.socket) -> None:
    k = open_layer(sock, "sw", record_size=1000)
    assert k.device is None and k.wire is None and k.record_size == 1000
    assert device_report(k) == {}
    k.close()


def test_open_layer_nic_gets_a_fresh_device_and_a_fallback_with_faults(
        sock: socket.socket) -> None:
    plain = open_layer(sock, "sim-nic")
    assert plain.device is not None and plain.device.driver.name == "sim-nic"
    assert plain.wire is not None and plain.wire.fallback_device is None
    faulty = open_layer(sock, "sim-nic", device_spec("sim-nic", faults="redirect=0.5,seed=1"))
    assert faulty.device is not None and faulty.device is not plain.device
    assert faulty.wire is not None and faulty.wire.fallback_device is not None
    assert faulty.wire.fallback_device.name == "sim-nic1"
    # Before TLS_TX the layer reports its configuration as Linux does.
    assert layer_offload(faulty) == "none"


def test_open_layer_refusals(sock: socket.socket) -> None:
    with pytest.raises(ValueError, match="pyOpenSSL"):
        open_layer(sock, "none")
    with pytest.raises(ValueError, match="device spec"):
        open_layer(sock, "sim-nic", DeviceSpec("other-nic"))
    with pytest.raises(LookupError, match="no driver named 'no-such-nic'"):
        open_layer(sock, "no-such-nic")
