"""``--offload MODE``: the one vocabulary for where a connection's records are made.

Every command that moves data (``send``, ``serve``, ``bench``) and the
library behind them say *offload* for this choice, with these values:

``auto``
    the kernel's kTLS when the host has it, else ``sw``; a suite neither can
    carry stays in pyOpenSSL (with a warning).
``sw``
    the record layer in this process (``offload.KTLSSocket``, software).
``kernel``
    the Linux kernel (``setsockopt(SOL_TLS, ...)`` on the real socket).
``none``
    pyOpenSSL keeps the connection (no handoff at all).
``<driver>``
    any NIC driver plug-in (``sim-nic`` built in): TX framed by the layer
    and encrypted by the simulated NIC behind the wire model (or, with
    ``--wire netns``, by the NIC process under the kernel's TCP); on either
    wire RX goes through the same NIC too when its driver offloads RX (it
    decrypts, the layer checks its marks: ``offload.tls_device_rx``),
    resynced the way ``--rx-resync`` says.

This module is also the one place that turns a mode into a record layer
(:func:`open_layer`) and reads back what the layer chose
(:func:`layer_offload`, :func:`device_report`, from the socket's typed
``device_state()``), so the socket layer's constructor and its device
plumbing (the ``TxPath`` it is given) are named here and nowhere else in
``tlsctl``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from offload.netdev import load_drivers
from offload.uapi import TLS_MAX_PAYLOAD_SIZE

if TYPE_CHECKING:  # the record layer loads when a connection needs it, not for --help
    from offload.ktls_socket import Backend, KTLSSocket
    from offload.netdev import NetDevice
    from offload.netwire.txpath import NetTxPath
    from offload.rxwire import RxWire
    from offload.wiremodel import FaultSpec, TxPipeline

__all__ = [
    "BASE_OFFLOADS",
    "RX_RESYNC",
    "WIRES",
    "DeviceSpec",
    "Offload",
    "OffloadOptionError",
    "Wire",
    "device_report",
    "device_spec",
    "exact_reads",
    "is_nic",
    "layer_offload",
    "needs_layer",
    "nic_drivers",
    "nic_path",
    "nic_rx_path",
    "offload_choices",
    "open_layer",
    "receiver_offload",
    "unavailable_reason",
]

Offload: TypeAlias = str
"""``auto``, ``sw``, ``kernel``, ``none`` or a NIC driver name (``sim-nic``)."""

Wire = Literal["model", "netns"]
"""``--wire``: the in-process wire model (the default) or the real wire
(two network namespaces and the NIC in its own process)."""
WIRES: tuple[Wire, ...] = ("model", "netns")

BASE_OFFLOADS: tuple[Offload, ...] = ("auto", "sw", "kernel", "none")
"""The modes that are not a NIC driver."""

# The layer's backend for each mode that uses it without a NIC; a NIC mode
# uses _NIC_BACKEND with a device on its TX path.
_BACKENDS: dict[Offload, Backend] = {"auto": "auto", "sw": "sw", "kernel": "kernel"}
_NIC_BACKEND: Backend = "sw"


RX_RESYNC: dict[str, str] = {
    "driver": "DRIVER_REQ",
    "core": "CORE_NEXT_HINT",
    "async": "DRIVER_REQ_ASYNC",
}
"""``--rx-resync`` values and the ``offload.netdev.RxSyncType`` each names."""


class OffloadOptionError(ValueError):
    """An offload setting that cannot work; ``option`` names the option at
    fault when one value is wrong (``--faults``), None when the combination is."""

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


def nic_drivers() -> list[str]:
    """Every NIC driver plug-in that loads (``offload.drivers`` entry points)."""
    drivers, _errors = load_drivers()
    return sorted(drivers)


def offload_choices() -> list[str]:
    """The fixed modes plus every NIC driver: what ``--offload`` accepts."""
    return [*BASE_OFFLOADS, *nic_drivers()]


def is_nic(offload: Offload) -> bool:
    """Does ``offload`` name a NIC driver (TX through a simulated device)?"""
    return offload not in BASE_OFFLOADS


def needs_layer(offload: Offload) -> bool:
    """Must the record layer take the connection?  ``auto`` and ``none`` may
    leave it in pyOpenSSL; every other mode asked for the layer explicitly,
    so the handshake offers only the suites the layer carries."""
    return offload not in ("auto", "none")


def receiver_offload(offload: Offload) -> Offload:
    """The mode of a built-in receiver for a sender in ``offload``: the
    receiving side of a NIC mode is ``sw`` (the sender's NIC is the one
    being measured; ``serve --offload sim-nic`` offloads its own RX)."""
    return "sw" if is_nic(offload) else offload


def _kernel_ktls() -> bool:
    from offload.kernel import kernel_has_ktls  # cached there: one probe per process

    return kernel_has_ktls()[0]


def unavailable_reason(offload: Offload) -> str | None:
    """Why ``offload`` cannot work on this host, or None: for ``kernel``, the
    probe of ``TCP_ULP "tls"`` on a loopback pair (once per process,
    :func:`offload.kernel.kernel_has_ktls`).  The commands call this at
    start-up so ``--offload kernel`` on a host without kTLS is refused before
    any connection, instead of after a handshake the kernel then cannot
    take.  (``tlsctl doctor`` asks the longer questions: why, and the fix.)"""
    if offload != "kernel":
        return None
    from offload.kernel import kernel_has_ktls

    ok, why = kernel_has_ktls()
    if ok:
        return None
    return f"--offload kernel: no kTLS on this host: {why}; use --offload sw or auto"


def exact_reads(offload: Offload) -> bool:
    """Should the handshake avoid reading past its last record?

    Yes when the kernel may take RX: bytes already read cannot be handed
    back to it (the software layer takes them through ``inject_rx``).
    """
    return offload == "kernel" or (offload == "auto" and _kernel_ktls())


@dataclass(frozen=True)
class DeviceSpec:
    """How to build the NIC path of a ``--offload <driver>`` connection.

    ``faults``: seeded wire faults (reorder, split, ...); with them a second
    device without the context stands by for redirected segments.
    ``mss``: the virtual TCP segment size (default: one TSO segment).
    ``control``: the control socket of a real wire's NIC process
    (``--wire netns``, :mod:`tlsctl.realwire`): TX then goes into the
    kernel's TCP through ``offload.netwire.txpath.NetTxPath`` and the NIC
    process encrypts, and RX comes from the kernel's TCP through
    ``offload.netwire.rxpath.NetRxPath`` with the NIC process's marks,
    instead of the in-process wire model (``faults`` and ``mss`` are the
    model's; the real wire's faults are its NIC's).
    """

    driver: str
    faults: FaultSpec | None = None
    mss: int | None = None
    control: str | None = None
    rx_resync: str = "driver"
    """How the NIC's RX context gets back in sync (a key of ``RX_RESYNC``)."""


def device_spec(
    offload: Offload,
    *,
    faults: str | None = None,
    mss: int | None = None,
    key_update_every: int | None = None,
    wire: Wire = "model",
    rx_resync: str | None = None,
) -> DeviceSpec | None:
    """The NIC settings for ``offload`` (None for a mode without a NIC).

    Refused here, before any connection (``send``, ``serve`` and ``bench``
    all call this at start-up): ``faults``/``mss`` without a NIC, a fault
    spec that does not parse, and ``key_update_every`` with a NIC whose
    driver cannot rekey a device context (no ``dev_rekey``: upstream
    device offload has none), where a transfer would fail right after its
    first KeyUpdate went out.  sim-nic rekeys (``offload.drivers.simnic``).

    ``wire="netns"`` (the real wire): the faults are the real wire's
    (``offload.netwire.faults.WireFaults``: a kind that means nothing on
    real frames is refused naming ``--faults``), they act on every frame
    whatever the offload, and ``mss`` is refused: the kernel segments.
    The spec returned has no ``control`` yet: the wire is built when the
    command runs (:mod:`tlsctl.realwire`).
    """
    if rx_resync is not None and rx_resync not in RX_RESYNC:
        raise OffloadOptionError(
            f"--rx-resync must be one of {', '.join(RX_RESYNC)}", option="--rx-resync"
        )
    if rx_resync and not is_nic(offload):
        raise OffloadOptionError(
            "--rx-resync needs a NIC offload (--offload sim-nic)", option="--rx-resync"
        )
    if wire == "netns":
        netns_spec = _netns_device_spec(offload, faults, mss, key_update_every)
        if netns_spec is None:
            return None
        return replace(netns_spec, rx_resync=rx_resync or "driver")
    if not is_nic(offload):
        if faults or mss:
            raise OffloadOptionError("--faults and --mss need a NIC offload (--offload sim-nic)")
        return None
    _check_rekey(offload, key_update_every)
    try:
        from offload.wiremodel import FaultSpec

        spec = FaultSpec.parse(faults) if faults else None
    except ValueError as exc:
        raise OffloadOptionError(str(exc), option="--faults") from None
    return DeviceSpec(offload, faults=spec, mss=mss, rx_resync=rx_resync or "driver")


def _netns_device_spec(
    offload: Offload, faults: str | None, mss: int | None, key_update_every: int | None
) -> DeviceSpec | None:
    if mss:
        raise OffloadOptionError(
            "--mss means nothing with --wire netns: the kernel's TCP segments", option="--mss"
        )
    if faults:
        from offload.netwire.faults import WireFaults

        try:
            WireFaults.parse(faults)
        except ValueError as exc:
            raise OffloadOptionError(str(exc), option="--faults") from None
    if not is_nic(offload):
        return None
    _check_rekey(offload, key_update_every)
    return DeviceSpec(offload)


def _check_rekey(offload: Offload, key_update_every: int | None) -> None:
    """``--key-update-every`` with a NIC whose driver has no ``dev_rekey``
    (a driver that does not load counts as none; ``open_layer`` says why)."""
    if not key_update_every:
        return
    from offload.netdev import create_device

    try:
        rekeys = callable(getattr(create_device(offload).driver, "dev_rekey", None))
    except LookupError:
        rekeys = False
    if not rekeys:
        raise OffloadOptionError(
            f"--key-update-every cannot be used with --offload {offload}: its driver cannot "
            "rekey a device TX context (use --offload sw or kernel)"
        )


def open_layer(
    sock: socket.socket,
    offload: Offload,
    device: DeviceSpec | None = None,
    *,
    record_size: int = TLS_MAX_PAYLOAD_SIZE,
) -> KTLSSocket:
    """The record layer for ``offload`` on ``sock``, keys not yet installed.

    A NIC mode gets a fresh device per connection (its own counters) and,
    with faults, a second one without the context for redirects.
    ``LookupError`` when the driver does not load; ``ValueError`` for
    ``none`` (no layer) or a spec for another driver.
    """
    if offload == "none":
        raise ValueError("--offload none keeps the connection in pyOpenSSL: no layer")
    backend = _BACKENDS.get(offload)
    if backend is not None:
        from offload.ktls_socket import KTLSSocket

        return KTLSSocket(sock, backend=backend, record_size=record_size)
    spec = device or DeviceSpec(offload)
    if spec.driver != offload:
        raise ValueError(f"a {spec.driver} device spec for --offload {offload}")
    from offload.ktls_socket import KTLSSocket

    if spec.control is not None:
        from offload.netdev import RxSyncType
        from offload.netwire.rxpath import NetRxPath
        from offload.netwire.txpath import NetTxPath

        path: TxPipeline | NetTxPath = NetTxPath(sock, spec.control)
        sync = RxSyncType[RX_RESYNC[spec.rx_resync]]
        return KTLSSocket(
            sock,
            backend=_NIC_BACKEND,
            txpath=path,
            rxpath=NetRxPath(sock, spec.control, sync),
            record_size=record_size,
        )
    tx = nic_path(spec)
    return KTLSSocket(
        sock,
        backend=_NIC_BACKEND,
        txpath=tx,
        rxpath=nic_rx_path(spec, tx.device),
        record_size=record_size,
    )


def nic_rx_path(spec: DeviceSpec, device: NetDevice) -> RxWire | None:
    """The RX path of a NIC mode on the wire model: received bytes through
    the same device (one set of ethtool counters for both directions) with
    the spec's faults and segment size; None when the driver offloads TX
    only (RX is then the software layer's, as before)."""
    from offload.netdev import RxDriver, RxSyncType
    from offload.rxwire import RxWire

    if not isinstance(device.driver, RxDriver):
        return None
    return RxWire(
        device, mss=spec.mss, faults=spec.faults, sync_type=RxSyncType[RX_RESYNC[spec.rx_resync]]
    )


def nic_path(spec: DeviceSpec) -> TxPipeline:
    """The TX path of a NIC mode: a fresh device (its own counters) behind
    the wire model, and with faults a second device without the context
    for redirected segments.  ``LookupError`` when the driver does not load.

    Not for a real wire's spec (``control``): its TX path is bound to the
    connection's socket, so :func:`open_layer` makes it (ValueError here)."""
    if spec.control is not None:
        raise ValueError("a real wire's TX path needs its socket: use open_layer")
    from offload.netdev import create_device
    from offload.wiremodel import TxPipeline

    fallback = create_device(spec.driver, f"{spec.driver}1") if spec.faults is not None else None
    return TxPipeline(
        create_device(spec.driver), mss=spec.mss, faults=spec.faults, fallback_device=fallback
    )


def layer_offload(k: KTLSSocket) -> Offload:
    """What the layer actually uses for TX: ``sw``, ``kernel``, or the NIC
    driver's name (``sw`` when the NIC declined the context); ``none``
    before TLS_TX."""
    dev = k.device_state()
    return dev.report.driver if dev is not None else str(k.tx_conf)


def device_report(k: KTLSSocket) -> dict[str, Any]:
    """What the NIC did for this connection: counters (ethtool names, zeros
    left out), device CPU time, and the faults that made it take slow paths.
    Empty without a NIC (or when it declined the context)."""
    rx = k.rx_device_report()
    dev = k.device_state()
    if dev is None:
        return {"rx_offload": rx} if rx else {}
    r = dev.report
    out: dict[str, Any] = {
        "device_cpu_seconds": round(r.device_seconds, 6),
        "device_counters": {n: v for n, v in r.stats.items() if v},
    }
    if r.faults:
        out["faults"] = r.faults
        out["faults_injected"] = {n: v for n, v in r.faults_injected.items() if v}
    if r.fallback_stats is not None:
        out["fallback_device_counters"] = {n: v for n, v in r.fallback_stats.items() if v}
    if rx:
        out["rx_offload"] = rx
    return out
