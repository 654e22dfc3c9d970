"""CI's two side-by-side sessions (``HAIHE_TEST_SHARD``): whole modules, Slurm users together, nothing left out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.conftest import SLURM_SHARD_EXTRA, shard_of_modules


@dataclass
class _Item:
    nodeid: str
    fixturenames: tuple[str, ...]


def test_a_module_with_one_slurm_test_goes_whole_to_the_slurm_shard() -> None:
    items = [_Item("tests/integration/test_mix.py::test_ray", ("ray_head",)),
             _Item("tests/integration/test_mix.py::test_slurm[cli]", ("ray_head", "slurm_cluster")),
             _Item("tests/integration/test_ray_only.py::test_a", ("ray_head",)),
             _Item("tests/integration/test_plain.py::T::test_b", ())]
    assert shard_of_modules(items) == {"tests/integration/test_mix.py": "slurm",
                                       "tests/integration/test_ray_only.py": "rest",
                                       "tests/integration/test_plain.py": "rest"}


def test_the_balance_list_names_modules_that_exist_and_moves_them() -> None:
    root = Path(__file__).resolve().parents[2]
    for module in SLURM_SHARD_EXTRA:
        assert (root / module).is_file(), module
        assert shard_of_modules([_Item(f"{module}::test_x", ())]) == {module: "slurm"}
