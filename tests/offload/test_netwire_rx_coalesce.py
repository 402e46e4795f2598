"""The real wire's RX path waits for more bytes after a large read, safely.

``NetRxPath._coalesce`` (see its docstring): after a read of at least
``COALESCE_MIN`` bytes it waits, bounded, for ``COALESCE_LOWAT`` bytes
with ``SO_RCVLOWAT``, so a streaming peer's frames are read together.  What
must hold, on a real TCP connection over loopback:

* the wait happens after a large read, never after a small one (a small
  request goes to the reader at once) nor on a non-blocking socket;
* ``SO_RCVLOWAT`` is 1 again when the reader gets control back, so its
  next blocking ``recv`` cannot wait for bytes that never come;
* a FIN ends the wait (the path does not take the peer for paused);
* a peer that paused (a request sent, an answer awaited) is not waited for
  again until it streams again.

No test here asserts a duration.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from offload.netwire.rxpath import COALESCE_LOWAT, COALESCE_MIN, NetRxPath
from offload.sw_recv import READ_CHUNK


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(reader, peer): a connected TCP pair on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        peer = socket.create_connection(srv.getsockname())
        reader, _ = srv.accept()
    with reader, peer:
        yield reader, peer


def lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def test_a_large_read_waits_then_the_low_water_mark_is_1_again(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    reader, peer = pair
    path = NetRxPath(reader, "")
    peer.sendall(bytes(COALESCE_LOWAT))  # the peer streams: the wait ends at the mark
    path._coalesce(COALESCE_MIN)
    assert path.coalesced == 1
    assert lowat(reader) == 1
    assert not path._paused


def test_a_small_read_never_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, _ = pair
    path = NetRxPath(reader, "")
    path._coalesce(COALESCE_MIN - 1)
    path._coalesce(100)
    assert path.coalesced == 0
    assert lowat(reader) == 1


def test_a_non_blocking_reader_never_waits(pair: tuple[socket.socket, socket.socket]) -> None:
    reader, _ = pair
    reader.setblocking(False)
    path = NetRxPath(reader, "")
    path._coalesce(READ_CHUNK)
    assert path.coalesced == 0


def test_fin_ends_the_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    """Nothing queued but the FIN: the poll wakes for it (were it to time
    out instead, the path would find fewer than COALESCE_MIN bytes queued
    and take the peer for paused)."""
    reader, peer = pair
    path = NetRxPath(reader, "")
    peer.shutdown(socket.SHUT_WR)
    path._coalesce(COALESCE_MIN)
    assert path.coalesced == 1
    assert not path._paused
    assert lowat(reader) == 1
    assert reader.recv(1) == b""  # the reader's next read sees the FIN at once


def test_a_paused_peer_is_not_waited_for_until_it_streams_again(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A request of COALESCE_MIN bytes, then the peer waits for the answer:
    one bounded wait, then none for the next large reads, until large
    reads come back to back (three in a row) or one fills READ_CHUNK."""
    reader, _ = pair
    path = NetRxPath(reader, "")
    path._coalesce(COALESCE_MIN)  # nothing more comes: the wait times out
    assert path._paused and path.coalesced == 1
    assert lowat(reader) == 1
    path._coalesce(COALESCE_MIN)  # the next request: no wait
    assert path.coalesced == 1
    path._coalesce(1)  # a small read breaks the run
    path._coalesce(COALESCE_MIN)
    path._coalesce(COALESCE_MIN)
    assert path.coalesced == 1
    path._coalesce(COALESCE_MIN)  # three large reads in a row: it streams
    assert path.coalesced == 2
    path._coalesce(1)
    assert path._paused  # that wait found nothing either
    path._coalesce(READ_CHUNK)  # a full read: the socket held more than a chunk
    assert path.coalesced == 3


def test_no_wait_while_the_nic_is_out_of_sync(pair: tuple[socket.socket, socket.socket]) -> None:
    """A read with bytes the NIC did not decrypt (``_marked`` found an
    unmarked piece): the NIC is about to ask the stack to confirm a record,
    so the reader goes on at once."""
    reader, peer = pair
    path = NetRxPath(reader, "")
    peer.sendall(bytes(COALESCE_LOWAT))
    path._all_marked = False
    path._coalesce(READ_CHUNK)
    assert path.coalesced == 0
    path._all_marked = True
    path._coalesce(READ_CHUNK)
    assert path.coalesced == 1
