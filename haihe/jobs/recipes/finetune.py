"""``finetune``: continue training a zoo model (HAIHE_FROM_ZOO) on a dataset version (HAIHE_DATASET).

The version holds ``.npz`` files with inputs ``x`` (the model's input shape after the batch axis) and integer labels
``y``; ``test.npz`` (or files under ``test/``) is the held-out split, otherwise a seeded ``test_fraction`` of the
rows. Parameters: epochs (3), lr (0.001), batch_size (32), seed (0), test_fraction (0.2). Registers the result as
HAIHE_REGISTER_AS with lineage to the source model and the data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from haihe.jobs.runtime.context import JobContext
from haihe.jobs.runtime.contract import DataError


def _datasets(root: Path, test_fraction: float, seed: int) -> tuple[Any, Any]:
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from haihe.jobs.recipes.arrays import array_files, load_xy

    def is_test(p: Path) -> bool:
        return p.stem == "test" or "test" in p.relative_to(root).parts[:-1]

    files = [p for p in array_files(root) if p.suffix == ".npz"]
    parts = {False: [p for p in files if not is_test(p)], True: [p for p in files if is_test(p)]}
    if not parts[False]:
        raise DataError("no training .npz files in the dataset", field="HAIHE_DATASET")

    def stack(paths: list[Path]) -> tuple[Any, Any]:
        pairs = [load_xy(p, need_y=True) for p in paths]
        return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])

    x, y = stack(parts[False])
    if parts[True]:
        tx, ty = stack(parts[True])
    else:
        order = np.random.default_rng(seed).permutation(len(x))
        cut = max(1, int(len(x) * test_fraction))
        tx, ty, x, y = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]

    def tensors(a: Any, b: Any) -> Any:
        return TensorDataset(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.long))

    return tensors(x, y), tensors(tx, ty)


def run(ctx: JobContext) -> None:
    import torch

    from haihe.jobs.recipes.training import TrainConfig, train_classifier

    if ctx.data_dir is None:
        raise DataError("finetune needs a dataset version (HAIHE_DATASET)", field="HAIHE_DATASET")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(ctx.dist.local_world_size, 1)))
    cfg = TrainConfig(epochs=ctx.param("epochs", 3), lr=ctx.param("lr", 0.001, float),
                      batch_size=ctx.param("batch_size", 32), seed=ctx.param("seed", 0))  # fmt: skip
    test_fraction = ctx.param("test_fraction", 0.2, float)
    model = ctx.source_model()
    train, test = _datasets(ctx.data_dir, test_fraction, cfg.seed)
    ctx.log_params({"recipe": "finetune", "from_zoo": ctx.env.from_zoo, "dataset": ctx.dataset or "",
                    "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "seed": cfg.seed,
                    "world_size": ctx.dist.world_size})  # fmt: skip
    result = train_classifier(ctx, model, train, test, cfg)
    version = ctx.finish_model(model.cpu(), sample=test.tensors[0][:8],
                               description=f"finetune of {ctx.env.from_zoo} on {ctx.dataset}")
    ctx.result(steps=result.steps, resumed_from=result.resumed_from, final_loss=result.final_loss,
               test_loss=result.test_loss, test_accuracy=result.test_accuracy, registered_version=version,
               run_id=ctx.tracker.run_id)  # fmt: skip
