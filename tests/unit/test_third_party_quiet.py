"""No Haihe process lets MLflow's client phone home (its telemetry thread raced os.environ readers in jobs)."""

from __future__ import annotations

import os
import subprocess
import sys

_MLFLOW_QUIET_ANYWAY = {"MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS"}


def test_importing_haihe_turns_mlflow_telemetry_off_before_mlflow_loads() -> None:
    # MLflow stays quiet by itself under pytest or a CI variable: a job's environment has neither
    env = {k: v for k, v in os.environ.items() if k not in _MLFLOW_QUIET_ANYWAY}
    code = ("import haihe, mlflow\n"
            "from mlflow.telemetry.client import get_telemetry_client\n"
            "from mlflow.telemetry.utils import is_telemetry_disabled\n"
            "print(is_telemetry_disabled(), get_telemetry_client() is None)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True"], out.stdout


def test_a_site_that_sets_the_variable_keeps_its_value() -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "false"}
    code = "import haihe, os; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "false", out.stderr[-2000:]
