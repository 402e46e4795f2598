"""``tlsctl.offloadmode``: the one ``--offload`` vocabulary and the one place
a mode becomes a record layer (send, serve and bench all build it here)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from importlib.metadata import EntryPoint

import pytest

from offload import netdev as netdev_mod
from offload.ktls_socket import KTLSSocket
from offload.uapi import SOL_TCP, SOL_TLS, TCP_ULP, TLS_1_3_VERSION, TLS_TX, CipherType
from offload.wiremodel import FaultSpec
from tests.conftest import random_info
from tlsctl.offloadmode import (
    BASE_OFFLOADS,
    DeviceSpec,
    OffloadOptionError,
    device_report,
    device_spec,
    is_nic,
    layer_offload,
    needs_layer,
    nic_path,
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
    assert "sim-nic" in choices[len(BASE_OFFLOADS) :]
    assert [is_nic(c) for c in ("auto", "sw", "kernel", "none", "sim-nic")] == [
        False,
        False,
        False,
        False,
        True,
    ]


def test_which_modes_need_the_layer_and_what_the_receiver_uses() -> None:
    assert [needs_layer(m) for m in ("auto", "none", "sw", "kernel", "sim-nic")] == [
        False,
        False,
        True,
        True,
        True,
    ]
    # A NIC offloads TX only: the built-in receiver of a NIC sender is sw.
    assert [receiver_offload(m) for m in ("auto", "sw", "kernel", "none", "sim-nic")] == [
        "auto",
        "sw",
        "kernel",
        "none",
        "sw",
    ]


def test_device_spec() -> None:
    assert device_spec("sw") is None and device_spec("auto") is None
    spec = device_spec("sim-nic", faults="reorder=0.5,seed=3", mss=1400)
    assert spec == DeviceSpec("sim-nic", FaultSpec(reorder=0.5, seed=3), 1400)
    assert device_spec("sim-nic") == DeviceSpec("sim-nic")


@pytest.mark.parametrize(
    ("offload", "kw", "option", "text"),
    [
        ("sw", {"faults": "drop=0.1"}, None, "--faults and --mss need a NIC offload"),
        ("kernel", {"mss": 1000}, None, "--faults and --mss need a NIC offload"),
        ("sim-nic", {"faults": "bogus=1"}, "--faults", "unknown fault 'bogus'"),
    ],
)
def test_device_spec_refusals(
    offload: str, kw: dict[str, object], option: str | None, text: str
) -> None:
    with pytest.raises(OffloadOptionError, match=text) as err:
        device_spec(offload, **kw)  # type: ignore[arg-type]
    assert err.value.option == option


def test_key_update_every_with_a_nic(monkeypatch: pytest.MonkeyPatch) -> None:
    """sim-nic rekeys its device context, so ``--key-update-every`` goes with
    it; a driver without ``dev_rekey`` (as every upstream one) is refused
    at start-up, naming both options."""
    assert device_spec("sim-nic", key_update_every=1 << 20) == DeviceSpec("sim-nic")
    group = netdev_mod.DRIVER_GROUP
    plain = EntryPoint("no-rekey-nic", "tests.offload.test_device_rekey:_NoRekey", group)
    monkeypatch.setattr(netdev_mod, "entry_points", lambda group: [plain])
    with pytest.raises(OffloadOptionError, match="cannot rekey a device TX context") as err:
        device_spec("no-rekey-nic", key_update_every=1 << 20)
    assert "--key-update-every" in str(err.value) and "--offload no-rekey-nic" in str(err.value)
    assert device_spec("no-rekey-nic") == DeviceSpec("no-rekey-nic")


def _install_tx(k: KTLSSocket) -> None:
    k.setsockopt(SOL_TCP, TCP_ULP, b"tls")
    k.setsockopt(SOL_TLS, TLS_TX, random_info(TLS_1_3_VERSION, CipherType.AES_GCM_128).pack())


def test_open_layer_sw(sock: socket.socket) -> None:
    k = open_layer(sock, "sw", record_size=1000)
    assert k.device_state() is None and k.record_size == 1000
    assert device_report(k) == {}
    _install_tx(k)  # no device on its path: TX in software
    assert k.backend == "sw" and layer_offload(k) == "sw" and k.device_state() is None
    assert device_report(k) == {}
    k.close()


def test_open_layer_nic_gets_a_fresh_device_and_a_fallback_with_faults(sock: socket.socket) -> None:
    plain = nic_path(DeviceSpec("sim-nic"))
    assert plain.device.driver.name == "sim-nic" and plain.fallback_device is None
    spec = device_spec("sim-nic", faults="redirect=0.5,seed=1")
    assert spec is not None
    faulty = nic_path(spec)
    assert faulty.device is not plain.device
    assert faulty.fallback_device is not None and faulty.fallback_device.name == "sim-nic1"
    k = open_layer(sock, "sim-nic", spec)
    # Before TLS_TX the layer reports its configuration as Linux does.
    assert layer_offload(k) == "none" and k.device_state() is None
    _install_tx(k)  # the NIC takes the context: what the CLI reports
    assert layer_offload(k) == "sim-nic"
    report = device_report(k)
    assert report["faults"] == "redirect=0.5,seed=1"
    assert report["fallback_device_counters"] == {}
    k.close()


def test_open_layer_refusals(sock: socket.socket) -> None:
    with pytest.raises(ValueError, match="pyOpenSSL"):
        open_layer(sock, "none")
    with pytest.raises(ValueError, match="device spec"):
        open_layer(sock, "sim-nic", DeviceSpec("other-nic"))
    with pytest.raises(LookupError, match="no driver named 'no-such-nic'"):
        open_layer(sock, "no-such-nic")
