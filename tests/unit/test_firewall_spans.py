"""Firewall rules cover contiguous ports as one ``--dport first:last`` range: a hundred Ray ports are one rule."""

from __future__ import annotations

from pathlib import Path

from haihe.cluster.firewall import _spans
from haihe.cluster.ports import PortPlan
from haihe.cluster.ray_head import RayHead


def test_contiguous_ports_become_ranges_and_lone_ports_stay_single() -> None:
    assert _spans(range(21100, 21200)) == ["21100:21199"]
    assert _spans([5, 3, 4, 9, 11, 12, 3]) == ["3:5", "9", "11:12"]
    assert _spans([]) == []


def test_serves_http_proxy_is_closed_to_every_job(tmp_path: Path) -> None:
    """Serve's proxy answers any org's endpoint without a key, a rate limit or a meter: Slurm jobs (every port of
    the head) and Ray's own jobs (the control ports) are both kept from it."""
    ports = PortPlan(21000)
    every, control = RayHead(tmp_path, ports, num_cpus=1, user="")._guard_sets()
    assert ports.serve_http in every and ports.serve_http in control
    assert _spans(every) == [str(ports.serve_http), f"{ports.ray(0)}:{ports.ray(99)}"]
