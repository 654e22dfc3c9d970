"""A hostile tenant's job: it tries everything it should not be able to do and reports each attempt.

It is run as a job's entrypoint (``python -c <this file's text>``) on Slurm and on Ray; the test passes what org A's
code could learn or guess about org B and the platform in the ``PROBE_ARGS`` variable (JSON) and reads one line
``HAIHE_PROBE <json>`` back from the log: ``{attempt: {"ok": bool, "detail": str}}``, where ``ok`` means the attack
WORKED. Standard library plus boto3/httpx only (both are on the nodes); no Haihe imports, as a tenant's code has none
it can trust.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ARGS: dict[str, Any] = json.loads(os.environ.get("PROBE_ARGS", "{}"))
RESULTS: dict[str, dict[str, Any]] = {}


def attempt(name: str, fn: Callable[[], str]) -> None:
    """Run one attack; any exception means it failed (good), a returned string is what it got (bad)."""
    try:
        got = fn()
        RESULTS[name] = {"ok": True, "detail": str(got)[:300]}
    except Exception as exc:
        RESULTS[name] = {"ok": False, "detail": f"{type(exc).__name__}: {str(exc)[:200]}"}


# -- identity -------------------------------------------------------------------------------------------------------
def _uid_root() -> str:
    if os.getuid() == 0 or os.geteuid() == 0:
        return f"running as uid {os.getuid()}"
    raise PermissionError(f"uid {os.getuid()}")


def _uid_platform() -> str:
    if os.getuid() in set(ARGS.get("platform_uids", [])):
        return f"running as the platform's uid {os.getuid()}"
    raise PermissionError(f"uid {os.getuid()}")


def _become_root() -> str:
    os.setuid(0)
    return "setuid(0) worked"


# -- credentials ----------------------------------------------------------------------------------------------------
def _s3(access: str, secret: str, token: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=ARGS["s3_endpoint"], aws_access_key_id=access,
                        aws_secret_access_key=secret, aws_session_token=token, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=5))


def candidate_credentials() -> list[tuple[str, str, str | None, str]]:
    """Every key pair the job can find: its environment, files it can read, and its own per-job credentials."""
    found: list[tuple[str, str, str | None, str]] = []
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        found.append((env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"), "env"))
    for key in ("MINIO_ROOT_USER", "HAIHE_S3_ACCESS_KEY"):
        if env.get(key):
            secret = env.get(key.replace("USER", "PASSWORD").replace("ACCESS", "SECRET"), "")
            found.append((env[key], secret, None, f"env {key}"))
    for path in ARGS.get("secret_files", []):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        flat = json.dumps(data)
        found.append((str(data.get("s3_access_key", flat)), str(data.get("s3_secret_key", "")), None, path))
    own = own_credentials()
    if own:
        found.append((*own, "own per-job credentials"))
    return found


_OWN: list[tuple[str, str, str | None]] = []


def own_credentials() -> tuple[str, str, str | None] | None:
    """The job's own short-lived credentials, from the platform's broker with the job's token."""
    if _OWN:
        return _OWN[0]
    url = os.environ.get("HAIHE_STORAGE_CREDENTIALS_URL")
    token = os.environ.get("HAIHE_JOB_TOKEN") or os.environ.get("MLFLOW_TRACKING_TOKEN")
    if not url or not token:
        return None
    import httpx

    r = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if r.status_code != 200:
        return None
    body = r.json()
    _OWN.append((body["access_key"], body["secret_key"], body.get("session_token")))
    return _OWN[0]


def _list_buckets() -> str:
    worked = []
    for access, secret, token, where in candidate_credentials():
        try:
            names = [b["Name"] for b in _s3(access, secret, token).list_buckets()["Buckets"]]
            worked.append(f"{where}: {names}")
        except Exception:
            continue
    if worked:
        return "; ".join(worked)
    raise PermissionError("no credential lists buckets")


def _read_object(bucket: str, key: str) -> Callable[[], str]:
    def go() -> str:
        got = []
        for access, secret, token, where in candidate_credentials():
            try:
                body = _s3(access, secret, token).get_object(Bucket=bucket, Key=key)["Body"].read(64)
                got.append(f"{where}: {body!r}")
            except Exception:
                continue
        if got:
            return "; ".join(got)
        raise PermissionError(f"s3://{bucket}/{key} refused to every credential")

    return go


def _write_object(bucket: str, key: str) -> Callable[[], str]:
    def go() -> str:
        for access, secret, token, where in candidate_credentials():
            try:
                _s3(access, secret, token).put_object(Bucket=bucket, Key=key, Body=b"owned")
                return f"{where} wrote s3://{bucket}/{key}"
            except Exception:
                continue
        raise PermissionError(f"write to s3://{bucket}/{key} refused")

    return go


def _write_own_output() -> str:
    """The one write that must work: the job's own output prefix (a control for the refusals above)."""
    own = own_credentials()
    if own is None:
        raise PermissionError("no per-job credentials")
    bucket, _, prefix = os.environ["HAIHE_OUTPUT_URI"].removeprefix("s3://").partition("/")
    _s3(*own).put_object(Bucket=bucket, Key=f"{prefix}/probe.txt", Body=b"mine")
    return "wrote own output"


def _mlflow_read_other(path: str) -> Callable[[], str]:
    def go() -> str:
        import httpx

        url = os.environ.get("MLFLOW_TRACKING_URI", "")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN", "")
        if not url:
            raise PermissionError("no tracking URI")
        r = httpx.get(url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        if r.status_code == 200 and r.content:
            return f"HTTP 200 {r.content[:80]!r}"
        raise PermissionError(f"HTTP {r.status_code}")

    return go


# -- files and processes --------------------------------------------------------------------------------------------
def _mlflow_direct(url: str) -> Callable[[], str]:
    def go() -> str:
        import httpx

        r = httpx.get(url, timeout=10)
        if r.status_code == 200:
            return f"HTTP 200 {r.content[:80]!r}"
        raise PermissionError(f"HTTP {r.status_code}")

    return go


def _ray_jobs_api(url: str) -> Callable[[], str]:
    """A job submitted straight to the Ray head's Jobs API would run outside any sandbox."""

    def go() -> str:
        import httpx

        r = httpx.post(url.rstrip("/") + "/api/jobs/", json={"entrypoint": "id"}, timeout=10)
        if r.status_code == 200:
            return f"submitted {r.text[:120]}"
        raise PermissionError(f"HTTP {r.status_code}")

    return go


def _connect(port: int) -> Callable[[], str]:
    def go() -> str:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return f"connected to 127.0.0.1:{port}"

    return go


def _read_path(path: str) -> Callable[[], str]:
    def go() -> str:
        p = Path(path)
        if p.is_dir():
            return f"listed {sorted(os.listdir(p))[:10]}"
        with open(p, "rb") as f:
            return f"read {f.read(64)!r}"

    return go


def _signal(pid: int) -> Callable[[], str]:
    def go() -> str:
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL delivered to pid {pid}"

    return go


def main() -> None:
    attempt("run as uid 0", _uid_root)
    attempt("run as the platform's uid", _uid_platform)
    attempt("become root with setuid(0)", _become_root)
    attempt("list buckets with any credential found", _list_buckets)
    for what, uri in sorted(ARGS.get("other_objects", {}).items()):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        attempt(f"read org B's {what} ({uri})", _read_object(bucket, key))
    for what, uri in sorted(ARGS.get("forbidden_writes", {}).items()):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        attempt(f"write {what} ({uri})", _write_object(bucket, key))
    for what, path in sorted(ARGS.get("mlflow_paths", {}).items()):
        attempt(f"read org B's {what} through MLflow", _mlflow_read_other(path))
    for what, url in sorted(ARGS.get("mlflow_direct", {}).items()):
        attempt(f"read org B's {what} straight from the MLflow server", _mlflow_direct(url))
    if ARGS.get("ray_dashboard"):
        attempt("submit an unsandboxed job to the Ray head's Jobs API", _ray_jobs_api(ARGS["ray_dashboard"]))
    for what, port in sorted(ARGS.get("tcp", {}).items()):
        attempt(f"connect to {what}", _connect(int(port)))
    for what, path in sorted(ARGS.get("paths", {}).items()):
        attempt(f"read {what} ({path})", _read_path(path))
    for what, pid in sorted(ARGS.get("pids", {}).items()):
        attempt(f"signal {what} (pid {pid})", _signal(int(pid)))
    attempt("control: write own output prefix", _write_own_output)
    print("HAIHE_PROBE " + json.dumps(RESULTS, sort_keys=True), flush=True)
    sys.stdout.flush()
    time.sleep(0.1)


main()
