"""One ``Counters`` type behind /proc/net/tls_stat (``TlsStats``) and the
NIC's ethtool counters (``DeviceStats``): same API, names validated, exact
under concurrent increments."""

from __future__ import annotations

import threading

import pytest

from offload.netdev import DEVICE_STAT_NAMES, DeviceStats
from offload.stats import TLS_STAT_NAMES, Counters, TlsStats


@pytest.mark.parametrize(
    ("make", "names", "kind"),
    [(TlsStats, TLS_STAT_NAMES, "TLS"), (DeviceStats, DEVICE_STAT_NAMES, "device")],
)
def test_same_api_for_both_sets(make: type[Counters], names: tuple[str, ...], kind: str) -> None:
    c = make()
    assert isinstance(c, Counters)
    assert list(c) == list(names) and len(c) == len(names)
    assert c.snapshot() == dict.fromkeys(names, 0)
    c.inc(names[0])
    c.inc(names[0], 4)
    c.inc_pair(names[1], 2, names[2], 300)
    assert (c[names[0]], c[names[1]], c[names[2]]) == (5, 2, 300)
    snap = c.snapshot()
    c.inc(names[0])
    assert snap[names[0]] == 5  # a copy, not a view
    with pytest.raises(KeyError, match=f"unknown {kind} counter 'NoSuchCounter'"):
        c.inc("NoSuchCounter")
    with pytest.raises(KeyError, match=f"unknown {kind} counter"):
        c.inc_pair(names[0], 1, "NoSuchCounter", 1)
    assert c[names[0]] == 6  # a failed inc_pair changed nothing


def test_the_two_sets_do_not_share_names() -> None:
    with pytest.raises(KeyError):
        DeviceStats().inc("TlsTxSw")
    with pytest.raises(KeyError):
        TlsStats().inc("tx_tls_ooo")


def test_parent_counts_every_increment() -> None:
    """A socket's counters feed the process-wide set."""
    parent = TlsStats()
    a, b = TlsStats(parent=parent), TlsStats(parent=parent)
    a.inc("TlsTxSw")
    b.inc("TlsTxSw", 2)
    b.inc_pair("TlsCurrTxSw", 1, "TlsRxSw", 7)
    assert (a["TlsTxSw"], b["TlsTxSw"], parent["TlsTxSw"]) == (1, 2, 3)
    assert (parent["TlsCurrTxSw"], parent["TlsRxSw"]) == (1, 7)
    assert parent.format_proc().splitlines()[4].split() == ["TlsTxSw", "3"]


def test_concurrent_increments_are_exact() -> None:
    """The TX worker, the RX path and the driver count at once: nothing is lost."""
    dev, parent = DeviceStats(), TlsStats()
    tls = TlsStats(parent=parent)
    per_thread = 20_000

    def work() -> None:
        for _ in range(per_thread):
            dev.inc_pair("tx_tls_encrypted_packets", 1, "tx_tls_encrypted_bytes", 3)
            tls.inc("TlsTxDevice")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dev["tx_tls_encrypted_packets"] == 4 * per_thread
    assert dev["tx_tls_encrypted_bytes"] == 12 * per_thread
    assert tls["TlsTxDevice"] == parent["TlsTxDevice"] == 4 * per_thread
