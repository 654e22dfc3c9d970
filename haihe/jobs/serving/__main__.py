"""``python -m haihe.jobs.serving --model org/name:3 --mlflow-url URL``: the model server of a Slurm serving job."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from haihe.jobs.serving.http_server import serve_forever
from haihe.jobs.serving.predictor import Predictor, ServeConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m haihe.jobs.serving", description=__doc__)
    parser.add_argument("--model", required=True, help="zoo version to serve, org/name:version")
    parser.add_argument("--mlflow-url", default=os.environ.get("MLFLOW_TRACKING_URI", ""))
    parser.add_argument("--task", default="")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a serving job listens on its node
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--address-file", type=Path, default=None)
    args = parser.parse_args(argv)
    config = ServeConfig(model=args.model, mlflow_url=args.mlflow_url, task=args.task,
                         max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, threads=args.threads)
    predictor = Predictor.from_config(config)
    serve_forever(predictor, model=args.model, host=args.host, port=args.port, max_batch_size=args.max_batch_size,
                  batch_wait_ms=args.batch_wait_ms, address_file=args.address_file)


if __name__ == "__main__":
    main()
