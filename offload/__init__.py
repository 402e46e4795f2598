"""offload: a Linux-compatible kernel TLS (kTLS) layer in Python.

Code written against this package uses the kTLS socket API unchanged:
``setsockopt(SOL_TCP, TCP_ULP, b"tls")``, ``setsockopt(SOL_TLS, TLS_TX,
crypto_info)``, control records through cmsgs, ``getsockopt`` read-back and
the errno values Linux returns.  :class:`KTLSSocket` wraps a connected TCP
socket and either does the record layer itself (software) or forwards to the
host kernel's kTLS.
"""

from offload.kernel import kernel_has_ktls
from offload.ktls_socket import KTLSSocket
from offload.stats import GLOBAL as GLOBAL_STATS
from offload.uapi import CipherType, ContentType, CryptoInfo

__all__ = [
    "GLOBAL_STATS",
    "CipherType",
    "ContentType",
    "CryptoInfo",
    "KTLSSocket",
    "kernel_has_ktls",
]
