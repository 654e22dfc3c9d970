"""``python -m haihe.jobs.runtime [--recipe NAME | -- COMMAND...]``: what runs on every rank of a job.

Steps: read the contract (``RuntimeEnv``), find this process's rank (``distributed.detect``), unpack the code
bundle and stage the dataset version, then either run a built-in recipe in-process (process group, MLflow run on
rank 0, checkpoints, model registration) or the user's command as a child (torchrun-style variables, the MLflow
run id on rank 0, signals forwarded). Every failure ends in an exit code of ``contract.ExitCode``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from haihe.errors import HaiheError, InvalidInput, NotFound, StorageUnavailable
from haihe.jobs.runtime.contract import (
    DataError,
    ExitCode,
    RuntimeEnv,
    describe_exit,
    exit_code_for,
)
from haihe.jobs.runtime.distributed import DistEnv, PreInit, detect
from haihe.jobs.runtime.environment import Prepared

if TYPE_CHECKING:
    from haihe.jobs.runtime.container import Container
    from haihe.jobs.runtime.context import JobContext

log = logging.getLogger("haihe.runtime")
MAX_CREDENTIALS_S = 7 * 24 * 3600  # the broker caps it at the walltime + margin


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from haihe.jobs.recipes import names

    p = argparse.ArgumentParser(
        prog="python -m haihe.jobs.runtime",
        description="Run a Haihe job on this node: a built-in recipe, or a command after '--'.",
    )
    p.add_argument("--recipe", choices=names(), help="built-in recipe to run")
    p.add_argument("--list-recipes", action="store_true", help="print the built-in recipes and exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- program [args...]")
    ns = p.parse_args(list(argv))
    if ns.command and ns.command[0] == "--":
        ns.command = ns.command[1:]
    if not ns.list_recipes and bool(ns.recipe) == bool(ns.command):
        p.error("give either --recipe NAME or -- COMMAND...")
    return ns


def _setup_logging(dist: DistEnv | None) -> None:
    rank = "-" if dist is None else str(dist.rank)
    logging.basicConfig(level=os.environ.get("HAIHE_LOG_LEVEL", "INFO"), stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank {rank}] %(name)s %(levelname)s: %(message)s")  # fmt: skip


def _stage(env: RuntimeEnv, dist: DistEnv) -> tuple[Path | None, str | None, Path | None]:
    """Code bundle and dataset version onto this node; errors become DataError (or StorageUnavailable)."""
    from haihe.jobs.runtime.staging import stage_code, stage_dataset

    code_dir = stage_code(env)
    if not env.dataset:
        return None, None, code_dir
    from haihe.datasets.hashing import IntegrityError

    try:
        staged = stage_dataset(env, local_main=dist.is_local_main)
    except StorageUnavailable:
        raise
    except (NotFound, IntegrityError) as exc:
        raise DataError(f"dataset {env.dataset}: {exc.message}", field="HAIHE_DATASET") from None
    return (staged[0] if staged else None), (staged[1] if staged else None), code_dir


def _s3_environ(env: RuntimeEnv) -> dict[str, str]:
    """AWS_* variables for the user's own S3 clients (boto3, pyarrow): the job's temporary credentials, asked to
    last its walltime (plus the platform's margin) since a static variable cannot be refreshed. Best effort: a
    command that never touches S3 must not fail because the broker did."""
    if not env.credentials_url:
        return {}
    from haihe.datasets.credentials import fetch

    try:
        c = fetch(env.credentials_url, env.job_token, duration_s=MAX_CREDENTIALS_S)
    except StorageUnavailable as exc:
        log.warning("no S3 credentials for the command: %s", exc.message)
        return {}
    return {"AWS_ACCESS_KEY_ID": c["access_key"], "AWS_SECRET_ACCESS_KEY": c["secret_key"],
            "AWS_SESSION_TOKEN": c.get("session_token") or "", "AWS_CREDENTIALS_EXPIRATION": c["expiration"]}


def _child_env(env: RuntimeEnv, dist: DistEnv, data_dir: Path | None, run_id: str | None) -> dict[str, str]:
    child = dict(os.environ)
    child.update(dist.child_environ())
    child["HAIHE_RANK"] = str(dist.rank)
    if data_dir is not None:
        child["HAIHE_DATA_DIR"] = str(data_dir)
    child.pop("MLFLOW_RUN_ID", None)
    child.update(_s3_environ(env))
    if run_id and dist.is_main:
        # mlflow.start_run() in the user's code continues the job's run; other ranks get none, so they do not log
        child["MLFLOW_RUN_ID"] = run_id
        child["MLFLOW_EXPERIMENT_NAME"] = env.experiment
    return child


def run_command(env: RuntimeEnv, dist: DistEnv, command: Sequence[str],
                own: Container | Prepared | None = None) -> int:
    from haihe.jobs.runtime import tracking
    from haihe.jobs.runtime.child import run_child

    data_dir, dataset, code_dir = _stage(env, dist)
    tracker = tracking.start(env, is_main=dist.is_main)
    if dataset:
        tracker.set_tags({"haihe.dataset": dataset})
    tracker.log_params(env.effective_params())
    child = _child_env(env, dist, data_dir, tracker.run_id)
    cwd = str(code_dir) if code_dir else None
    if isinstance(own, Prepared):  # the job's Python packages: its python first on PATH
        from haihe.jobs.runtime.environment import activate

        child = activate(child, own)
    elif own is not None:  # the command runs inside the image; the runtime stays out here
        command, child, cwd = _in_container(own, command, child, data_dir, code_dir)
    code = run_child(command, child, cwd)
    tracker.end("FINISHED" if code == 0 else "KILLED" if code == ExitCode.REQUEUE else "FAILED")
    return code


def _in_container(box: Container, command: Sequence[str], child: dict[str, str], data_dir: Path | None,
                  code_dir: Path | None) -> tuple[list[str], dict[str, str], str | None]:
    import tempfile

    from haihe.jobs.runtime.container import write_env_file

    binds: dict[str, str] = {}
    if code_dir is not None:
        binds[str(code_dir)] = str(code_dir)
    if data_dir is not None:
        binds[str(data_dir.resolve())] = str(data_dir)
    env_file = write_env_file(Path(tempfile.gettempdir()) / "haihe-container.env", child)
    argv = box.command(command, env_file=env_file, workdir=str(code_dir) if code_dir else None, binds=binds)
    return argv, box.tool_environ(child), None


def run_recipe(env: RuntimeEnv, dist: DistEnv, name: str) -> int:
    from haihe.jobs.recipes import get
    from haihe.jobs.runtime import tracking
    from haihe.jobs.runtime.checkpoint import Checkpointer, StopSignals, open_store
    from haihe.jobs.runtime.context import JobContext
    from haihe.jobs.runtime.distributed import destroy_process_group, init_process_group

    recipe = get(name)
    signals = StopSignals().install()  # before the (slow) setup: a signal during it still checkpoints later
    data_dir, dataset, _ = _stage(env, dist)
    init_process_group(dist)
    tracker: tracking.Tracker = tracking.NullTracker()
    try:
        tracker = tracking.start(env, is_main=dist.is_main, run_name=env.job_name or name,
                                 required=bool(env.register_as), wait_s=env.tracking_wait_s)
        if env.register_as and dist.is_main and not tracker.active:
            from haihe.errors import TrackingUnavailable

            raise TrackingUnavailable(f"MLflow is unavailable and the job must register {env.register_as}",
                                      component="mlflow")  # fmt: skip
        store = None
        if env.checkpoint_uri:
            from haihe.jobs.runtime.staging import s3_credentials

            store = open_store(env.checkpoint_uri, endpoint=env.s3_endpoint, access_key=env.s3_access_key,
                               secret_key=env.s3_secret_key, credentials=s3_credentials(env))  # fmt: skip
        ctx = JobContext(env=env, dist=dist, params=env.effective_params(), tracker=tracker,
                         data_dir=data_dir, dataset=dataset)  # fmt: skip
        ctx.checkpointer = Checkpointer(
            store, every=env.checkpoint_every, keep=env.checkpoint_keep, writer=dist.is_main, signals=signals,
            agree=_agreement(ctx), barrier=ctx.barrier, check_every=stop_check_every(env, dist),
        )  # fmt: skip
        tracker.set_tags({"haihe.recipe": name, **({"haihe.dataset": dataset} if dataset else {})})
        recipe(ctx)
        tracker.end("FINISHED")
        return ExitCode.OK
    except BaseException as exc:
        tracker.end("KILLED" if exit_code_for(exc) == ExitCode.REQUEUE else "FAILED")
        raise
    finally:
        signals.restore()
        destroy_process_group(dist)


def stop_check_every(env: RuntimeEnv, dist: DistEnv) -> int:
    """How often ranks agree on a stop signal: every step on CPU; every 10 under nccl, where a step can be
    ~1 ms and the agreement's gloo round trip would otherwise cost a few percent."""
    return env.stop_check_every or (10 if dist.backend == "nccl" else 1)


def _agreement(ctx: JobContext) -> Callable[[bool], bool]:
    """All ranks stop at the same step: OR of every rank's "signal seen" flag (a CPU all-reduce; with nccl a gloo
    side group, so the check never waits on the GPU stream)."""
    if not ctx.dist.is_distributed:
        return lambda flag: flag
    import torch
    import torch.distributed as tdist

    if not tdist.is_initialized():
        return lambda flag: flag
    group = tdist.new_group(backend="gloo") if ctx.dist.backend == "nccl" else None

    def agree(flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX, group=group)
        return bool(t.item())

    return agree


def _enter_environment(env: RuntimeEnv, dist: DistEnv, args: Sequence[str],
                       recipe: bool) -> tuple[RuntimeEnv, Container | Prepared]:
    """The job's own environment (spec ``environment:``), built or found in the cache. Python packages: a recipe
    runs again inside the environment (never returns); a command gets it first on its PATH. An image: pulled, for
    :func:`run_command` to wrap the command in. Each node's first rank tells the platform; EnvironmentBuildError
    names what failed."""
    import dataclasses
    import socket

    from haihe.jobs.runtime import container as containers
    from haihe.jobs.runtime import environment as envs
    from haihe.jobs.runtime.staging import stage_code

    req = envs.Request.parse(env.environment)
    root = Path(env.env_dir) if env.env_dir else Path(env.cache_dir) / "envs"
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    token = env.job_token or env.tracking_token
    box: containers.Container | None = None
    try:
        if req.image:
            config = containers.ContainerConfig.parse(env.container)
            box = containers.prepare(config, req.image, env_dir=root, pinned=req.pinned,
                                     runroot=containers.short_runroot(str(root)))
            prepared = envs.Prepared(root, box.ref, f"image {req.image}\n", box.seconds, cached=False,
                                     image=req.image)
        else:
            code_dir = stage_code(env) if req.needs_code else None
            prepared = envs.Builder(root, keep_days=env.env_keep_days).prepare(req, code_dir)
    except HaiheError as exc:
        if dist.is_local_main:
            envs.report(env.environment_url, token, None, error=exc.message, node=node)
        raise
    log.info("%s on %s", prepared.describe(), node)
    if dist.is_local_main:
        envs.report(env.environment_url, token, prepared, node=node)
    os.environ["HAIHE_ENVIRONMENT_REF"] = prepared.ref
    if box is not None:
        return dataclasses.replace(env, environment_ref=box.ref), box
    if not recipe:  # the command finds the environment's python first; this process needs none of it
        return dataclasses.replace(env, environment_ref=prepared.ref), prepared
    sys.stdout.flush()
    sys.stderr.flush()
    python = str(prepared.python)
    os.execve(python, [python, "-m", "haihe.jobs.runtime", *args], envs.activate(os.environ, prepared))  # noqa: S606


def main(argv: Sequence[str] | None = None, *, preinit: PreInit | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    ns = parse_args(args)
    if ns.list_recipes:
        from haihe.jobs.recipes import describe

        for name, doc in describe().items():
            print(f"{name:14} {doc}")
        return ExitCode.OK
    dist: DistEnv | None = None
    _setup_logging(None)
    try:
        env = RuntimeEnv.from_environ()
        _private_files(env)
        dist = detect(os.environ, preinit=preinit)
        _setup_logging(dist)
        log.info("job %s rank %d/%d (%s, %s) local %d/%d", env.job_id or "-", dist.rank, dist.world_size,
                 dist.source, dist.backend, dist.local_rank, dist.local_world_size)  # fmt: skip
        own: Container | Prepared | None = None
        if env.environment and not env.environment_ref and preinit is None:
            env, own = _enter_environment(env, dist, args, recipe=bool(ns.recipe))
        if ns.recipe and own is not None:
            raise InvalidInput("a recipe cannot run inside a container image", field="HAIHE_ENVIRONMENT")
        code = int(run_recipe(env, dist, ns.recipe)) if ns.recipe else run_command(env, dist, ns.command, own)
        if code == ExitCode.REQUEUE and dist.rank == 0:
            _ask_slurm_to_requeue()
        return code
    except Exception as exc:
        code = exit_code_for(exc)
        if code == ExitCode.FAILED:
            traceback.print_exc()
        message = exc.message if isinstance(exc, HaiheError) else f"{type(exc).__name__}: {exc}"
        log.error("exit %d (%s): %s", code, describe_exit(code), message)
        if code == ExitCode.REQUEUE and (dist is None or dist.rank == 0):
            _ask_slurm_to_requeue()
        return int(code)


def _private_files(env: RuntimeEnv) -> None:
    """Files the job makes are its own: umask 077, and a private TMPDIR (``haihe-job-<uid>-<job>``, 0700) so a
    node's shared /tmp never shows one tenant's scratch files to another. The node cache keeps its own place."""
    import tempfile

    os.umask(0o077)
    os.environ.setdefault("HAIHE_CACHE_DIR", env.cache_dir)  # the cache is shared by this user's jobs: keep it
    base = tempfile.gettempdir()
    private = os.path.join(base, f"haihe-job-{os.getuid()}-{env.job_id or os.getpid()}")
    try:
        os.makedirs(private, mode=0o700, exist_ok=True)
        st = os.lstat(private)
        if st.st_uid != os.getuid() or (st.st_mode & 0o077):
            log.warning("not using %s as TMPDIR: not this job's private directory", private)
            return
    except OSError as exc:
        log.warning("no private TMPDIR under %s: %s", base, exc)
        return
    os.environ["TMPDIR"] = tempfile.tempdir = private


def _ask_slurm_to_requeue() -> None:
    """After a checkpoint on SIGUSR1 (walltime near), ask Slurm to requeue this job: an exit code alone does not,
    and torchrun reports its workers' 75 as 1. After `scontrol requeue` or preemption Slurm is already on it and
    this second request is refused harmlessly."""
    import subprocess

    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=30)
        log.info("asked Slurm to requeue job %s: %s", job_id, (result.stderr or result.stdout or "ok").strip())
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not ask Slurm to requeue job %s: %s", job_id, exc)
