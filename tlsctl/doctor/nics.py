"""NICs that can do TLS themselves: the ``tls-hw-tx-offload`` and
``tls-hw-rx-offload`` features (what ``ethtool -k DEV`` lists).

Read with pyroute2's :class:`~pyroute2.Ethtool`, whose ``get_features`` asks
the kernel with the ``ETHTOOL_GFEATURES`` ioctl (feature names from
``ETHTOOL_GSTRINGS``): no ``ethtool`` binary needed, no privileges either.
"available" is what the driver can do (``hw_features``), "on" what is
enabled now; only a driver with ``tlsdev_ops`` (mlx5, nfp, chelsio,
fungible...) ever has them available.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

METHOD = "pyroute2 Ethtool.get_features (ETHTOOL_GFEATURES ioctl)"
TX_FEATURE = "tls-hw-tx-offload"
RX_FEATURE = "tls-hw-rx-offload"


@dataclass(frozen=True)
class NicResult:
    """One network device's TLS offload features."""

    name: str
    tx_available: bool
    tx_on: bool
    rx_available: bool
    rx_on: bool
    error: str = ""

    @property
    def advertises(self) -> bool:
        return self.tx_available or self.rx_available


def interfaces(sys_class_net: str = "/sys/class/net") -> list[str]:
    try:
        return sorted(os.listdir(sys_class_net))
    except OSError:
        return []


def probe_nics(names: list[str] | None = None) -> list[NicResult]:
    """Every device's TLS features; a device that cannot be asked gets its
    error instead (ioctl errors are per device)."""
    from pyroute2.ethtool import Ethtool

    out: list[NicResult] = []
    ethtool = Ethtool()
    try:
        for name in interfaces() if names is None else names:
            try:
                feats = ethtool.get_features(name).features
            except Exception as exc:  # pyroute2 raises OSError and its own errors
                out.append(NicResult(name, False, False, False, False, error=str(exc)))
                continue
            tx, rx = feats.get(TX_FEATURE), feats.get(RX_FEATURE)
            out.append(
                NicResult(
                    name,
                    bool(tx is not None and tx.available),
                    bool(tx is not None and tx.enable),
                    bool(rx is not None and rx.available),
                    bool(rx is not None and rx.enable),
                )
            )
    finally:
        ethtool.close()
    return out
