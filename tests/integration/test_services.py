"""The real local services, started by the haihe.cluster bring-up code: S3 (JuiceFS gateway), MLflow,
PostgreSQL, and the LocalStack that composes them for ``haihe up``."""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from pathlib import Path

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ports import PortPlan
from haihe.cluster.postgres import PostgresServer
from haihe.cluster.procs import StartupError, free_port, port_open
from haihe.cluster.s3 import S3Server
from haihe.cluster.stack import DEFAULT_BUCKETS, LocalStack, StackConfig
from haihe.errors import InvalidInput


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _wait_closed(host: str, port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(host, port):
            return True
        time.sleep(0.1)
    return False


def _put(server: S3Server, bucket: str, key: str, data: bytes) -> str:
    result = server.client().put_object(bucket, key, io.BytesIO(data), len(data))
    return str(result.etag)


def _get(server: S3Server, bucket: str, key: str) -> bytes:
    response = server.client().get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


# ---- S3 ----
@pytest.mark.s3
def test_s3_put_get_round_trip_keeps_bytes_and_md5_etag(s3_server: S3Server) -> None:
    bucket = _name("t-rt")
    s3_server.ensure_buckets([bucket])
    data = os.urandom(300_000)
    etag = _put(s3_server, bucket, "dir/blob.bin", data)
    assert _get(s3_server, bucket, "dir/blob.bin") == data
    # --keep-etag: a single-part upload's ETag is the content MD5, which clients use to verify uploads
    assert etag.strip('"') == hashlib.md5(data).hexdigest()
    listed = [o.object_name for o in s3_server.client().list_objects(bucket, recursive=True)]
    assert listed == ["dir/blob.bin"]


@pytest.mark.s3
def test_s3_default_buckets_exist_and_ensure_is_idempotent(s3_server: S3Server) -> None:
    s3_server.ensure_buckets(DEFAULT_BUCKETS)  # a second time: no error
    names = {b.name for b in s3_server.client().list_buckets()}
    assert set(DEFAULT_BUCKETS) <= names


@pytest.mark.s3
def test_s3_invalid_bucket_name_is_refused(s3_server: S3Server) -> None:
    with pytest.raises(InvalidInput) as info:
        s3_server.ensure_buckets(["Not_A_Bucket"])
    assert info.value.field == "bucket"


@pytest.mark.s3
def test_s3_readiness_is_a_real_authenticated_call(s3_server: S3Server) -> None:
    assert s3_server.is_ready()
    wrong = S3Server(s3_server.home, s3_server.port, s3_server.access_key, "not-the-secret")
    assert not wrong.is_ready()


@pytest.mark.s3
def test_s3_refuses_a_port_taken_by_another_process(s3_server: S3Server, services_home: Path) -> None:
    other = S3Server(services_home / _name("s3-taken"), s3_server.port, "haihetest", "another-secret")
    with pytest.raises(StartupError, match="already taken"):
        other.start(timeout=30)
    assert s3_server.is_ready()


@pytest.mark.s3
def test_s3_restart_reuses_the_volume(services_home: Path) -> None:
    server = S3Server(services_home / _name("s3-restart"), free_port(), "haihetest", "restart-secret-1")
    try:
        server.start(timeout=120)
        server.ensure_buckets(["keep"])
        data = os.urandom(50_000)
        _put(server, "keep", "obj", data)
        assert server.stop()
        assert not server.is_running()
        assert _wait_closed(server.host, server.port)
        assert not server.is_ready()

        server.start(timeout=120)
        assert _get(server, "keep", "obj") == data
    finally:
        server.stop()


# ---- MLflow ----
@pytest.mark.mlflow
@pytest.mark.s3
def test_mlflow_run_params_metrics_and_artifact_round_trip(
    mlflow_server: MlflowServer, s3_server: S3Server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    assert mlflow_server.is_ready()
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment_id = client.create_experiment(_name("exp"))
    run = client.create_run(experiment_id, tags={"haihe.job": "j-1"})
    run_id = run.info.run_id
    client.log_param(run_id, "lr", "0.01")
    for step, loss in enumerate([0.9, 0.5, 0.2]):
        client.log_metric(run_id, "loss", loss, step=step)
    payload = tmp_path / "model-card.md"
    body = f"card {uuid.uuid4().hex}\n"
    payload.write_text(body)
    client.log_artifact(run_id, str(payload), artifact_path="docs")
    client.set_terminated(run_id)

    fetched = client.get_run(run_id)
    assert fetched.data.params == {"lr": "0.01"}
    assert fetched.data.tags["haihe.job"] == "j-1"
    assert fetched.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.9, 0.5, 0.2]
    assert [f.path for f in client.list_artifacts(run_id, "docs")] == ["docs/model-card.md"]
    out = tmp_path / "download"
    out.mkdir()
    local = client.download_artifacts(run_id, "docs/model-card.md", str(out))
    assert Path(local).read_text() == body

    # the artifact bytes really live in the S3 server's "mlflow" bucket, not on MLflow's disk
    keys = [
        o.object_name
        for o in s3_server.client().list_objects("mlflow", prefix="artifacts/", recursive=True)
        if o.object_name and o.object_name.endswith(f"{run_id}/artifacts/docs/model-card.md")
    ]
    assert len(keys) == 1
    assert _get(s3_server, "mlflow", keys[0]).decode() == body


# ---- PostgreSQL ----
@pytest.mark.postgres
def test_postgres_database_table_round_trip(postgres_server: PostgresServer) -> None:
    import sqlalchemy as sa

    name = _name("db").replace("-", "_")
    url = postgres_server.create_database(name)
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/{name}"
    assert postgres_server.create_database(name) == url  # idempotent
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE jobs (id serial PRIMARY KEY, name text NOT NULL)"))
            conn.execute(sa.text("INSERT INTO jobs (name) VALUES (:a), (:b)"), {"a": "train", "b": "serve"})
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT name FROM jobs ORDER BY id")).scalars().all()
            db = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert rows == ["train", "serve"]
    assert db == name
    postgres_server.drop_database(name)
    with pytest.raises(Exception, match=name):
        sa.create_engine(url).connect()


@pytest.mark.postgres
def test_postgres_refuses_unsafe_database_names(postgres_server: PostgresServer) -> None:
    with pytest.raises(InvalidInput) as info:
        postgres_server.create_database('x"; DROP DATABASE postgres; --')
    assert info.value.field == "name"
    assert postgres_server.is_ready()


# ---- the composed stack (what `haihe up` runs) ----
@pytest.mark.s3
@pytest.mark.mlflow
def test_local_stack_starts_reports_stops_and_reuses_its_state(services_home: Path, port_plan: PortPlan) -> None:
    # an offset inside this session's port range, clear of the session fixtures (base..base+2, +10, +100..)
    config = StackConfig(
        home=services_home / _name("stack"),
        ports=PortPlan(port_plan.base + 400),
        ray=False,
        buckets=("haihe-datasets", "haihe-code"),
    )
    messages: list[str] = []
    stack = LocalStack(config)
    try:
        stack.start(progress=messages.append)
        assert stack.status() == {"s3": True, "mlflow": True}
        assert "s3: starting" in messages
        assert any(m.startswith("mlflow: ready in") for m in messages)
        s3 = stack.services["s3"]
        assert isinstance(s3, S3Server)
        assert {b.name for b in s3.client().list_buckets()} == {"haihe-datasets", "haihe-code", "mlflow"}
        _put(s3, "haihe-datasets", "kept", b"across restarts")
        keys = (stack.secrets.s3_access_key, stack.secrets.s3_secret_key)
        assert (config.secrets_path.stat().st_mode & 0o777) == 0o600
    finally:
        stack.stop()
    assert stack.status() == {"s3": False, "mlflow": False}

    again = LocalStack(config)  # a second `haihe up` on the same home
    try:
        assert (again.secrets.s3_access_key, again.secrets.s3_secret_key) == keys
        again.start()
        assert all(again.status().values())
        s3 = again.services["s3"]
        assert isinstance(s3, S3Server)
        assert _get(s3, "haihe-datasets", "kept") == b"across restarts"
    finally:
        again.stop()
