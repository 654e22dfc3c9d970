"""The classification training loop the recipes share: DDP with a DistributedSampler, per-step loss to MLflow,
checkpoints through the runtime's Checkpointer, exact resume (same epoch, same position in the epoch)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from haihe.jobs.runtime.context import JobContext
from haihe.jobs.runtime.modes import set_training

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    lr: float = 0.005
    batch_size: int = 32  # per rank
    seed: int = 0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int
    final_loss: float  # mean training loss of the last epoch over all ranks (identical on every rank)
    test_loss: float
    test_accuracy: float


def evaluate(model: nn.Module, data: Dataset[Any], device: torch.device, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) over the whole data set (every rank evaluates the same model on all of it)."""
    set_training(model, False)
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size):
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    set_training(model, True)
    return loss_sum / max(n, 1), correct / max(n, 1)


def train_classifier(ctx: JobContext, model: nn.Module, train: Dataset[Any], test: Dataset[Any],
                     cfg: TrainConfig) -> TrainResult:  # fmt: skip
    torch.manual_seed(cfg.seed)
    device = ctx.device()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = 0
    checkpoint = ctx.checkpointer.latest(map_location=str(device))
    if checkpoint is not None:
        model.load_state_dict(checkpoint.state["model"])
        optimizer.load_state_dict(checkpoint.state["optimizer"])
        start = checkpoint.step
        log.info("resumed at step %d from %s", start, checkpoint.name)
    net: nn.Module = model
    if ctx.dist.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    world, rank = ctx.dist.world_size, ctx.dist.rank
    sampler: DistributedSampler[Any] = DistributedSampler(train, num_replicas=world, rank=rank, seed=cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, sampler=sampler)
    per_epoch = len(loader)
    total = cfg.epochs * per_epoch
    step, final_loss = start, math.nan

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}

    for epoch in range(start // per_epoch, cfg.epochs):
        sampler.set_epoch(epoch)  # the same order as the interrupted attempt saw
        skip = start - epoch * per_epoch if epoch == start // per_epoch else 0
        loss_sum, batches = 0.0, 0
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            value = float(loss.detach())
            loss_sum, batches = loss_sum + value, batches + 1
            ctx.log_metrics({"loss": value}, step)
            ctx.checkpointer.step_end(step, state)
        summed, count = ctx.all_reduce([loss_sum, float(batches)])
        final_loss = summed / count if count else math.nan
        ctx.log_metrics({"epoch_loss": final_loss, "epoch": float(epoch + 1)}, step)
        log.info("epoch %d/%d: loss %.4f (step %d/%d)", epoch + 1, cfg.epochs, final_loss, step, total)
    test_loss, accuracy = evaluate(model, test, device)
    ctx.log_metrics({"test_loss": test_loss, "test_accuracy": accuracy, "steps": float(step)}, step)
    return TrainResult(step, start, final_loss, test_loss, accuracy)
