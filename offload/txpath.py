"""What lies between the record layer's TX and the TCP socket: a TX path.

The layer seals (software) or frames (device) records into buffers; a TX
path turns each buffer into the chunks TCP sends, in stream order.  Data
flows one way: the layer hands a buffer down (``transmit``), gets back the
chunks to write, writes them, and tells the path which chunks the socket
took (``written``, so it can reuse the memory).  Nothing below calls back
up into the socket.

* :class:`DirectPath` - no device: a sealed buffer is itself what TCP sends
  (TLS_CONF SW, or plaintext before TLS_TX).
* A device path (``offload.wiremodel.TxPipeline``, the test bench) offers
  the TX context to its NIC at ``setsockopt(TLS_TX)`` (``offload``: Linux's
  ``tls_set_device_offload``) and runs every buffer through its segmenter,
  wire and driver.  The socket never imports it: the caller builds one and
  passes it in (``KTLSSocket(sock, txpath=TxPipeline(device))``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

from offload.batch import RecordBuf
from offload.filechunk import FileChunk
from offload.state import DeviceReport
from offload.tls_device import DeviceTx
from offload.tls_sw import SwTx
from offload.uapi import CryptoInfo

Chunk: TypeAlias = bytes | bytearray | memoryview
"""Bytes for the socket: a sealed buffer, a TX ring slot, a framing buffer."""

TxChunk: TypeAlias = Chunk | FileChunk
"""What a TX path hands the socket: bytes, or bytes that also lie in a file
(``FileChunk``: the write queue sends them from the file's pages instead of
copying them, see ``offload.filechunk``)."""


class TxPath(Protocol):
    """Where framed records go on their way to TCP."""

    def offload(self, info: CryptoInfo, record_size: int) -> DeviceTx | None:
        """Offer the TX context to the device (``tls_dev_add``): the device
        context that frames for it, ``None`` without a device.  Raises
        ``offload.netdev.OffloadRefused`` when the driver declines."""
        ...

    def transmit(self, buf: RecordBuf) -> Sequence[TxChunk]:
        """A framed (or sealed, or plain) buffer enters the path: the chunks
        now ready for the socket, in stream order (maybe none yet)."""
        ...

    def drain(self) -> Sequence[TxChunk]:
        """Everything the path still holds, ready for the socket."""
        ...

    def written(self, buf: RecordBuf) -> None:
        """The socket took a whole chunk whose memory is ``buf`` (the
        chunk's underlying buffer): it may be reused."""
        ...

    def report(self) -> DeviceReport | None:
        """The device's counters and the faults injected (``None``: no device)."""
        ...


class DirectPath:
    """No device: every buffer goes to TCP as it is.

    Full batch buffers are handed back to the software TX context once
    written (``SwTx.recycle``): allocating and zeroing a fresh 1 MiB buffer
    per batch costs as much as copying it.
    """

    def __init__(self) -> None:
        self.tx: SwTx | None = None

    def offload(self, info: CryptoInfo, record_size: int) -> DeviceTx | None:
        return None

    def transmit(self, buf: RecordBuf) -> Sequence[Chunk]:
        return (buf,)

    def drain(self) -> Sequence[Chunk]:
        return ()

    def written(self, buf: RecordBuf) -> None:
        if self.tx is not None:
            self.tx.recycle(buf)

    def report(self) -> DeviceReport | None:
        return None


__all__ = ["Chunk", "DirectPath", "TxChunk", "TxPath"]
