"""``digits-cnn``: a small CNN on scikit-learn's bundled handwritten digits (1,797 8x8 images; no download).

Parameters (HAIHE_PARAMS): epochs (8), lr (0.005), batch_size per rank (32), seed (0), channels (16), hidden (64).
Reaches > 0.95 test accuracy in a few seconds on one CPU core; registers the model when HAIHE_REGISTER_AS is set.
"""

from __future__ import annotations

import os

from haihe.jobs.runtime.context import JobContext


def digits_tensors(seed: int = 0) -> tuple[object, object]:
    """(train, test) TensorDatasets: 80/20 stratified split, pixels scaled to [0, 1], shape N x 1 x 8 x 8."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import TensorDataset

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=digits.target)
    return TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_test], y[idx_test])


def run(ctx: JobContext) -> None:
    import torch

    from haihe.jobs.recipes.models import DigitsCNN
    from haihe.jobs.recipes.training import TrainConfig, train_classifier

    # one intra-op thread per rank on the node: ranks sharing cores would otherwise oversubscribe them
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(ctx.dist.local_world_size, 1)))
    cfg = TrainConfig(
        epochs=ctx.param("epochs", 8), lr=ctx.param("lr", 0.005, float), batch_size=ctx.param("batch_size", 32),
        seed=ctx.param("seed", 0),
    )  # fmt: skip
    channels, hidden = ctx.param("channels", 16), ctx.param("hidden", 64)
    ctx.log_params({"recipe": "digits-cnn", "epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                    "seed": cfg.seed, "channels": channels, "hidden": hidden, "world_size": ctx.dist.world_size,
                    "backend": ctx.dist.backend, "data": "sklearn.datasets.load_digits"})  # fmt: skip
    torch.manual_seed(cfg.seed)
    model = DigitsCNN(channels, hidden)
    train, test = digits_tensors(cfg.seed)
    result = train_classifier(ctx, model, train, test, cfg)  # type: ignore[arg-type]
    if ctx.dataset is None:  # the lineage names the data even when it ships with scikit-learn
        ctx.dataset = "builtin:sklearn.datasets.load_digits"
    # a few test images: the logged signature then says float32 [-1, 1, 8, 8] in, [-1, 10] out
    sample = test.tensors[0][:8]  # type: ignore[attr-defined]
    version = ctx.finish_model(model.cpu(), sample=sample, description="digits-cnn: CNN on scikit-learn digits")
    ctx.result(steps=result.steps, resumed_from=result.resumed_from, final_loss=result.final_loss,
               test_loss=result.test_loss, test_accuracy=result.test_accuracy, registered_version=version,
               run_id=ctx.tracker.run_id)  # fmt: skip
