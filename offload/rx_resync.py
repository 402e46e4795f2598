"""The stack's half of RX device resync (net/tls/tls_device.c), and the record
walk that drives it.

A NIC that lost track of record boundaries gets back in sync one of three
ways (``offload.netdev.RxSyncType``); the stack's part of each is here:

* DRIVER_REQ - the driver asks "does a record start at ``seq``?"
  (``resync_request``); when the stack's parser meets the header of the
  record starting there it answers with that record's number
  (``tls_device_rx_resync_new_rec``).  A request for a sequence number
  where no record starts - the false header - is simply never answered:
  there is no negative confirmation in Linux either.
* DRIVER_REQ_ASYNC (mlx5) - the request is opened with a window
  (``resync_async_start``): record starts the parser meets inside it are
  logged (at most ``ASYNC_LOGMAX``, Linux's ``TLS_DEVICE_RESYNC_ASYNC_LOGMAX``);
  when the driver closes it with the header's sequence number
  (``resync_async_end``) the next record start looks it up in the log (the
  record may have been parsed before the driver knew which header it meant),
  or matches it directly.  Linux logs sequence numbers and counts records
  since (``rcd_delta``); the log here keeps each record's number beside its
  sequence number, which is the same information.
* CORE_NEXT_HINT - the stack counts the records it had to decrypt in
  software (``tls_device_core_ctrl_rx_resync``): after 2 fully encrypted
  records, then 4, 8 ... and every 128 from then on, it tells the NIC where
  the next record starts and its number, right away when nothing of that
  record has arrived yet, else at the next record header whose successor
  has not arrived (``resync_nh_do_now``); a record the NIC decrypted, even
  partly, starts the count over (``resync_nh_reset``).

Record numbers given to the NIC are the *device context's* numbering
(``number_of``): the stack's record index mapped by the context's key
epoch, so a context added after a KeyUpdate numbers from its own rec_seq.
:class:`RecordWalk` is the strparser side: it follows record headers as
in-order bytes arrive (before any read), as ``tls_rx_msg_size`` calls
``tls_device_rx_resync_new_rec`` when a header is parsed.
"""

from __future__ import annotations

from collections.abc import Callable

from offload.framing import HEADER, RECORD_VERSION
from offload.netdev import RxSyncType
from offload.tcpseq import seq_after, seq_before
from offload.uapi import TLS_HEADER_SIZE

ASYNC_LOGMAX = 4
NH_START_IVAL = 2
"""TLS_DEVICE_RESYNC_NH_START_IVAL."""
NH_MAX_IVAL = 128
"""TLS_DEVICE_RESYNC_NH_MAX_IVAL."""


class RxResync:
    """One RX device context's resync state on the stack's side.

    ``dev_resync(seq, record_sn)`` calls the driver (and counts
    ``TlsRxDeviceResync``); it is given by the owner, which knows the
    driver and the context.  The methods named ``resync_*`` are what the
    driver calls (``offload.netdev.RxResyncHost``).
    """

    def __init__(self, sync_type: RxSyncType, dev_resync: Callable[[int, int], None]) -> None:
        self.sync_type = sync_type
        self._dev_resync = dev_resync
        self.req_seq: int | None = None
        self.async_req: tuple[int, int, bool] | None = None  # seq, window, still async
        self.async_log: list[tuple[int, int]] = []
        self.nh_do_now = False
        self.nh_reset = False
        self.decrypted_failed = 0
        self.decrypted_tgt = NH_START_IVAL

    @property
    def listening(self) -> bool:
        """Whether ``new_record`` may act on the next record header: a hint
        due, or a request open.  When not, the caller may skip the call."""
        return self.nh_do_now or self.req_seq is not None or self.async_req is not None

    # -- what the driver calls --------------------------------------------------

    def resync_request(self, tcp_seq: int) -> None:
        self.req_seq = tcp_seq

    def resync_async_start(self, tcp_seq: int, length: int) -> None:
        self.async_req = (tcp_seq, length, True)
        self.async_log.clear()

    def resync_async_end(self, tcp_seq: int) -> None:
        self.async_req = (tcp_seq, 0, False)

    # -- what the stack's parser calls --------------------------------------------

    def resume(self) -> None:
        """Hint the NIC at the next record boundary that has not arrived yet
        (after a TLS 1.3 handshake record it stopped at; any scheme)."""
        self.nh_do_now = True

    def new_record(self, seq: int, rec_len: int, record_sn: int, next_in: bool) -> None:
        """``tls_device_rx_resync_new_rec``: the header of record ``record_sn``
        starting at ``seq`` (``rec_len`` bytes with its header) was parsed;
        ``next_in``: bytes after it have already reached the host."""
        if self.nh_do_now and not next_in:
            self.nh_do_now = False
            self._dev_resync((seq + rec_len) & 0xFFFFFFFF, record_sn + 1)
            return
        if self.sync_type == RxSyncType.DRIVER_REQ:
            if self.req_seq is not None and self.req_seq == seq:
                self.req_seq = None
                self._dev_resync(seq, record_sn)
        elif self.sync_type == RxSyncType.DRIVER_REQ_ASYNC:
            self._async(seq, record_sn)

    def _async(self, seq: int, record_sn: int) -> None:
        req = self.async_req
        if req is None:
            return
        rseq, window, is_async = req
        if is_async:
            # Asynchronous stage: log the record starts inside the window.
            if seq_before(seq, rseq):
                return
            if not seq_after(seq, (rseq + window) & 0xFFFFFFFF) and (
                len(self.async_log) < ASYNC_LOGMAX
            ):
                self.async_log.append((seq, record_sn))
            return
        # Synchronous stage: the logged starts first, then this one.
        log, self.async_log = self.async_log, []
        for lseq, lsn in log:
            if lseq == rseq:
                self.async_req = None
                self._dev_resync(lseq, lsn)
                return
        if seq == rseq:
            self.async_req = None
            self._dev_resync(seq, record_sn)

    def record_read(
        self, decrypted: bool, encrypted: bool, next_seq: int, next_sn: int, next_in: bool
    ) -> None:
        """``tls_device_decrypted``'s bookkeeping for one record read: all
        (``decrypted``), none (``encrypted``) or part of it came decrypted;
        ``next_seq``/``next_sn`` is the record after it, ``next_in`` whether
        any of it has arrived."""
        if not encrypted:
            self.nh_reset = True
            return
        if self.sync_type != RxSyncType.CORE_NEXT_HINT or self.nh_do_now:
            return
        if self.nh_reset:
            self.nh_reset = False
            self.decrypted_failed = 1
            self.decrypted_tgt = NH_START_IVAL
            return
        self.decrypted_failed += 1
        if self.decrypted_failed <= self.decrypted_tgt:
            return
        if self.decrypted_tgt < NH_MAX_IVAL:
            self.decrypted_tgt *= 2
        else:
            self.decrypted_tgt += NH_MAX_IVAL
        if next_in:
            self.nh_do_now = True
        else:
            self._dev_resync(next_seq, next_sn)


class RecordWalk:
    """Follows record headers in the in-order byte stream as it arrives.

    ``on_record(offset, rec_len, index, next_in)`` is called once per record
    header, in order: its stream offset, its length with the header, its
    index in the stream (0 = the first record after TLS_RX was set) and
    whether bytes after the record have arrived already.  A header the
    software parser would refuse (version, length) stops the walk: the read
    path reports the error.
    """

    def __init__(self, max_len: int, on_record: Callable[[int, int, int, bool], None]) -> None:
        self.max_len = max_len
        self.on_record = on_record
        self.next_off = 0
        self.index = 0
        self.end = 0
        self.dead = False
        self._hdr = bytearray()

    def jump(self, offset: int, index: int) -> None:
        """The reader took whole records the walk has not seen, up to stream
        ``offset``, where record ``index`` starts: go on from there (nothing
        when the walk is there or ahead already)."""
        if not self.dead and self.next_off < offset:
            self.next_off, self.index = offset, index
            self._hdr.clear()

    def delivered(self, offset: int, data: memoryview | bytes, announce: bool = True) -> None:
        """``data`` arrived in order at stream ``offset`` (== the previous end);
        ``announce=False`` follows the headers without calling ``on_record``
        (catching up with bytes nobody listened for)."""
        n = len(data)
        end = offset + n
        self.end = end
        hdr = self._hdr
        unpack = HEADER.unpack_from
        while not self.dead and self.next_off < end:
            p = self.next_off + len(hdr) - offset
            if p < 0:  # bytes before this delivery were never seen: give up
                self.dead = True
                return
            if not hdr and p + TLS_HEADER_SIZE <= n:
                # The whole header in this delivery (the common case): no copy.
                _ctype, version, length = unpack(data, p)
            else:
                hdr += data[p : p + TLS_HEADER_SIZE - len(hdr)]
                if len(hdr) < TLS_HEADER_SIZE:
                    return
                _ctype, version, length = unpack(hdr)
            if version != RECORD_VERSION or length > self.max_len:
                self.dead = True
                return
            rec_len = TLS_HEADER_SIZE + length
            start = self.next_off
            hdr.clear()
            self.next_off = start + rec_len
            self.index += 1
            if announce:
                self.on_record(start, rec_len, self.index - 1, end > start + rec_len)


__all__ = ["ASYNC_LOGMAX", "NH_MAX_IVAL", "NH_START_IVAL", "RecordWalk", "RxResync"]
