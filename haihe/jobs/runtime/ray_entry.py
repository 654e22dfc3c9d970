"""Run the runtime inside Ray Train workers: the ``ray_train`` launcher's target
``haihe.jobs.runtime.ray_entry:train_loop_per_worker`` with the runtime's own arguments
(``--recipe digits-cnn`` or ``-- command...``).

Ray Train has already formed torch's process group; its context supplies rank and world, so ``detect`` reports the
"ray" source and the runtime neither initialises nor destroys the group. Ray runs the loop in a worker thread,
where Python cannot install signal handlers: stop signals are then Ray's business (checkpoints still happen every
``HAIHE_CHECKPOINT_EVERY`` steps and a restarted job resumes from them).
"""

from __future__ import annotations

from typing import Any

from haihe.jobs.runtime.contract import ExitCode, describe_exit
from haihe.jobs.runtime.distributed import PreInit


def preinit_from_ray() -> PreInit:
    import ray.train

    c = ray.train.get_context()
    return PreInit(rank=c.get_world_rank(), world_size=c.get_world_size(), local_rank=c.get_local_rank(),
                   local_world_size=c.get_local_world_size(), node_rank=c.get_node_rank())  # fmt: skip


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from haihe.jobs.runtime.main import main

    code = main(list(config.get("args", [])), preinit=preinit_from_ray())
    if code != ExitCode.OK:
        raise RuntimeError(f"haihe runtime exited {code}: {describe_exit(code)}")
