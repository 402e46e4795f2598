"""TLS 1.3 application traffic secrets after the handshake, one per direction.

The key schedule apart from the protocol logic (as aioquic keeps its
``KeySchedule`` apart from its ``tls.Context``): each KeyUpdate moves one
direction to ``HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)``
(RFC 8446 7.2) and restarts its record sequence number at 0.  The secrets
never appear in a ``repr``.
"""

from __future__ import annotations

from offload.keys import Suite, crypto_info_tls13, tls13_next_secret
from offload.uapi import CryptoInfo


class TrafficSecrets:
    """The current ``*_application_traffic_secret_N`` of each direction."""

    def __init__(self, suite: Suite, tx_secret: bytes, rx_secret: bytes) -> None:
        self.suite = suite
        self._tx = tx_secret
        self._rx = rx_secret

    def __repr__(self) -> str:
        return f"TrafficSecrets({self.suite.openssl_name}, secrets=<redacted>)"

    def next_tx(self) -> CryptoInfo:
        """Advance our secret; the crypto_info for ``TLS_TX`` (rec_seq 0)."""
        self._tx = tls13_next_secret(self._tx, self.suite)
        return crypto_info_tls13(self._tx, self.suite, 0)

    def next_rx(self) -> CryptoInfo:
        """Advance the peer's secret; the crypto_info for ``TLS_RX`` (rec_seq 0)."""
        self._rx = tls13_next_secret(self._rx, self.suite)
        return crypto_info_tls13(self._rx, self.suite, 0)
