"""offload: a Linux-compatible kernel TLS (kTLS) layer in Python.

Code written against this package uses the kTLS socket API unchanged:
``setsockopt(SOL_TCP, TCP_ULP, b"tls")``, ``setsockopt(SOL_TLS, TLS_TX,
crypto_info)``, control records through cmsgs, ``getsockopt`` read-back and
the errno values Linux returns.  :class:`KTLSSocket` wraps a connected TCP
socket and either does the record layer itself (software) or forwards to the
host kernel's kTLS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from offload.uapi import CipherType, ContentType, CryptoInfo

if TYPE_CHECKING:
    from offload.kernel import kernel_has_ktls
    from offload.ktls_socket import KTLSSocket
    from offload.stats import GLOBAL as GLOBAL_STATS

# Loaded on first use (PEP 562): importing any ``offload.X`` runs this file,
# and a program that only needs the constants or a driver's name (``tlsctl
# send --help``) should not pay for the record layer and its AEADs.
_LAZY = {
    "KTLSSocket": ("offload.ktls_socket", "KTLSSocket"),
    "kernel_has_ktls": ("offload.kernel", "kernel_has_ktls"),
    "GLOBAL_STATS": ("offload.stats", "GLOBAL"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'offload' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "GLOBAL_STATS",
    "CipherType",
    "ContentType",
    "CryptoInfo",
    "KTLSSocket",
    "kernel_has_ktls",
]
