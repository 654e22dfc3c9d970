"""DDP training steps through the Haihe job runtime vs a bare torchrun script, on the same device(s).

The "runtime" workers use what a recipe gets: ``distributed.detect`` + ``init_process_group``, a ``JobContext``
whose ``Checkpointer.step_end`` runs the stop-signal agreement every step (a gloo side group under nccl), and
per-step loss logging (buffered; no MLflow server here). The "bare" workers are the textbook torchrun script.
Both train the same MLP with the same data for the same steps; the ratio is runtime steps/s over bare steps/s
(target >= 0.97x). Runs are interleaved (bare, runtime, bare, runtime ...) and the best of each is kept, because
shared machines are noisy.

    python bench/bench_runtime_ddp.py                 # GPUs present: nccl, one rank per GPU, large model
    python bench/bench_runtime_ddp.py --cpu           # gloo, 2 ranks, small model (works on a laptop)
    python bench/bench_runtime_ddp.py --out results.json

Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "BENCH_RESULT "


def build(width: int, depth: int) -> Any:
    from torch import nn

    layers: list[Any] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def train_steps(model: Any, device: Any, args: argparse.Namespace, after_step: Any) -> float:
    """Run warmup + measured steps; return measured steps per second (ranks synchronised at both ends)."""
    import torch
    import torch.distributed as tdist

    torch.manual_seed(0)
    x = torch.randn(args.batch, args.width, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def one(step: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        value = float(loss.detach()) if step % args.log_every == 0 else None  # both modes read the loss alike
        after_step(step, value)

    for s in range(args.warmup):
        one(s + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tdist.barrier()
    start = time.perf_counter()
    for s in range(args.steps):
        one(args.warmup + s + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tdist.barrier()
    return args.steps / (time.perf_counter() - start)


def worker_bare(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if torch.cuda.is_available() and not args.cpu else "gloo"
    local = int(os.environ["LOCAL_RANK"])
    if backend == "nccl":
        torch.cuda.set_device(local)
    tdist.init_process_group(backend)
    device = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    model = DistributedDataParallel(build(args.width, args.depth).to(device),
                                    device_ids=[local] if backend == "nccl" else None)
    rate = train_steps(model, device, args, lambda step, loss: None)
    if tdist.get_rank() == 0:
        print(PREFIX + json.dumps({"mode": "bare", "steps_per_s": rate, "backend": backend}), flush=True)
    tdist.destroy_process_group()


def worker_runtime(args: argparse.Namespace) -> None:
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    from haihe.jobs.runtime.checkpoint import Checkpointer, StopSignals
    from haihe.jobs.runtime.context import JobContext
    from haihe.jobs.runtime.contract import RuntimeEnv
    from haihe.jobs.runtime.distributed import destroy_process_group, detect, init_process_group
    from haihe.jobs.runtime.main import _agreement, stop_check_every

    env = dict(os.environ)
    if args.cpu:
        env["HAIHE_DIST_BACKEND"] = "gloo"
    dist = detect(env)
    init_process_group(dist)
    if not tdist.is_initialized():  # one rank (one GPU): the runtime needs no group, DDP does
        tdist.init_process_group(dist.backend)
    runtime_env = RuntimeEnv.from_environ()
    ctx = JobContext(env=runtime_env, dist=dist)
    signals = StopSignals().install()
    ctx.checkpointer = Checkpointer(None, signals=signals, agree=_agreement(ctx), barrier=ctx.barrier,
                                    check_every=stop_check_every(runtime_env, dist))
    device = ctx.device()
    model = DistributedDataParallel(build(args.width, args.depth).to(device),
                                    device_ids=[dist.local_rank] if dist.backend == "nccl" else None)

    def after(step: int, loss: float | None) -> None:
        if loss is not None:
            ctx.log_metrics({"loss": loss}, step)
        ctx.checkpointer.step_end(step, lambda: {"model": model.module.state_dict()})

    rate = train_steps(model, device, args, after)
    if dist.is_main:
        print(PREFIX + json.dumps({"mode": "runtime", "steps_per_s": rate, "backend": dist.backend}), flush=True)
    signals.restore()
    destroy_process_group(dist)


def launch(mode: str, args: argparse.Namespace, nproc: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            str(Path(__file__).resolve()), "--worker", mode, *passthrough(args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    return dict(json.loads(lines[-1][len(PREFIX):]))


def passthrough(args: argparse.Namespace) -> list[str]:
    out = [f"--width={args.width}", f"--depth={args.depth}", f"--batch={args.batch}", f"--steps={args.steps}",
           f"--warmup={args.warmup}", f"--log-every={args.log_every}"]
    return out + (["--cpu"] if args.cpu else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=["bare", "runtime"])
    p.add_argument("--cpu", action="store_true", help="gloo on CPU with 2 ranks and a small model")
    p.add_argument("--nproc", type=int, default=0, help="ranks (default: GPUs, or 2 on CPU)")
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--log-every", type=int, default=1, help="read the loss (a device sync) every N steps")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.worker:
        (worker_bare if args.worker == "bare" else worker_runtime)(args)
        return

    import torch

    gpus = torch.cuda.device_count()
    args.cpu = args.cpu or gpus == 0
    nproc = args.nproc or (2 if args.cpu else gpus)
    args.width = args.width or (256 if args.cpu else 4096)
    args.batch = args.batch or (64 if args.cpu else 512)
    args.steps = args.steps or (100 if args.cpu else 300)
    runs: dict[str, list[float]] = {"bare": [], "runtime": []}
    backend = ""
    for _ in range(args.rounds):
        for mode in ("bare", "runtime"):
            result = launch(mode, args, nproc)
            runs[mode].append(result["steps_per_s"])
            backend = result["backend"]
            print(f"{mode:8} {result['steps_per_s']:9.2f} steps/s", flush=True)
    best = {mode: max(rates) for mode, rates in runs.items()}
    report = {
        "bench": "runtime_ddp",
        "device": torch.cuda.get_device_name(0) if not args.cpu else "cpu",
        "backend": backend,
        "ranks": nproc,
        "model": {"width": args.width, "depth": args.depth, "batch_per_rank": args.batch},
        "steps": args.steps,
        "steps_per_s": runs,
        "best": best,
        "ratio_runtime_over_bare": best["runtime"] / best["bare"],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
