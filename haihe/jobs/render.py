"""Render a validated JobSpec into the scheduler's neutral Launch (pure: no I/O, no database).

The job's code runs under the node runtime (``python -m haihe.jobs.runtime``), which reads its instructions from
``HAIHE_*`` environment variables: the contract between the platform and what runs on compute nodes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from haihe.jobs.runtime.contract import DEFAULT_CHECKPOINT_KEEP, DEFAULT_ENV_KEEP_DAYS, RuntimeEnv
from haihe.jobs.spec import JobSpec
from haihe.schedulers.base import Launch, Launcher, Resources


@dataclass(frozen=True)
class RenderContext:
    """What the platform knows that the spec does not: identity, endpoints, credentials, resolved references."""

    job_id: str
    org: str
    project: str
    user: str
    node_python: str
    mlflow_url: str = ""
    mlflow_token: str = ""  # the job's credential at the platform's MLflow proxy (its own <org>/<project> only)
    s3_endpoint: str = ""
    # no S3 keys: the job posts job_token to storage_credentials_url for short-lived, job-scoped credentials
    # (docs/storage-credentials.md); the same token authenticates it at the MLflow proxy
    job_token: str = ""
    storage_credentials_url: str = ""
    code_uri: str | None = None  # s3://bucket/key of the packed workdir
    checkpoint_uri: str | None = None
    output_uri: str | None = None  # where batch-infer and other outputs go
    datasets_bucket: str = "haihe-datasets"
    dataset: str | None = None  # org/name@vN, resolved from the spec's "latest"
    account: str | None = None  # Slurm account of the org/project when the cluster has accounting
    unix_user: str | None = None  # the Unix account the job runs as (schedulers that run jobs as a user)
    attempt: int = 1  # 2, 3, ... when the platform runs the job again after a lost attempt
    environment_lock: str | None = None  # the lock a first run resolved: a resubmit installs exactly it
    environment_url: str = ""  # where the runtime reports the environment it resolved
    environment_ref: str | None = None  # with an image: the image id the first run used (a resubmit checks it)
    container: str = ""  # HAIHE_CONTAINER: how the site's nodes run images (JSON), when it allows them
    env_keep_days: float = DEFAULT_ENV_KEEP_DAYS  # environments unused this long are removed from a node's cache
    extra_env: Mapping[str, str] = field(default_factory=dict)


def job_experiment(org: str, project: str, custom: str | None) -> str:
    """A job logs into its project's experiment ``<org>/<project>``, or ``<org>/<project>/<custom>``: the
    platform's MLflow proxy refuses writes anywhere else (docs/tracking.md)."""
    base = f"{org}/{project}"
    if not custom:
        return base
    if custom == base or custom.startswith(base + "/"):
        return custom
    return f"{base}/{custom}"


def runtime_env(spec: JobSpec, ctx: RenderContext) -> dict[str, str]:
    """The job's environment: the runtime contract (:class:`RuntimeEnv`, written only here and read back on the node
    with ``RuntimeEnv.from_environ``), then the platform's extras, then the user's own variables."""
    brokered = bool(ctx.s3_endpoint and ctx.storage_credentials_url and ctx.job_token)
    checkpoint = spec.checkpoint
    contract = RuntimeEnv(
        job_id=ctx.job_id,
        attempt=ctx.attempt,
        org=ctx.org,
        project=ctx.project,
        user=ctx.user,
        experiment=job_experiment(ctx.org, ctx.project, spec.tracking.experiment),
        tracking_uri=ctx.mlflow_url,
        tracking_token=ctx.mlflow_token,
        s3_endpoint=ctx.s3_endpoint,
        credentials_url=ctx.storage_credentials_url if brokered else "",
        job_token=ctx.job_token if brokered or spec.environment else "",
        code_uri=ctx.code_uri or "",
        output_uri=ctx.output_uri or "",
        datasets_bucket=ctx.datasets_bucket,
        dataset=ctx.dataset if ctx.dataset and spec.dataset else "",
        dataset_mount=spec.dataset.mount if ctx.dataset and spec.dataset else "",
        from_zoo=spec.model.from_zoo if spec.model else "",
        register_as=f"{ctx.org}/{spec.registration.name}" if spec.registration else "",
        checkpoint_every=checkpoint.every if checkpoint else 0,
        checkpoint_keep=checkpoint.keep if checkpoint else DEFAULT_CHECKPOINT_KEEP,
        checkpoint_uri=(ctx.checkpoint_uri or "") if checkpoint else "",
        sweep=tuple(spec.sweep_points()) if spec.sweep else (),
        environment=environment_request(spec, ctx),
        environment_url=ctx.environment_url if spec.environment else "",
        container=ctx.container if spec.environment and spec.environment.image else "",
        env_keep_days=ctx.env_keep_days,
    )
    env = contract.to_environ()
    env.update(ctx.extra_env)
    env.update(spec.env)  # user values last; reserved prefixes are refused by the spec
    return env


def environment_request(spec: JobSpec, ctx: RenderContext) -> str:
    """``HAIHE_ENVIRONMENT``: what the spec asks for, or the exact lock an earlier run of the job resolved."""
    if spec.environment is None:
        return ""
    if spec.environment.image:
        pinned = {"pinned": ctx.environment_ref} if ctx.environment_ref else {}
        return json.dumps({"image": spec.environment.image, **pinned}, sort_keys=True)
    if ctx.environment_lock:
        return json.dumps({"locked": ctx.environment_lock})
    return json.dumps(spec.environment.model_dump(exclude_none=True), sort_keys=True)


RAY_TRAIN_TARGET = "haihe.jobs.runtime.ray_entry:train_loop_per_worker"


def command(spec: JobSpec, ctx: RenderContext) -> tuple[str, ...]:
    """The runtime's command line; under ``ray_train`` it is the launcher's target (a function in each worker)."""
    base: tuple[str, ...] = (ctx.node_python, "-m", "haihe.jobs.runtime")
    if spec.launcher == "ray_train":
        base = (RAY_TRAIN_TARGET,)
    if spec.recipe:
        return (*base, "--recipe", spec.recipe)
    assert spec.entrypoint
    return (*base, "--", *spec.entrypoint)


def render_launch(spec: JobSpec, ctx: RenderContext) -> Launch:
    r = spec.resources
    return Launch(
        tag=ctx.job_id,
        name=spec.name,
        command=command(spec, ctx),
        resources=Resources(nodes=r.nodes, tasks_per_node=r.tasks_per_node, cpus_per_task=r.cpus_per_task,
                            gpus_per_node=r.gpus_per_node, mem_gb=r.mem_gb, time_limit_min=r.time_limit),
        launcher=Launcher(spec.launcher),
        env=runtime_env(spec, ctx),
        account=ctx.account,
        user=ctx.unix_user,
        partition=r.partition,
        qos=r.qos,
        array_size=spec.sweep_size() if spec.sweep else None,
        requeue=spec.checkpoint is not None,
        signal_before_end_s=120 if spec.checkpoint is not None else None,
    )
