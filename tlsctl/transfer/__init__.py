"""``tlsctl send``'s transfer as a library that prints nothing.

- :mod:`.sender`: :func:`send_to` (connect, handshake, hand the keys to the
  layer, send in whole-record steps, close) with :class:`ClientOptions`
  and the :class:`SendHooks` callbacks.
- :mod:`.confirm`: the verdict "the peer confirmed every byte" (its
  close_notify after ours, then a clean TCP close), and the reader thread
  that watches the peer while we send.
- :mod:`.loopback`: :func:`send_loopback`, a built-in server in a thread
  that hashes what it got.

The names below are imported on first use (PEP 562), so ``send --help``
does not load pyOpenSSL and the record layer's channel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tlsctl.transfer.loopback import send_loopback
    from tlsctl.transfer.sender import (
        ClientOptions,
        Progress,
        SendHooks,
        TransferFailed,
        send_to,
    )

__all__ = ["ClientOptions", "Progress", "SendHooks", "TransferFailed", "send_loopback", "send_to"]

_HOME = {
    "ClientOptions": "sender",
    "Progress": "sender",
    "SendHooks": "sender",
    "TransferFailed": "sender",
    "send_to": "sender",
    "send_loopback": "loopback",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
