"""Batches of TX records in pooled buffers: laid out, then sealed or framed in place.

Software TX and device TX both cut a send into batches of up to
``batch_records`` records that share one buffer: one ``preadv`` fills the
records' plaintext slots, one socket write (or one pass of the NIC) takes
the whole buffer.  :class:`TxBatches` owns that for one TX key:

* the layout - where each record's header, explicit nonce, plaintext slot,
  TLS 1.3 inner type and tag sit in a buffer;
* the pool of full-size buffers handed back after their write, reused
  because allocating (and zeroing, and faulting in) a fresh 1 MiB buffer
  per batch costs as much as copying it;
* what a pooled buffer still holds from its last use, laid out the same way:
  the slot views, the per-record views the TLS 1.3 AEAD calls take, the
  headers already written - so a batch's per-record work is the AEAD call
  (software) or a few strided writes for the whole batch (device);
* the loops that seal a batch in place (software TX: ``seal``,
  ``seal_from``) or frame it without sealing, for the NIC to encrypt
  (device TX: ``frame_plaintext``).

The framing inside those loops is ``offload.framing``'s, with its
``struct`` objects bound once per batch and the nonce XOR inlined: a call
per record would cost more than the framing itself.  The sequence state
(``rec_seq``, the next explicit nonce, the wrap) is the sealer's: the
loops read it once and advance it once per batch.

Linux has no such object: its records are built in socket buffers page by
page (``tls_sw.c``'s ``tls_rec``, ``tls_device.c``'s ``tls_record_info``).
The pool and the caches are what make per-record Python work small.
"""

from __future__ import annotations

import errno
from typing import TypeAlias

from offload.errors import os_error
from offload.framing import AAD12, APPDATA, HEADER, HEADER_EX, RECORD_VERSION, SEQ_MASK, Buffer
from offload.record import RecordSealer
from offload.uapi import TLS_HEADER_SIZE, TLS_MAX_PAYLOAD_SIZE

# A pooled buffer, the plaintext total it was laid out for, and its records' slots.
RecordBuf: TypeAlias = bytearray | memoryview
"""A record batch's memory: a pooled buffer, or (the real wire) a place in
the shared record ring the host frames into directly."""
_Layout: TypeAlias = tuple[RecordBuf, int, tuple[memoryview, ...]]
# What frame_plaintext left in a buffer: the buffer, content type, plaintext total.
_Framed: TypeAlias = tuple[RecordBuf, int, int]
# Per TLS 1.3 record: inner type offset, inner plaintext, header (AAD), body.
_Views13: TypeAlias = tuple[tuple[int, memoryview, memoryview, memoryview], ...]


class TxBatches:
    """The record buffers of one TX key: layout, pool, caches, batch loops.

    ``sealer`` holds the key and sequence state the loops advance;
    ``max_payload`` is the plaintext per record (the last of a batch may
    carry less); a full batch is ``batch_records`` records; at most
    ``pool_max`` buffers wait for reuse.  A new key gets a new object (the
    pool and the caches belong to the old key's layout).
    """

    regions_max = 16
    """Ring regions whose layout is remembered (a ring of a few batches
    recurs at a handful of places; older entries go first)."""

    def __init__(
        self, sealer: RecordSealer, max_payload: int, batch_records: int, pool_max: int
    ) -> None:
        self.sealer = sealer
        self.max_payload = max_payload
        self.batch_records = batch_records
        self.full_size = sealer.sealed_size(max_payload) * batch_records
        """Bytes of a full batch's buffer (the only size that is pooled)."""
        self._pool: list[bytearray] = []
        self._pool_max = pool_max
        self._laid: _Layout | None = None  # the last pooled buffer laid out
        self._views: tuple[_Layout, _Views13] | None = None  # for that layout (see _views13)
        self._framed: _Framed | None = None  # headers written in place
        self._regions: dict[int, tuple[_Layout, _Framed | None]] = {}
        """Per ring region (``lay_out_in``, keyed by the view's id, the view
        kept alive by its entry): its layout and what framing left there."""

    # -- buffers ------------------------------------------------------------

    def take(self, total: int) -> tuple[bytearray, list[memoryview]]:
        """A buffer laid out for ``total`` plaintext bytes: a pooled one when
        ``total`` fills a whole batch and one is free, else a fresh one."""
        buf = None
        if total == self.max_payload * self.batch_records and self._pool:
            buf = self._pool.pop()
        return self.lay_out(total, buf)

    def wants(self, buf: RecordBuf) -> bool:
        """Whether ``give_back`` would keep ``buf`` (a full batch, room in the
        pool; never ring memory, which is not this object's to reuse)."""
        return (
            isinstance(buf, bytearray)
            and len(buf) == self.full_size
            and len(self._pool) < self._pool_max
        )

    def give_back(self, buf: RecordBuf) -> None:
        """Take back a fully written batch buffer for reuse (bounded pool)."""
        if isinstance(buf, bytearray) and self.wants(buf):
            self._pool.append(buf)

    def lay_out(
        self, total: int, buf: bytearray | None = None
    ) -> tuple[bytearray, list[memoryview]]:
        """A buffer for ``total`` plaintext bytes cut into records, and the
        plaintext slot of each record (for TLS 1.3 the slot includes the
        trailing inner-type byte).  A reader can fill the slots directly
        (``os.preadv``) so file data is never copied before it is sealed.
        ``buf`` is reused when it has exactly the needed size.
        """
        cached = self._laid
        if cached is not None and buf is cached[0] and total == cached[1]:
            # The same pooled buffer laid out the same way again (every full
            # batch of a bulk send): its slot views are still right.
            return buf, list(cached[2])
        sizes = self._record_sizes(total)
        size = self.buffer_size(total)
        out = buf if buf is not None and len(buf) == size else bytearray(size)
        slots = self._slots(memoryview(out), sizes)
        if out is buf:
            self._laid = (out, total, tuple(slots))
        return out, slots

    def lay_out_in(self, total: int, region: memoryview) -> list[memoryview]:
        """``lay_out`` in memory that is not ours (``region``, exactly
        ``buffer_size(total)`` bytes: a place in the real wire's shared
        record ring, which the host then frames in place)."""
        cached = self._regions.get(id(region))
        if cached is not None and cached[0][0] is region and cached[0][1] == total:
            # The ring hands out the same view for the same place (full
            # batches recur at the same ring positions): its slots are still
            # right, and so are the headers framing left in it.
            self._laid, self._framed = cached
            return list(cached[0][2])
        if len(region) != self.buffer_size(total):
            raise ValueError("region is not the batch's size")
        slots = self._slots(region, self._record_sizes(total))
        layout: _Layout = (region, total, tuple(slots))
        self._laid, self._framed = layout, None
        regions = self._regions
        regions.pop(id(region), None)
        regions[id(region)] = (layout, None)
        if len(regions) > self.regions_max:
            del regions[next(iter(regions))]
        return slots

    def buffer_size(self, total: int) -> int:
        """Bytes of the buffer ``lay_out`` gives for ``total`` plaintext bytes."""
        sizes = self._record_sizes(total)
        sealer = self.sealer
        per = sealer.prot.prepend_size + sealer.tag_size + int(sealer.is13)
        return sum(sizes) + len(sizes) * per

    def _record_sizes(self, total: int) -> list[int]:
        max_payload = self.max_payload
        if max_payload < 1 or max_payload > TLS_MAX_PAYLOAD_SIZE:
            raise os_error(errno.EINVAL, "record payload size must be 1..16384")
        sizes = [max_payload] * (total // max_payload)
        if total % max_payload or total == 0:
            sizes.append(total % max_payload)
        return sizes

    def _slots(self, mv: memoryview, sizes: list[int]) -> list[memoryview]:
        sealer = self.sealer
        over = sealer.prot.prepend_size
        inner_extra = int(sealer.is13)
        slots = []
        o = 0
        for n in sizes:
            slots.append(mv[o + over : o + over + n + inner_extra])
            o += over + n + inner_extra + sealer.tag_size
        return slots

    def _is_laid(self, out: RecordBuf, slots: list[memoryview]) -> bool:
        """Whether ``slots`` are the cached layout of the pooled buffer
        ``out`` (``lay_out`` handed them out again): whatever was written in
        ``out`` outside the slots since then is still there."""
        cached = self._laid
        return (
            cached is not None
            and cached[0] is out
            and len(slots) == len(cached[2])
            and slots[0] is cached[2][0]
            and slots[-1] is cached[2][-1]
        )

    # -- software TX: seal in place -------------------------------------------

    def seal_from(self, content_type: int, src: Buffer) -> bytearray:
        """Seal ``src`` as consecutive records of at most ``max_payload`` bytes.

        The records land back to back in one buffer (pooled when ``src``
        fills a batch), ready for one socket write.  TLS 1.2 encrypts
        straight from ``src``; TLS 1.3 needs the inner type after each
        chunk, so it places the chunk first (the copy Linux makes from user
        memory) and seals in place.
        """
        sealer = self.sealer
        mv = memoryview(src)
        out, slots = self.take(len(mv))
        if sealer.is13:
            p = 0
            for slot in slots:
                n = len(slot) - 1
                slot[:n] = mv[p : p + n]
                p += n
            self.seal(out, content_type, slots)
            return out
        if sealer.explicit + len(slots) > SEQ_MASK:
            # Rare: the explicit nonce wraps inside the batch; go record by record.
            p = o = 0
            for slot in slots:
                n = len(slot)
                rec = sealer.seal(content_type, mv[p : p + n])
                out[o : o + len(rec)] = rec
                p += n
                o += len(rec)
            return out
        self._seal12(out, content_type, mv, [len(s) for s in slots], from_src=True)
        return out

    def seal(self, out: bytearray, content_type: int, slots: list[memoryview]) -> None:
        """Seal, in place, records laid out by ``lay_out`` whose slots are filled.

        Callers keep a batch within the sequence space left (``records_left``):
        the record numbered 2^64-1 is the last one a key may seal.
        """
        sealer = self.sealer
        is13 = sealer.is13
        if (sealer.seq if is13 else sealer.explicit) + len(slots) > SEQ_MASK:
            # Rare: the sequence number (TLS 1.3) or the explicit nonce
            # (TLS 1.2) reaches 2^64-1 inside the batch; go record by record.
            o = 0
            for slot in slots:
                n = len(slot) - int(is13)
                sealer.seal_in_place(out, content_type, n, offset=o)
                o += sealer.sealed_size(n)
            return
        if not is13:
            self._seal12(out, content_type, memoryview(out), [len(s) for s in slots])
            return
        enc = sealer.aead.encrypt_into
        iv = sealer.static_iv
        seq = sealer.seq
        for type_at, pt, hdr, body in self._views13(out, slots):
            out[type_at] = content_type
            enc((iv ^ seq).to_bytes(12, "big"), pt, hdr, body)
            seq += 1
        sealer.advance(len(slots))

    def _views13(self, out: bytearray, slots: list[memoryview]) -> _Views13:
        """Per TLS 1.3 record: where the inner type goes, and the views the
        AEAD reads and writes (inner plaintext, header as AAD, body).

        The header is written here (``tls_fill_prepend``; on TX it is the
        AAD byte for byte).  A pooled buffer sealed with the same layout
        before (every full batch of a bulk send) still holds its headers -
        the AEAD writes only the body - so its views are kept and the
        per-record loop is just the type byte and the AEAD call: the slicing
        and packing cost about a third as much as AES-256 itself.
        """
        laid = self._laid
        cached = self._views
        if cached is not None and cached[0] is laid and self._is_laid(out, slots):
            return cached[1]
        mv = memoryview(out)
        tag = self.sealer.tag_size
        pack = HEADER.pack_into
        views = []
        o = 0
        for slot in slots:
            inner = len(slot)
            pack(out, o, APPDATA, RECORD_VERSION, inner + tag)
            body = mv[o + 5 : o + 5 + inner + tag]
            views.append((o + 4 + inner, body[:inner], mv[o : o + 5], body))
            o += 5 + inner + tag
        result = tuple(views)
        if laid is not None and self._is_laid(out, slots):  # a pooled buffer: worth keeping
            self._views = (laid, result)
        return result

    def _seal12(
        self,
        out: bytearray,
        content_type: int,
        src: memoryview,
        sizes: list[int],
        from_src: bool = False,
    ) -> None:
        """The TLS 1.2 hot loop: per record one header pack, one AAD pack and
        one ``encrypt_into``; everything else hoisted out of the loop."""
        sealer = self.sealer
        mv = memoryview(out)
        enc = sealer.aead.encrypt_into
        pack_aad = AAD12.pack
        tag = sealer.tag_size
        ex = sealer.explicit_size
        seq = sealer.seq
        over = 5 + ex
        o = 0
        p = 0
        if ex:
            pack_hdr_ex = HEADER_EX.pack_into
            salt = sealer.salt
            explicit = sealer.explicit
            for n in sizes:
                pack_hdr_ex(out, o, content_type, RECORD_VERSION, ex + n + tag, explicit)
                pt = src[p : p + n] if from_src else mv[o + over : o + over + n]
                enc(
                    salt + explicit.to_bytes(8, "big"),
                    pt,
                    pack_aad(seq, content_type, RECORD_VERSION, n),
                    mv[o + over : o + over + n + tag],
                )
                seq += 1
                explicit += 1
                o += over + n + tag
                p += n
            sealer.explicit = explicit
        else:
            pack_hdr = HEADER.pack_into
            iv = sealer.static_iv
            for n in sizes:
                pack_hdr(out, o, content_type, RECORD_VERSION, n + tag)
                pt = src[p : p + n] if from_src else mv[o + 5 : o + 5 + n]
                enc(
                    (iv ^ seq).to_bytes(12, "big"),
                    pt,
                    pack_aad(seq, content_type, RECORD_VERSION, n),
                    mv[o + 5 : o + 5 + n + tag],
                )
                seq += 1
                o += 5 + n + tag
                p += n
        sealer.advance(len(sizes))

    # -- device TX: frame, the NIC seals ----------------------------------------

    def frame_plaintext(self, out: RecordBuf, content_type: int, slots: list[memoryview]) -> None:
        """Frame records laid out by ``lay_out`` *without* encrypting them.

        The device path: headers, explicit nonces and TLS 1.3 inner types are
        written and the sequence number advances exactly as for sealing, but
        the plaintext stays and the tag space is left as it is; the NIC fills
        them (Linux: ``tls_device_record_close`` + ``tls_fill_prepend``).

        A pooled buffer framed the same way before (same layout, same type)
        still holds its headers - nothing but the plaintext slots and the
        tags are written in it between uses - so then only what changes per
        record is rewritten, with strided writes (one C call per byte
        position instead of a Python call per record).
        """
        sealer = self.sealer
        n_rec = len(slots)
        cached = self._laid
        laid = self._is_laid(out, slots)
        again = (
            laid
            and n_rec > 1
            and cached is not None
            and self._framed is not None
            and self._framed[0] is out
            and self._framed[1:] == (content_type, cached[1])
        )
        if again and self._reframe(out, content_type, slots):
            return
        tag = sealer.tag_size
        ex = sealer.explicit_size
        o = 0
        if sealer.is13:
            pack = HEADER.pack_into
            for slot in slots:
                n = len(slot)
                slot[n - 1] = content_type
                pack(out, o, APPDATA, RECORD_VERSION, n + tag)
                o += 5 + n + tag
        elif ex:
            pack_ex = HEADER_EX.pack_into
            explicit = sealer.explicit
            for slot in slots:
                n = len(slot)
                pack_ex(out, o, content_type, RECORD_VERSION, ex + n + tag, explicit & SEQ_MASK)
                explicit += 1
                o += 5 + ex + n + tag
            sealer.explicit = explicit & SEQ_MASK
        else:
            pack = HEADER.pack_into
            for slot in slots:
                n = len(slot)
                pack(out, o, content_type, RECORD_VERSION, n + tag)
                o += 5 + n + tag
        if laid and cached is not None:
            self._framed = (out, content_type, cached[1])
            self._note_region(out)
        elif self._framed is not None and self._framed[0] is out:
            self._framed = None
        sealer.advance(n_rec)

    def _note_region(self, out: RecordBuf) -> None:
        """Remember what framing left in ring region ``out`` (if it is one)."""
        entry = self._regions.get(id(out))
        if entry is not None and entry[0][0] is out:
            self._regions[id(out)] = (entry[0], self._framed)

    def _reframe(self, out: RecordBuf, content_type: int, slots: list[memoryview]) -> bool:
        """``frame_plaintext`` for a buffer whose headers are already in place.

        Records of one size sit at a fixed stride ``r``, so byte ``j`` of
        every record's varying field is one slice assignment with step
        ``r`` (two runs when the explicit nonce's low byte wraps inside the
        batch).  Returns False (frame normally) when the nonce would wrap.
        """
        sealer = self.sealer
        n_rec = len(slots)
        k = n_rec - 1  # records of the full size (the last may be shorter)
        r = len(slots[0]) + TLS_HEADER_SIZE + sealer.explicit_size + sealer.tag_size
        mv = memoryview(out)
        if sealer.is13:
            first = TLS_HEADER_SIZE + len(slots[0]) - 1
            mv[first : first + r * k : r] = bytes((content_type,)) * k
            last = slots[-1]
            last[len(last) - 1] = content_type
        elif sealer.explicit_size:
            explicit = sealer.explicit
            if explicit + n_rec > SEQ_MASK or n_rec > 256:
                return False
            i = 0
            while i < k:  # runs of records whose nonces differ in the low byte only
                e = explicit + i
                low = e & 0xFF
                m = min(k - i, 256 - low)
                high = (e >> 8).to_bytes(7, "big")
                o = r * i
                for j in range(7):
                    mv[o + 5 + j : o + 5 + j + r * m : r] = high[j : j + 1] * m
                mv[o + 12 : o + 12 + r * m : r] = bytes(range(low, low + m))
                i += m
            HEADER_EX.pack_into(
                out,
                r * k,
                content_type,
                RECORD_VERSION,
                sealer.explicit_size + len(slots[-1]) + sealer.tag_size,
                explicit + k,
            )
            sealer.explicit = explicit + n_rec
        sealer.advance(n_rec)
        return True
