"""The platform ↔ runtime contract: variables in (RuntimeEnv), exit codes out."""

from __future__ import annotations

import signal

import pytest

from haihe.errors import HaiheError, InvalidInput, NotFound, StorageUnavailable, TrackingUnavailable
from haihe.jobs.runtime.contract import (
    DataError,
    DistInitError,
    ExitCode,
    RegistryError,
    RequeueRequested,
    RuntimeEnv,
    describe_exit,
    exit_code_for,
    parse_dataset,
)


def test_round_trip_through_the_environment() -> None:
    env = RuntimeEnv(job_id="j-1", org="acme", project="vision", user="ada", experiment="acme/vision",
                     tracking_uri="http://mlflow:5000", dataset="acme/digits@v3", cache_dir="/scratch/haihe", s3_endpoint="http://s3:9000",
                     s3_access_key="AK", s3_secret_key="SECRET", checkpoint_uri="s3://ckpt/j-1",
                     checkpoint_every=50, checkpoint_keep=3, register_as="acme/cnn", from_zoo="acme/base@production",
                     array_index=2, params={"lr": 0.1}, sweep=({"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3}),
                     tracking_wait_s=12.5)
    environ = env.to_environ()
    assert environ["HAIHE_CHECKPOINT_EVERY"] == "50" and environ["AWS_SECRET_ACCESS_KEY"] == "SECRET"
    assert environ["HAIHE_TRACKING_WAIT_S"] == "12.5"
    back = RuntimeEnv.from_environ(environ)
    assert back.to_environ() == environ
    assert back.effective_params() == {"lr": 0.3}
    assert "SECRET" not in repr(back)
    tags = back.tags()
    assert tags["haihe.job_id"] == "j-1" and tags["haihe.dataset"] == "acme/digits@v3"
    assert back.zoo_source is not None and back.zoo_source.alias == "production"


def test_defaults() -> None:
    env = RuntimeEnv.from_environ({"HAIHE_ORG": "acme", "HAIHE_PROJECT": "p1"})
    assert env.experiment == "acme/p1" and env.checkpoint_keep == 2 and env.checkpoint_every == 0
    assert env.datasets_bucket == "haihe-datasets" and env.cache_dir
    assert env.tracking_wait_s == 90 and "HAIHE_TRACKING_WAIT_S" not in env.to_environ()
    assert RuntimeEnv.from_environ({}).experiment == "haihe"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("HAIHE_PARAMS", "{not json"), ("HAIHE_PARAMS", "[1]"), ("HAIHE_SWEEP", '{"a": 1}'), ("HAIHE_SWEEP", "[1]"),
     ("HAIHE_CHECKPOINT_EVERY", "often"), ("HAIHE_CHECKPOINT_EVERY", "-1"), ("HAIHE_CHECKPOINT_KEEP", "0"),
     ("HAIHE_DATASET", "Acme/digits@v1"), ("HAIHE_DATASET", "acme/digits@v0"), ("HAIHE_REGISTER_AS", "acme/m@x"),
     ("HAIHE_FROM_ZOO", "acme"), ("HAIHE_ARRAY_INDEX", "one"), ("HAIHE_TRACKING_WAIT_S", "-1"),
     ("HAIHE_TRACKING_WAIT_S", "nan")],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(InvalidInput) as err:
        RuntimeEnv.from_environ({variable: value})
    assert err.value.field == variable


def test_sweep_index_out_of_range() -> None:
    env = RuntimeEnv.from_environ({"HAIHE_SWEEP": '[{"lr": 1}]', "HAIHE_ARRAY_INDEX": "4"})
    with pytest.raises(InvalidInput) as err:
        env.effective_params()
    assert err.value.field == "HAIHE_ARRAY_INDEX"


def test_dataset_references() -> None:
    assert parse_dataset("acme/digits@v12").version == 12
    assert parse_dataset("acme/digits").version is None
    assert parse_dataset("acme/digits@latest").version is None
    assert str(parse_dataset("acme/digits@v2")) == "acme/digits@v2"


@pytest.mark.parametrize(
    ("exc", "code"),
    [(RequeueRequested(10, signal.SIGUSR1), 75), (DataError("x"), 4), (RegistryError("x"), 7),
     (DistInitError("x"), 8), (TrackingUnavailable("x"), 5), (StorageUnavailable("x"), 6), (InvalidInput("x"), 3),
     (NotFound("x"), 3), (HaiheError("x"), 1), (ZeroDivisionError(), 1)],
)
def test_exceptions_map_to_exit_codes(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_exit_codes_are_distinct_and_described() -> None:
    values = [c.value for c in ExitCode]
    assert len(values) == len(set(values))
    assert describe_exit(0) == "succeeded"
    assert "requeue" in describe_exit(75)
    assert "MLflow" in describe_exit(5)
    assert describe_exit(137) == "killed by SIGKILL (out of memory, walltime or cancelled)"
    assert describe_exit(143) == "killed by SIGTERM"
    assert describe_exit(42) == "the program exited with code 42"


def test_the_rendered_job_environment_is_the_contract_read_back_on_the_node() -> None:
    """One writer, one reader: ``jobs.render`` writes a job's environment only through ``RuntimeEnv.to_environ``,
    and the node's ``RuntimeEnv.from_environ`` reads back every fact the platform meant (was: a hand-written
    dict beside the contract, which only tests used)."""
    import ast
    from pathlib import Path

    from haihe.jobs import render
    from haihe.jobs.spec import validate_spec

    spec = validate_spec({"name": "t", "recipe": "finetune", "dataset": {"name": "acme/digits", "version": 3},
                          "model": {"from_zoo": "public/base@production"}, "register": {"name": "tuned"},
                          "checkpoint": {"every": 25, "keep": 4}, "sweep": {"lr": [0.1, 0.2]},
                          "tracking": {"experiment": "ablation"}, "env": {"MY_FLAG": "1"}})
    ctx = render.RenderContext(job_id="J1", org="acme", project="vision", user="ada", node_python="/usr/bin/python3",
                               mlflow_url="http://api/mlflow", mlflow_token="tok-m", s3_endpoint="http://s3:9000",
                               job_token="tok-j", storage_credentials_url="http://api/creds",
                               code_uri="s3://code/b.tar.gz", checkpoint_uri="s3://ckpt/J1", dataset="acme/digits@v3",
                               attempt=2, extra_env={"HAIHE_CACHE_DIR": "/scratch"})
    environ = render.render_launch(spec, ctx).env
    back = RuntimeEnv.from_environ(environ)
    assert (back.job_id, back.attempt, back.org, back.project, back.user) == ("J1", 2, "acme", "vision", "ada")
    assert back.experiment == "acme/vision/ablation" and back.tracking_uri == "http://api/mlflow"
    assert back.tracking_token == "tok-m" and back.job_token == "tok-j" and back.credentials_url == "http://api/creds"
    assert back.dataset == "acme/digits@v3" and back.from_zoo == "public/base@production"
    assert back.register_as == "acme/tuned" and back.code_uri == "s3://code/b.tar.gz"
    assert (back.checkpoint_uri, back.checkpoint_every, back.checkpoint_keep) == ("s3://ckpt/J1", 25, 4)
    assert [dict(p) for p in back.sweep] == [{"lr": 0.1}, {"lr": 0.2}] and back.cache_dir == "/scratch"
    assert environ["MY_FLAG"] == "1" and environ["AWS_ENDPOINT_URL"] == "http://s3:9000"
    assert "tok-m" not in repr(back) and "tok-j" not in repr(back)
    source = ast.parse(Path(render.__file__).read_text())
    written = [n.value for n in ast.walk(source) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and n.value.startswith(("HAIHE_", "MLFLOW_", "AWS_"))]
    assert written == [], f"jobs/render.py writes contract variables itself: {written}"
