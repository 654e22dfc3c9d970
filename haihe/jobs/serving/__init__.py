"""Model serving code that runs on Ray Serve replicas and in Slurm serving jobs (never imports the platform).

``predictor`` turns a zoo model into ``predict(rows) -> rows``; ``ray_app`` wraps it in a Ray Serve deployment with
``@serve.batch`` dynamic batching and autoscaling; ``http_server`` serves it over plain HTTP for a Slurm job, with
the same batching (``batcher``), and reports its address when ready.
"""

from haihe.jobs.serving.predictor import Predictor, ServeConfig, join_rows, split_rows

__all__ = ["Predictor", "ServeConfig", "join_rows", "split_rows"]
