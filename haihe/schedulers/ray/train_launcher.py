"""The ``ray_train`` launcher: run a user's train loop on N Ray Train TorchTrainer workers (DDP).

Runs as a Ray job's entrypoint (the backend renders the line)::

    python -m haihe.schedulers.ray.train_launcher --workers 2 --cpus-per-worker 1 -- TARGET [ARGS...]

``TARGET`` names the user's code: ``pkg.module``, ``pkg.module:fn``, ``script.py`` or ``script.py:fn``
(relative to the job's working directory). The function (``train_loop_per_worker`` unless named) takes one
``config`` dict: ``{"args": [ARGS...], "name": ..., "num_workers": N}``; it uses ``ray.train.report`` to report
metrics and checkpoints and ``ray.train.get_checkpoint()`` to resume. Torch's process group is set up before it
runs (gloo on CPU, nccl on GPU).

Checkpoints go to ``HAIHE_CHECKPOINT_URI``: ``s3://bucket/prefix`` (endpoint from ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL``; the job's temporary credentials from
``HAIHE_STORAGE_CREDENTIALS_URL``, else keys from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or
a local directory; Ray's default when unset. A run with the same ``--name`` and storage resumes from its latest
checkpoint. Before starting the workers the launcher waits (``HAIHE_RAY_TRAIN_WAIT_S``, default 120 s) for their
resources and exits 75 with the reason if they never free up: Ray Train would otherwise wait forever.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_FUNCTION = "train_loop_per_worker"
EXIT_NO_RESOURCES = 75  # EX_TEMPFAIL: the cluster never had the workers' resources free
RESULT_PREFIX = "HAIHE_TRAIN_RESULT "


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m haihe.schedulers.ray.train_launcher")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--name", default="haihe-train")
    p.add_argument("target", help="module[:fn] or script.py[:fn]")
    p.add_argument("args", nargs=argparse.REMAINDER)
    ns = p.parse_args(list(argv))
    if ns.workers < 1:
        p.error("--workers must be at least 1")
    if ns.args and ns.args[0] == "--":
        ns.args = ns.args[1:]
    return ns


def load_function(target: str, cwd: Path | None = None) -> Callable[..., Any]:
    """``module[:fn]`` or ``path.py[:fn]`` → the user's train loop."""
    spec, _, fn_name = target.partition(":")
    fn_name = fn_name or DEFAULT_FUNCTION
    base = cwd or Path.cwd()
    if spec.endswith(".py"):
        path = (base / spec).resolve()
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise SystemExit(f"train_launcher: cannot load {path}")
        module = importlib.util.module_from_spec(module_spec)
        # Ray pickles the function by reference to its module: make the module importable by that name.
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        if str(base) not in sys.path:
            sys.path.insert(0, str(base))
        module = importlib.import_module(spec)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise SystemExit(f"train_launcher: {spec} has no function {fn_name}(config)")
    return fn


def storage(uri: str | None) -> tuple[str | None, Any]:
    """``HAIHE_CHECKPOINT_URI`` → (storage_path, pyarrow filesystem or None)."""
    if not uri:
        return None, None
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return str(Path(uri).expanduser().resolve()), None
    from pyarrow import fs

    endpoint = (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    )
    kwargs: dict[str, Any] = {
        "access_key": os.environ.get("AWS_ACCESS_KEY_ID"),
        "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": os.environ.get("AWS_SESSION_TOKEN"),
        "region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    }
    broker = os.environ.get("HAIHE_STORAGE_CREDENTIALS_URL")
    if broker:
        kwargs.update(broker_credentials(broker, os.environ.get("HAIHE_JOB_TOKEN", "")))
    if endpoint:
        ep = urlsplit(endpoint)
        kwargs["endpoint_override"] = ep.netloc or ep.path
        kwargs["scheme"] = ep.scheme or "http"
        kwargs["force_virtual_addressing"] = False
    return f"{parts.netloc}{parts.path}".rstrip("/"), fs.S3FileSystem(**kwargs)


def broker_credentials(url: str, token: str) -> dict[str, str]:
    """The job's temporary S3 credentials from the platform's broker, asked to last the walltime (pyarrow's
    filesystem cannot refresh them; the broker caps them at walltime + margin). The same call as
    ``haihe.datasets.credentials.fetch``, which this package may not import."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"train_launcher: HAIHE_STORAGE_CREDENTIALS_URL={url!r} is not http(s)")
    request = urllib.request.Request(url, data=json.dumps({"duration_s": 7 * 24 * 3600}).encode(), method="POST",  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SystemExit(f"train_launcher: no storage credentials for the checkpoints: {exc}") from None
    return {"access_key": answer["access_key"], "secret_key": answer["secret_key"],
            "session_token": answer.get("session_token") or None}


def _see_raylet_from_sandbox() -> None:
    """In the job's sandbox (its own PID namespace) Ray's driver cannot find the local raylet with ``ps``; the
    sandbox passes the raylet's node id instead (haihe.schedulers.ray.sandbox)."""
    node_id = os.environ.get("HAIHE_RAY_NODE_ID")
    if node_id:
        from ray._private import services

        services.find_node_ids = lambda: [node_id]  # Ray 2.60: the only place the driver looks for its raylet


def wait_for_resources(workers: int, cpus: float, gpus: float, timeout_s: float) -> str | None:
    """Reserve the workers' bundles once to prove they fit now; None when they do, else the reason."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cpus} | ({"GPU": gpus} if gpus else {})
    pg = placement_group([bundle] * workers, strategy="PACK")
    try:
        if pg.wait(timeout_seconds=timeout_s):
            return None
        free = ray.available_resources()
        return (
            f"{workers} workers x {bundle} never became free within {timeout_s:g}s; "
            f"free now: CPU={free.get('CPU', 0):g} GPU={free.get('GPU', 0):g} "
            "(Serve replicas or other jobs hold the rest)"
        )
    finally:
        remove_placement_group(pg)


def run_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "haihe-train"


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    # pyarrow's S3 client sends checksums JuiceFS/MinIO gateways refuse (HTTP 411) unless told not to.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    fn = load_function(ns.target)
    _see_raylet_from_sandbox()
    ray.init()  # the job's cluster (RAY_ADDRESS is set by the job supervisor)
    wait_s = float(os.environ.get("HAIHE_RAY_TRAIN_WAIT_S", "120"))
    reason = wait_for_resources(ns.workers, ns.cpus_per_worker, ns.gpus_per_worker, wait_s)
    if reason:
        print(f"train_launcher: not starting: {reason}", file=sys.stderr, flush=True)
        return EXIT_NO_RESOURCES
    storage_path, filesystem = storage(os.environ.get("HAIHE_CHECKPOINT_URI"))
    use_gpu = ns.gpus_per_worker > 0
    resources = {"CPU": ns.cpus_per_worker} | ({"GPU": ns.gpus_per_worker} if use_gpu else {})
    trainer = TorchTrainer(
        fn,
        train_loop_config={"args": list(ns.args), "name": ns.name, "num_workers": ns.workers},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=ns.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=run_name(ns.name), storage_path=storage_path, storage_filesystem=filesystem),
    )
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    print(RESULT_PREFIX + json.dumps({"metrics": result.metrics, "checkpoint": checkpoint}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
