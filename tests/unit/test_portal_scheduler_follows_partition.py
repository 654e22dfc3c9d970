"""The new-job form: the scheduler follows the chosen partition (issue 17: Ray was selected while Slurm's
partitions were listed, so picking `gpu` failed at first)."""

from __future__ import annotations

from typing import Any

from haihe.portal.routes.submit import scheduler_of_partition

PARTS: dict[str, dict[str, Any]] = {
    "slurm/cpu": {"scheduler": "slurm", "partition": "cpu"},
    "slurm/gpu": {"scheduler": "slurm", "partition": "gpu"},
    "ray/default": {"scheduler": "ray", "partition": "default"},
    "slurm-b/gpu": {"scheduler": "slurm-b", "partition": "gpu"},
}


def test_a_partition_only_one_scheduler_has_picks_that_scheduler() -> None:
    assert scheduler_of_partition({"scheduler": "ray", "partition": "cpu"}, PARTS, "ray") == "slurm"
    assert scheduler_of_partition({"scheduler": "", "partition": "cpu"}, PARTS, "ray") == "slurm"


def test_the_chosen_scheduler_stays_when_it_has_the_partition_or_the_choice_is_ambiguous() -> None:
    assert scheduler_of_partition({"scheduler": "slurm-b", "partition": "gpu"}, PARTS, "ray") == "slurm-b"
    assert scheduler_of_partition({"scheduler": "ray", "partition": "gpu"}, PARTS, "ray") == "ray"  # two own it
    assert scheduler_of_partition({"scheduler": "ray", "partition": ""}, PARTS, "ray") == "ray"
    assert scheduler_of_partition({"scheduler": "ray", "partition": "nope"}, PARTS, "ray") == "ray"
