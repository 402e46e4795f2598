"""The operations a kTLS socket's backend provides (Linux: its ``proto`` ops).

When the ``tls`` ULP attaches, Linux picks the socket's protocol operations
once (``update_sk_prot``): the base ops pass through, the SW ops run the
record layer, the device ops hand records to a NIC.  ``KTLSSocket`` does
the same: it holds one :class:`TlsOps` and forwards every call to it, so no
method of the socket asks which backend it runs on.

* ``offload.sw_ops.SwOps`` - the record layer in this process (TLS_CONF
  BASE/SW/DEVICE per direction); also serves the socket before the ULP is
  attached, when every byte passes through in the clear.
* ``offload.kernel.KernelOps`` - the host kernel's kTLS: every call goes to
  the real socket (TLS_CONF KERNEL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypeAlias

from offload.record import Buffer
from offload.state import DeviceState, RxState, TlsConf
from offload.uapi import CryptoInfo

AncData: TypeAlias = list[tuple[int, int, bytes]]
"""``recvmsg`` ancillary data: (level, type, data) triples."""


class TlsOps(Protocol):
    """One backend behind ``KTLSSocket``; SOL_TLS options arrive here only
    once the ULP is attached."""

    @property
    def name(self) -> Literal["sw", "kernel"]: ...
    @property
    def tx_conf(self) -> TlsConf: ...
    @property
    def rx_conf(self) -> TlsConf: ...
    @property
    def rx_state(self) -> RxState: ...
    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_received(self) -> int: ...
    @property
    def pending_tx_bytes(self) -> int: ...
    @property
    def offload_refused(self) -> str: ...
    @property
    def rx_truncated(self) -> bool: ...

    def setsockopt(self, optname: int, value: int | Buffer | None, optlen: int | None) -> None:
        """``setsockopt(SOL_TLS, optname, ...)``."""
        ...

    def getsockopt(self, optname: int, buflen: int | None) -> int | bytes:
        """``getsockopt(SOL_TLS, optname, ...)``."""
        ...

    def sendmsg(
        self, bufs: Sequence[memoryview], ancdata: Sequence[tuple[int, int, Buffer]], flags: int
    ) -> int: ...

    def sendfile(self, file: Any, offset: int, count: int | None) -> int: ...

    def recvmsg(
        self, bufsize: int, ancbufsize: int, flags: int
    ) -> tuple[bytes, AncData, int, Any]: ...

    def recvmsg_into(
        self, views: list[memoryview], ancbufsize: int, flags: int
    ) -> tuple[int, AncData, int, Any]: ...

    def flush(self, timeout: float | None) -> bool: ...
    def shutdown(self, how: int) -> None: ...
    def close(self) -> None: ...

    def live_info(self, tx: bool) -> CryptoInfo | None:
        """The direction's crypto_info with the live rec_seq and iv, if the
        layer holds it (``None`` before the key is set, or in the kernel);
        for snapshots: it never waits for a blocked reader or writer."""
        ...

    def device_state(self) -> DeviceState | None: ...
    def rx_device_report(self) -> dict[str, int | str] | None:
        """What the RX device context did (RX conf DEVICE only)."""
        ...

    def device_seconds(self) -> float: ...
    def inject_rx(self, ciphertext: Buffer) -> None: ...
    def inject_rx_plaintext(self, data: Buffer, content_type: int) -> None: ...


__all__ = ["AncData", "TlsOps"]
