"""Network devices and the TLS-offload driver API (``struct tlsdev_ops``).

A :class:`NetDevice` stands for one NIC.  Its driver gets the same three
calls the kernel makes on a TLS-offload driver, and a transmit hook:

* ``dev_add(direction, crypto_info, start_tcp_seq)`` - a connection's TX
  context is offered to the device (``tls_dev_add``); the driver accepts
  (returns a context handle) or refuses (raises :class:`OffloadRefused`),
  and the layer then falls back to software TX;
* ``dev_del(ctx)`` - the context goes away (``tls_dev_del``);
* ``dev_resync(ctx, tcp_seq, record_sn)`` - the kernel tells the device
  which record starts at ``tcp_seq`` (``tls_dev_resync``);
* ``xmit(ctx, segment, lookup, out)`` - a TCP segment with plaintext
  records leaves through this device: the driver writes the bytes that go
  on the wire into ``out`` (its TX ring slot, as long as the segment) and
  returns False to drop the packet (``segment`` is valid during the call
  only: the wire may reuse the descriptor, as a TX ring does); ``lookup`` is the kernel's
  ``tls_get_record``: the only way a driver may see record bytes other than
  the segment's own, for the out-of-order slow path.

A driver that sets ``xmit_in_place = True`` may also be handed ``out`` that
*is* ``segment.payload`` (the same memoryview object, writable): the
segment's bytes are replaced in place, as the issue's "encrypt the payload in
place" says.  The wire does this only on its fault-free path, where every
segment reaches the NIC in order and its records are acknowledged before
anybody could look them up again; a driver that reads record bytes behind
the segment on its in-order path must leave the flag unset.

On that same path the wire hands an in-place driver a whole run of
segments at once, as the kernel's ``xmit_more`` batches a TX ring before
one doorbell: ``xmit_burst(ctx, seq, data, mss, lookup)``, optional, must
do exactly what :func:`xmit_each` does with ``xmit`` - each ``mss``-sized
piece of ``data`` is one segment, sent in place - and only saves the
per-packet call (and the per-packet CPU metering around it).

Drivers are found through the ``offload.drivers`` entry-point group; the
built-in ones are registered there exactly like third-party plug-ins.  A
plug-in that fails to load is reported by :func:`load_drivers` and skipped,
never fatal.

Receive offload (``TLS_OFFLOAD_CTX_DIR_RX``, mlx5 on ConnectX-6 Dx) uses
the same three ops and one receive hook:

* ``dev_add(TLS_OFFLOAD_CTX_DIR_RX, crypto_info, start_tcp_seq)`` - the
  device should decrypt from the record starting at ``start_tcp_seq``,
  numbered ``crypto_info``'s rec_seq (Linux passes ``copied_seq``);
* ``rx(ctx, segment, host)`` - a received TCP segment goes through the NIC:
  the driver either decrypts and authenticates *every* record byte in it,
  writing the plaintext over ``segment.payload``, and returns True (the
  skb's ``decrypted`` mark), or leaves the payload exactly as it came off
  the wire and returns False - tls-offload.rst: "either all records in the
  packet had been handled successfully and authenticated or the packet has
  to be passed to the host's stack as it was on the wire".  ``host`` is
  the stack side a driver may call to get back in sync
  (:class:`RxResyncHost`: ``tls_offload_rx_resync_request`` and mlx5's
  ``..._async_request_start/_end``);
* ``dev_resync(ctx, tcp_seq, record_sn)`` on an RX context - the stack
  says which record starts at ``tcp_seq`` (``tls_dev_resync`` with
  ``TLS_OFFLOAD_CTX_DIR_RX``: the answer to a request, or a
  CORE_NEXT_HINT hint); ``rx_sync_type(ctx)`` says which of the three
  resync schemes the driver chose for the context (Linux: the driver sets
  ``tls_offload_ctx_rx->resync_type`` in ``tls_dev_add``).

The context handle knows its direction, so ``dev_del``/``dev_resync``
carry no ``dir`` argument as Linux's do.

There is no Linux equivalent of loading drivers by name from Python, of
course: that part is this package's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from offload.stats import Counters
from offload.uapi import CryptoInfo

TLS_OFFLOAD_CTX_DIR_RX = 0
TLS_OFFLOAD_CTX_DIR_TX = 1

DRIVER_GROUP = "offload.drivers"

DEVICE_STAT_NAMES: tuple[str, ...] = (
    "tx_tls_encrypted_packets",
    "tx_tls_encrypted_bytes",
    "tx_tls_ctx",
    "tx_tls_del",
    "tx_tls_ooo",
    "tx_tls_dump_packets",
    "tx_tls_dump_bytes",
    "tx_tls_resync_bytes",
    "tx_tls_skip_no_sync_data",
    "tx_tls_drop_no_sync_data",
    "tx_tls_drop_bypass_req",
    # Not mlx5 names: what this package's software fallback and faults did.
    "tx_tls_sw_fallback_packets",
    "tx_tls_sw_fallback_bytes",
    # Receive offload (mlx5 names; what each means here: offload.drivers.simnic_rx).
    "rx_tls_decrypted_packets",
    "rx_tls_decrypted_bytes",
    "rx_tls_ctx",
    "rx_tls_del",
    "rx_tls_err",
    "rx_tls_resync_req_pkt",
    "rx_tls_resync_req_start",
    "rx_tls_resync_req_end",
    "rx_tls_resync_req_skip",
    "rx_tls_resync_res_ok",
    "rx_tls_resync_res_retry",
    "rx_tls_resync_res_skip",
)
RX_STAT_NAMES: tuple[str, ...] = tuple(n for n in DEVICE_STAT_NAMES if n.startswith("rx_"))


class RxSyncType(IntEnum):
    """``enum tls_offload_sync_type`` (include/net/tls.h), values as in Linux."""

    DRIVER_REQ = 0
    """The NIC scans for a header and asks the stack to confirm its record number."""
    CORE_NEXT_HINT = 1
    """The stack tells the NIC where the next record starts, after two
    fully encrypted records, backing off up to every 128."""
    DRIVER_REQ_ASYNC = 2
    """mlx5: the request is opened (start) and closed (end) asynchronously;
    the stack logs the headers it parses in between."""


class OffloadRefused(Exception):
    """A driver declines a context (cipher, version, capacity ...)."""


class DeviceStats(Counters):
    """ethtool -S style counters (mlx5 names), thread-safe."""

    names = DEVICE_STAT_NAMES
    kind = "device"


@dataclass(frozen=True)
class RecordInfo:
    """What ``tls_get_record`` gives a driver: the record holding a byte.

    ``data`` is the record as the layer framed it (header, explicit nonce,
    plaintext, inner type, tag space), read-only; ``start_seq`` its first
    TCP sequence number; ``record_sn`` its TLS record sequence number.
    """

    start_seq: int
    record_sn: int
    data: memoryview


class RecordLookup(Protocol):
    """The layer side a driver may call while transmitting."""

    def get_record(self, tcp_seq: int) -> RecordInfo | None:
        """The record holding ``tcp_seq``; None once it was acknowledged and freed."""

    def before_start_marker(self, tcp_seq: int, length: int) -> bool:
        """True when the whole range was sent before offload began (plain data)."""


class RecordReader(Protocol):
    """A ``RecordLookup`` a driver may also read ahead of the frame in hand.

    Not a Linux interface: no upstream driver reads past the packet it
    transmits.  A NIC can, though (it DMA-reads host memory anyway), and
    the real wire's record store offers it (``offload.netwire.recstore``)
    so sim-nic seals a record cut by a frame's edge in one AEAD call and
    carries the ciphertext of its tail to the next frame, instead of a
    streaming AEAD context per frame.  Drivers test for it (``getattr``);
    a lookup without it (the in-process wire's ``DeviceTx``) keeps the
    streaming path.
    """

    def read_record(self, tcp_seq: int, length: int, use: Callable[[memoryview], bool]) -> bool:
        """``use`` the record starting at ``tcp_seq`` (``length`` bytes, as
        framed) in place; True when it was held throughout and ``use``
        returned True (anything else: throw ``use``'s work away)."""


@dataclass
class Segment:
    """One TCP segment: 32-bit sequence number and payload (plaintext records)."""

    seq: int
    payload: memoryview

    def __len__(self) -> int:
        return len(self.payload)


class RxResyncHost(Protocol):
    """What an RX driver may call on the stack (include/net/tls.h helpers).

    Sequence numbers are those of the record's first byte (Linux's DRIVER_REQ
    request carries the header's last byte; ``tls_device_rx_resync_new_rec``
    adds ``TLS_HEADER_SIZE - 1`` to compare: the same information)."""

    def resync_request(self, tcp_seq: int) -> None:
        """``tls_offload_rx_resync_request``: a record seems to start at ``tcp_seq``."""

    def resync_async_start(self, tcp_seq: int, length: int) -> None:
        """``tls_offload_rx_resync_async_request_start``: a header lies in
        ``[tcp_seq, tcp_seq + length)``; log the records parsed there."""

    def resync_async_end(self, tcp_seq: int) -> None:
        """``tls_offload_rx_resync_async_request_end``: it is the one at ``tcp_seq``."""


@runtime_checkable
class Driver(Protocol):
    """The ops a TLS-offload driver implements (tlsdev_ops + ndo_start_xmit)."""

    name: str

    def dev_add(self, direction: int, info: CryptoInfo, start_tcp_seq: int) -> object:
        """Accept a context (return a handle) or raise OffloadRefused."""

    def dev_del(self, ctx: object) -> None: ...

    def dev_resync(self, ctx: object, tcp_seq: int, record_sn: int) -> None: ...

    def xmit(self, ctx: object, segment: Segment, lookup: RecordLookup, out: memoryview) -> bool:
        """Write the segment's wire bytes into ``out``; False drops the packet."""


@runtime_checkable
class RxDriver(Protocol):
    """A driver that also offloads RX (``dev_add`` accepts TLS_OFFLOAD_CTX_DIR_RX)."""

    def rx(self, ctx: object, segment: Segment, host: RxResyncHost) -> bool:
        """Decrypt the segment in place and return True, or leave it as it
        came off the wire and return False."""

    def rx_sync_type(self, ctx: object) -> RxSyncType:
        """The resync scheme the driver chose for the context."""


def xmit_each(
    driver: Driver, ctx: object, seq: int, data: memoryview, mss: int, lookup: RecordLookup
) -> int:
    """What ``xmit_burst`` means: ``data`` cut into ``mss``-byte segments from
    TCP sequence number ``seq``, each sent in place through ``xmit``.

    Returns how many bytes went out before the first dropped segment
    (``len(data)`` when none was): that segment and the rest are not sent.
    """
    seg = Segment(seq, data[:0])  # one descriptor, rewritten per packet (a TX ring's)
    xmit = driver.xmit
    for i in range(0, len(data), mss):
        seg.payload = payload = data[i : i + mss]
        seg.seq = (seq + i) & 0xFFFFFFFF
        if not xmit(ctx, seg, lookup, payload):
            return i
    return len(data)


class NetDevice:
    """A NIC: a name, a driver, and its ethtool counters."""

    def __init__(self, name: str, driver: Driver) -> None:
        self.name = name
        self.driver = driver
        self.stats: DeviceStats = getattr(driver, "stats", None) or DeviceStats()
        if getattr(driver, "stats", None) is None:
            driver.stats = self.stats  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<NetDevice {self.name} driver={self.driver.name}>"


@dataclass(frozen=True)
class DriverLoadError:
    """A plug-in that could not be loaded: reported, then skipped."""

    name: str
    error: str


def load_drivers() -> tuple[dict[str, Callable[[], Driver]], list[DriverLoadError]]:
    """Every driver factory in the ``offload.drivers`` group, and load errors."""
    found: dict[str, Callable[[], Driver]] = {}
    errors: list[DriverLoadError] = []
    for ep in entry_points(group=DRIVER_GROUP):
        try:
            factory = ep.load()
        except Exception as exc:  # a broken plug-in must not take the layer down
            errors.append(DriverLoadError(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        if not callable(factory):
            errors.append(DriverLoadError(ep.name, "entry point is not callable"))
            continue
        found[ep.name] = factory
    return found, errors


def create_device(driver_name: str, dev_name: str | None = None) -> NetDevice:
    """A NetDevice with a fresh instance of the named driver."""
    found, errors = load_drivers()
    if driver_name not in found:
        broken = [e for e in errors if e.name == driver_name]
        if broken:
            raise LookupError(f"driver {driver_name!r} failed to load: {broken[0].error}")
        known = ", ".join(sorted(found)) or "none"
        raise LookupError(f"no driver named {driver_name!r} (available: {known})")
    driver = found[driver_name]()
    return NetDevice(dev_name or f"{driver_name}0", driver)
