"""``tlsctl send``'s transfer as a library that prints nothing.

- :mod:`.sender`: :func:`send_to` (connect, handshake, hand the keys to the
  layer, send in whole-record steps, close) with :class:`ClientOptions`
  and the :class:`SendHooks` callbacks.
- :mod:`.confirm`: the verdict "the peer confirmed every byte" (its
  close_notify after ours, then a clean TCP close), and the reader thread
  that watches the peer while we send.
- :mod:`.loopback`: :func:`send_loopback`, a built-in server in a thread
  that hashes what it got.
"""

from __future__ import annotations

from tlsctl.transfer.sender import ClientOptions, Progress, SendHooks, TransferFailed, send_to

__all__ = ["ClientOptions", "Progress", "SendHooks", "TransferFailed", "send_to"]
