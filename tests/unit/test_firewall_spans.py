"""Firewall rules cover contiguous ports as one ``--dport first:last`` range: a hundred Ray ports are one rule."""

from __future__ import annotations

from haihe.cluster.firewall import _spans


def test_contiguous_ports_become_ranges_and_lone_ports_stay_single() -> None:
    assert _spans(range(21100, 21200)) == ["21100:21199"]
    assert _spans([5, 3, 4, 9, 11, 12, 3]) == ["3:5", "9", "11:12"]
    assert _spans([]) == []
