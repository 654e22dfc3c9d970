"""Cluster description loading and the pure slurm.conf/gres.conf/slurmdbd.conf/my.cnf renderers (golden files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from haihe.cluster.ports import PortPlan
from haihe.cluster.slurm.description import load_description, parse_description
from haihe.cluster.slurm.render import (
    Layout,
    render_gres_conf,
    render_my_cnf,
    render_slurm_conf,
    render_slurmdbd_conf,
)
from haihe.errors import InvalidInput
from tests.unit.slurm_golden import assert_golden

LAYOUT = Layout(Path("/srv/haihe/slurm"), "login01", PortPlan(21000), "haihe21000")


def test_default_description_is_nscc_shaped() -> None:
    desc = load_description()
    assert [p.name for p in desc.partitions] == ["debug", "cpu", "gpu", "bigmem"]
    assert desc.default_partition().name == "debug"
    assert desc.qos_names() == ("normal", "high", "debug")
    assert len(desc.all_nodes()) >= 4
    assert desc.node_type("gpu").gpus > 0


@pytest.mark.parametrize("accounting", [True, False])
def test_slurm_conf_golden(accounting: bool) -> None:
    text = render_slurm_conf(load_description(), LAYOUT, accounting=accounting)
    assert_golden(f"slurm.conf{'.acct' if accounting else ''}", text)
    assert "SlurmctldPort=21200" in text
    assert ("AccountingStorageType=accounting_storage/slurmdbd" in text) == accounting


def test_other_confs_golden() -> None:
    desc = load_description()
    assert_golden("gres.conf", render_gres_conf(desc, LAYOUT))
    assert_golden("slurmdbd.conf", render_slurmdbd_conf(LAYOUT, "secret-pw"))
    assert_golden("my.cnf", render_my_cnf(LAYOUT))


def test_ports_and_names_derive_from_plan_and_state() -> None:
    a = render_slurm_conf(load_description(), Layout.create(Path("/tmp/a"), "h", PortPlan(21000), "x"),
                          accounting=False)
    b = render_slurm_conf(load_description(), Layout.create(Path("/tmp/b"), "h", PortPlan(22000), "x"),
                          accounting=False)
    ports_a = {ln for ln in a.splitlines() if "Port" in ln}
    assert not ports_a & {ln for ln in b.splitlines() if "Port" in ln}
    assert "ClusterName=x21000" in a and "ClusterName=x22000" in b


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["partitions"][0].pop("max_time_min"), "max_time_min"),
        (lambda d: d["partitions"][0].update(node_types=["nope"]), "node_types"),
        (lambda d: d["partitions"][1].update(default=True), "partitions"),
        (lambda d: d["node_types"][0].update(cpus="four"), "cpus"),
        (lambda d: d["qos"][0].update(name="Bad Name"), "name"),
    ],
)
def test_invalid_description_names_file_and_field(mutate: object, field: str) -> None:
    import tomllib
    from importlib import resources

    data = tomllib.loads(resources.files("haihe.cluster.slurm").joinpath("default.toml").read_text())
    mutate(data)  # type: ignore[operator]
    with pytest.raises(InvalidInput) as err:
        parse_description(data, "site.toml")
    assert "site.toml" in err.value.message
    assert field in (err.value.field or "")
