"""Haihe: AI supercomputing as a service on Slurm and Ray."""

import os

__version__ = "0.1.0"

# MLflow's client starts a telemetry thread on import that tries to reach the internet; when that fails (compute
# nodes and this platform's hosts have no such route) the thread deletes one of its own environment variables,
# racing any thread that reads os.environ at that moment: a training job's first MLflow call then died with
# KeyError('_MLFLOW_TELEMETRY_SESSION_ID'). Every Haihe process (API, CLI, the job runtime and what it launches,
# the MLflow server it starts) imports this first, so none sends telemetry. A site may still set the variable.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
