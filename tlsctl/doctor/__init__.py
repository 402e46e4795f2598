"""``tlsctl doctor`` as a library: is kTLS usable on this host, and if not, why.

:func:`diagnose` probes the running kernel (module, ``TCP_ULP``, every
version x cipher, TLS 1.3 rekey, the optional ``SOL_TLS`` options,
``/proc/net/tls_stat``), the NICs' TLS offload features and the TLS
libraries, and returns a :class:`Report` of typed :class:`Check` rows; the
command only renders it.
"""

from tlsctl.doctor.report import Check, Report
from tlsctl.doctor.verdict import diagnose

__all__ = ["Check", "Report", "diagnose"]
