"""Command lines and environments of the local services (pure: nothing is started)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ports import PortPlan
from haihe.cluster.postgres import PostgresServer
from haihe.cluster.procs import StartupError
from haihe.cluster.s3 import S3Server
from haihe.cluster.stack import StackConfig, client_env, load_or_create_secrets
from haihe.errors import InvalidInput

SECRET = "s3cr3t-value-xyz"


def _s3(tmp_path: Path) -> S3Server:
    return S3Server(tmp_path / "s3", 21900, "akey", SECRET, juicefs="/opt/bin/juicefs")


def test_s3_gateway_argv_keeps_state_under_home_and_secrets_out_of_argv(tmp_path: Path) -> None:
    s3 = _s3(tmp_path)
    argv = s3.gateway_argv()
    assert argv[:2] == ["/opt/bin/juicefs", "gateway"]
    assert argv[-2:] == [f"sqlite3://{tmp_path}/s3/meta.db", "127.0.0.1:21900"]
    assert argv[argv.index("--cache-dir") + 1] == str(tmp_path / "s3" / "jfscache")
    assert argv[argv.index("--metrics") + 1] == "127.0.0.1:0"  # never the shared default port
    assert "--multi-buckets" in argv
    assert "--keep-etag" in argv
    assert not any(SECRET in a or "akey" in a for a in argv + s3.format_argv())
    env = s3.gateway_env({"PATH": "/usr/bin"})
    assert env == {"PATH": "/usr/bin", "MINIO_ROOT_USER": "akey", "MINIO_ROOT_PASSWORD": SECRET}
    assert SECRET not in repr(s3)


def test_s3_format_argv_uses_a_file_volume_under_home(tmp_path: Path) -> None:
    argv = _s3(tmp_path).format_argv()
    assert argv[1] == "format"
    assert argv[argv.index("--storage") + 1] == "file"
    assert argv[argv.index("--bucket") + 1] == f"{tmp_path}/s3/s3data/"
    assert argv[-2:] == [f"sqlite3://{tmp_path}/s3/meta.db", "haihe"]


def test_s3_endpoint_and_client_env(tmp_path: Path) -> None:
    s3 = _s3(tmp_path)
    assert s3.endpoint == "http://127.0.0.1:21900"
    env = s3.client_env()
    assert env["AWS_ACCESS_KEY_ID"] == "akey"
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["MLFLOW_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:21900"


def test_s3_refuses_keys_minio_would_reject(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="secret key"):
        S3Server(tmp_path, 21900, "akey", "short")


def test_mlflow_argv_serves_artifacts_from_s3_with_one_worker(tmp_path: Path) -> None:
    m = MlflowServer(tmp_path / "m", 21901, "http://127.0.0.1:21900", "akey", SECRET, bucket="mlflow")
    argv = m.argv()
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/m/mlflow.db"
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://mlflow/artifacts"
    assert "--serve-artifacts" in argv
    assert argv[argv.index("--workers") + 1] == "1"
    assert argv[argv.index("--port") + 1] == "21901"
    assert not any(SECRET in a for a in argv)
    env = m.env({"PATH": "/usr/bin", "MLFLOW_TRACKING_URI": "http://elsewhere"})
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:21900"
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "MLFLOW_TRACKING_URI" not in env
    assert m.url == "http://127.0.0.1:21901"
    assert m.client_env() == {"MLFLOW_TRACKING_URI": "http://127.0.0.1:21901"}
    assert SECRET not in repr(m)


def test_postgres_argv_listens_on_loopback_with_private_socket_dir(tmp_path: Path) -> None:
    pg = PostgresServer(tmp_path / "pg", 21902, bin_dir=Path("/pg/bin"), os_user="postgres")
    argv = pg.server_argv()
    assert argv[0] == "/pg/bin/postgres"
    assert argv[argv.index("-h") + 1] == "127.0.0.1"
    assert argv[argv.index("-p") + 1] == "21902"
    assert argv[argv.index("-k") + 1] == str(tmp_path / "pg" / "sock")
    assert argv[argv.index("-D") + 1] == str(tmp_path / "pg" / "data")
    init = pg.initdb_argv()
    assert init[0] == "/pg/bin/initdb"
    assert "--auth=trust" in init
    assert pg.url("abc") == "postgresql+psycopg://postgres@127.0.0.1:21902/abc"


def test_postgres_runs_as_the_postgres_user_only_when_root(tmp_path: Path) -> None:
    pg = PostgresServer(tmp_path, 21902)
    assert pg.os_user == ("postgres" if os.geteuid() == 0 else None)


@pytest.mark.parametrize("bad", ["", "UPPER", "a-b", "x; drop", "1abc", "a" * 64])
def test_postgres_rejects_unsafe_database_names_before_connecting(tmp_path: Path, bad: str) -> None:
    pg = PostgresServer(tmp_path, 1)  # nothing listens on port 1: a connection attempt would fail otherwise
    with pytest.raises(InvalidInput):
        pg.create_database(bad)


def test_stack_config_endpoints_follow_the_port_plan(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path, ports=PortPlan(23000), postgres=True)
    assert config.endpoints() == {
        "s3": "http://127.0.0.1:23000",
        "mlflow": "http://127.0.0.1:23001",
        "postgres": "postgresql+psycopg://postgres@127.0.0.1:23002/postgres",
    }
    assert config.all_buckets() == ("haihe-datasets", "mlflow", "haihe-code")


def test_stack_config_adds_the_mlflow_bucket_and_refuses_mlflow_without_s3(tmp_path: Path) -> None:
    assert StackConfig(home=tmp_path, buckets=("data",)).all_buckets() == ("data", "mlflow")
    with pytest.raises(InvalidInput) as info:
        StackConfig(home=tmp_path, s3=False)
    assert info.value.field == "s3"


def test_client_env_points_clients_at_the_stack(tmp_path: Path) -> None:
    config = StackConfig(home=tmp_path, ports=PortPlan(23000))
    keys = load_or_create_secrets(config.secrets_path)
    env = client_env(config, keys)
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:23001"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:23000"
    assert env["AWS_ACCESS_KEY_ID"] == keys.s3_access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == keys.s3_secret_key
