"""The kTLS socket's state as types: configurations, the RX state, a snapshot.

* :class:`TlsConf` is Linux's ``TLS_CONF_*`` per direction (what
  ``TLS_INFO_TXCONF``/``RXCONF`` report): BASE before keys are installed,
  SW for the record layer in this process, DEVICE for records a NIC
  encrypts, KERNEL for the host's kTLS.  Its values are the strings
  ``describe()`` has always shown (``none``/``sw``/``device``/``kernel``).
* :class:`RxState` is what the next read meets when no record is queued.
* :class:`SocketState` is a frozen snapshot of one socket - what ``ss -i``,
  ``/proc/net/tls_stat`` and ``ethtool -S`` would show - and
  :meth:`SocketState.to_json` its JSON view (``KTLSSocket.describe()``).
  Key material is in it only when the caller asked (``show_secrets``): a
  redacted snapshot never holds the keys at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

from offload.uapi import TLS_1_3_VERSION, CryptoInfo

REDACTED = "redacted"


class TlsConf(StrEnum):
    """Per-direction configuration (Linux: ``enum { TLS_BASE, TLS_SW, TLS_HW,
    ...}`` in ``tls_main.c``; ``TLS_HW`` is called DEVICE here)."""

    BASE = "none"
    SW = "sw"
    DEVICE = "device"
    KERNEL = "kernel"


class RxState(Enum):
    """What a read meets once the records already decrypted are delivered.

    Linux keeps these as ``sk_err``, ``tls_strp`` stopped and
    ``key_update_pending``; the order below is the order a read checks them.
    """

    OK = "ok"
    """Records are read and decrypted as they come."""
    ERROR = "error"
    """A bad tag: every later read fails with the same errno (sticky)."""
    ABORTED = "aborted"
    """A framing error or the sequence number wrapped (``tls_err_abort``):
    reported by the next read, once; then DEAD."""
    DEAD = "dead"
    """After an abort was reported: no more data, only EOF or EAGAIN."""
    PAUSED = "paused"
    """A TLS 1.3 KeyUpdate was read: EKEYEXPIRED until a new TLS_RX key."""
    EOF = "eof"
    """The peer closed the TCP stream and every whole record was read."""


@dataclass(frozen=True)
class CryptoState:
    """One direction's live crypto_info (the getsockopt view).

    ``key``, ``iv``, ``salt`` and ``crypto_info`` are hex, or ``"redacted"``
    when the snapshot was taken without ``show_secrets``.
    """

    version: str
    cipher: str
    rec_seq: int
    key: str = REDACTED
    iv: str = REDACTED
    salt: str = REDACTED
    crypto_info: str = REDACTED

    @classmethod
    def of(cls, info: CryptoInfo, show_secrets: bool) -> CryptoState:
        version = "1.3" if info.version == TLS_1_3_VERSION else "1.2"
        if not show_secrets:
            return cls(version, info.cipher.name, info.seq)
        return cls(
            version,
            info.cipher.name,
            info.seq,
            key=info.key.hex(),
            iv=info.iv.hex(),
            salt=info.salt.hex(),
            crypto_info=info.pack().hex(),
        )


@dataclass(frozen=True)
class DeviceReport:
    """What a TX path's NIC did: its counters (ethtool names), the CPU time
    spent in its driver (what hardware would do), the faults injected on
    the wire and the fallback device's counters (``None`` without one)."""

    name: str
    driver: str
    stats: dict[str, int]
    device_seconds: float = 0.0
    faults: str = ""
    faults_injected: dict[str, int] = field(default_factory=dict)
    fallback_stats: dict[str, int] | None = None


@dataclass(frozen=True)
class DeviceState:
    """The device TX context (TLS_CONF DEVICE) and its NIC's report."""

    expected_tcp_seq: int | None
    records_in_flight: int
    start_marker_tcp_seq: int
    report: DeviceReport

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "name": r.name,
            "driver": r.driver,
            "expected_tcp_seq": self.expected_tcp_seq,
            "records_in_flight": self.records_in_flight,
            "start_marker_tcp_seq": self.start_marker_tcp_seq,
            "stats": dict(r.stats),
            "device_cpu_seconds": r.device_seconds,
            "faults": r.faults,
            "faults_injected": dict(r.faults_injected),
        }


@dataclass(frozen=True)
class SocketState:
    """A snapshot of one kTLS socket (``KTLSSocket.state()``)."""

    fd: int
    peer: str
    backend: str | None
    tx_conf: TlsConf
    rx_conf: TlsConf
    rx_state: RxState
    bytes_sent: int
    bytes_received: int
    pending_tx_bytes: int
    stats: dict[str, int]
    tx: CryptoState | None = None
    rx: CryptoState | None = None
    device: DeviceState | None = None
    offload_refused: str = ""
    rx_offload: dict[str, int | str] | None = None
    """RX conf DEVICE: the resync scheme and the records the NIC decrypted,
    the host repaired or software decrypted (``KTLSSocket.rx_device_report``)."""

    def to_json(self) -> dict[str, Any]:
        """The ``describe()`` dictionary: the keys tlsctl's control socket
        and ``inspect-context --json`` have always carried."""
        out: dict[str, Any] = {
            "fd": self.fd,
            "peer": self.peer,
            "backend": self.backend,
            "tx_conf": str(self.tx_conf),
            "rx_conf": str(self.rx_conf),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "pending_tx_bytes": self.pending_tx_bytes,
            "stats": dict(self.stats),
        }
        for name, crypto in (("tx", self.tx), ("rx", self.rx)):
            if crypto is None:
                continue
            out["version"] = crypto.version
            out["cipher"] = crypto.cipher
            out[f"{name}_rec_seq"] = crypto.rec_seq
            out[f"{name}_crypto"] = {"iv": crypto.iv, "salt": crypto.salt, "key": crypto.key}
            out[f"{name}_crypto_info"] = crypto.crypto_info
        if self.device is not None:
            out["device"] = self.device.to_json()
        if self.offload_refused:
            out["offload_refused"] = self.offload_refused
        if self.rx_offload is not None:
            out["rx_offload"] = dict(self.rx_offload)
        return out


__all__ = [
    "REDACTED",
    "CryptoState",
    "DeviceReport",
    "DeviceState",
    "RxState",
    "SocketState",
    "TlsConf",
]
