"""offload: a Linux-compatible kernel TLS (kTLS) layer in Python.

Code written against this package uses the kTLS socket API unchanged:
``setsockopt(SOL_TCP, TCP_ULP, b"tls")``, ``setsockopt(SOL_TLS, TLS_TX,
crypto_info)``, control records through cmsgs, ``getsockopt`` read-back and
the errno values Linux returns.  :class:`KTLSSocket` wraps a connected TCP
socket and either does the record layer itself (software) or forwards to the
host kernel's kTLS.

The names below are loaded on first use (PEP 562): importing one light
module such as :mod:`offload.uapi` does not load the whole record layer
(``tlsctl doctor`` needs only the constants; inside the emulated kTLS VM
that import alone took minutes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offload.kernel import kernel_has_ktls
    from offload.ktls_socket import KTLSSocket
    from offload.stats import GLOBAL as GLOBAL_STATS
    from offload.uapi import CipherType, ContentType, CryptoInfo

_EXPORTS: dict[str, tuple[str, str]] = {
    "GLOBAL_STATS": ("offload.stats", "GLOBAL"),
    "CipherType": ("offload.uapi", "CipherType"),
    "ContentType": ("offload.uapi", "ContentType"),
    "CryptoInfo": ("offload.uapi", "CryptoInfo"),
    "KTLSSocket": ("offload.ktls_socket", "KTLSSocket"),
    "kernel_has_ktls": ("offload.kernel", "kernel_has_ktls"),
}

__all__ = [
    "GLOBAL_STATS",
    "CipherType",
    "ContentType",
    "CryptoInfo",
    "KTLSSocket",
    "kernel_has_ktls",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'offload' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
