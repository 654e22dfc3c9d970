"""Storage, tracking and database faults with the platform doing real work (issue #11): S3 stopped during an
upload and during staging, MLflow stopped during training, PostgreSQL restarted under a live API with Ray jobs.

For each fault: what the user sees (a clear error or a 503, never a hang) and that afterwards nothing is lost or
counted twice. Every test starts its OWN instance of the service it breaks (ports from ``service_faults``), so the
session's shared services are never stopped, and records its figures for docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.postgres import PostgresServer
from haihe.cluster.procs import wait_until
from haihe.cluster.s3 import S3Server
from haihe.datasets.presigned import HttpTransport
from haihe.datasets.push import LocalBackend, push
from haihe.datasets.store import MinioStore
from haihe.datasets.upload import Uploads
from haihe.jobs.runtime.contract import ExitCode, RuntimeEnv
from tests.fixtures.figures import Figures
from tests.fixtures.platform import Tenancy, unique
from tests.integration.test_datasets_api import TOTAL_PARTS, Cli, digest, make_tree, received_parts, wait_for_parts
from tests.reliability.service_faults import (
    API_OFFSET,
    DATABASE,
    RELAY_OFFSET,
    STAGING,
    TRACKING,
    UPLOAD,
    MiB,
    Relay,
    api_process,
    error_code,
    schedulers_env,
    timed,
)

DATA_BUCKET = "haihe-datasets"


@contextlib.contextmanager
def own_s3(home: Path, port: int) -> Iterator[S3Server]:
    server = S3Server(home, port, access_key="haihefaults", secret_key=secrets.token_hex(16))
    server.start(timeout=180)
    try:
        server.ensure_buckets([DATA_BUCKET, "mlflow"])
        yield server
    finally:
        server.stop()


# -- 1. S3 down during an upload -----------------------------------------------------------------------------------
@pytest.mark.s3
def test_s3_down_during_upload_is_a_quick_503_and_resumes_without_resending(tmp_path: Path,
                                                                          figures: Figures) -> None:
    with own_s3(tmp_path / "s3", UPLOAD.s3) as s3:
        relay = Relay(UPLOAD.base + RELAY_OFFSET, s3.port, rate=8 * MiB)
        env = {"HAIHE_DATABASE_URL": f"sqlite:///{tmp_path / 'haihe.db'}", "HAIHE_S3_ENDPOINT": relay.endpoint,
               "HAIHE_S3_ACCESS_KEY": s3.access_key, "HAIHE_S3_SECRET_KEY": s3.secret_key,
               "HAIHE_RECONCILE_INTERVAL_S": "0"}
        try:
            with api_process(tmp_path / "api", UPLOAD.base + API_OFFSET, env) as api:
                cli = Cli(api.url, tmp_path)
                org, _ = cli.setup()
                src = tmp_path / "src"
                want = make_tree(src)
                name = unique("outage")
                push_argv = ("datasets", "push", str(src), "--name", name, "--workers", "1")
                proc = cli.popen(*push_argv, user="alice")
                upload_id = wait_for_parts(cli, proc, org, name, at_least=1)
                s3.stop()
                stopped = time.monotonic()
                out, _ = proc.communicate(timeout=180)  # the push ends on its own: no hang
                cli_gave_up_s = round(time.monotonic() - stopped, 3)
                assert proc.returncode == 1, out
                assert "storage unavailable" in out and "run the same command again" in out.lower(), out
                assert "Traceback" not in out
                headers = {"Authorization": f"Bearer {cli.token('alice')}"}
                base = f"{api.url}/api/v1/orgs/{org}/datasets/{name}"
                status, status_s = timed(lambda: httpx.get(f"{base}/uploads/{upload_id}", headers=headers,
                                                           timeout=60))
                commit, commit_s = timed(lambda: httpx.post(f"{base}/uploads/{upload_id}/complete",
                                                            json={"hashes": {}}, headers=headers, timeout=60))
                for r in (status, commit):
                    assert r.status_code == 503 and error_code(r) == "storage_unavailable", r.text
                shown = httpx.get(base, headers=headers, timeout=30).json()
                committed_during_outage = sum(v["state"] == "committed" for v in shown["versions"])
                assert shown["latest_version"] is None and committed_during_outage == 0
                # storage returns: the same command finishes the same upload, sending only what is missing
                s3.start(timeout=180)
                done = received_parts(api.url, cli.token("alice"), org, name, upload_id)  # parts S3 holds
                result = cli.json(*push_argv, user="alice")
                assert result["resumed"] is True and result["version"] == 1
                completed_resent = result["parts_sent"] - (TOTAL_PARTS - done)
                assert completed_resent == 0, result
                dest = tmp_path / "pulled"
                cli.run("datasets", "pull", name, str(dest), user="alice")
                assert digest(dest) == want
                versions = httpx.get(base, headers=headers, timeout=30).json()["versions"]
                assert [v["state"] for v in versions] == ["committed"]
        finally:
            relay.close()
    figures.record("s3_down_during_upload", "S3 server stopped after the first part of a 44 MiB / 11-part push",
                   {"cli_exit_after_stop_s": cli_gave_up_s, "status_503_s": status_s, "complete_503_s": commit_s,
                    "parts_done_before_outage": done, "parts_sent_on_resume": result["parts_sent"],
                    "completed_parts_resent": completed_resent, "versions_committed_during_outage": 0,
                    "versions_after": len(versions), "pulled_identical": True})


# -- 2. S3 down during staging -------------------------------------------------------------------------------------
LIST_DATA = "import os; d = os.environ['HAIHE_DATA_DIR']; print('FILES', sorted(os.listdir(d)))"


def _runtime(env: RuntimeEnv, cache: Path, cwd: Path) -> tuple[list[str], dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_", "AWS_"))}
    base.update(env.to_environ())
    base.update({"HAIHE_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"})
    return [sys.executable, "-m", "haihe.jobs.runtime", "--", sys.executable, "-c", LIST_DATA], base


@pytest.mark.s3
def test_s3_down_during_staging_fails_clearly_leaves_no_trusted_cache_and_a_rerun_stages(
        tmp_path: Path, figures: Figures) -> None:
    with own_s3(tmp_path / "s3", STAGING.s3) as s3:
        org, name = f"st{uuid.uuid4().hex[:8]}", "frames"
        src = tmp_path / "src"
        (src / "shards").mkdir(parents=True)
        (src / "big.bin").write_bytes(os.urandom(24 * MiB))
        for i in range(3):
            (src / "shards" / f"s{i}.bin").write_bytes(os.urandom(MiB))
        want = digest(src)
        store = MinioStore(s3.endpoint, s3.access_key, s3.secret_key, DATA_BUCKET)
        version = push(src, LocalBackend(Uploads(store), org, name, created_by="ada"), HttpTransport()).version
        # reads come through a relay at 1 MiB/s per connection, so the download is in flight when S3 stops
        relay = Relay(STAGING.base + RELAY_OFFSET, s3.port, rate=MiB, throttle="down")
        try:
            env = RuntimeEnv(job_id=str(uuid.uuid4()), org=org, project="p", user="ada",
                             dataset=f"{org}/{name}@v{version}", s3_endpoint=relay.endpoint,
                             s3_access_key=s3.access_key, s3_secret_key=s3.secret_key)
            cache = tmp_path / "cache"
            argv, run_env = _runtime(env, cache, tmp_path)
            proc = subprocess.Popen(argv, env=run_env, cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            try:
                wait_until(lambda: relay.received >= 3 * MiB, timeout=120, what="staging under way",
                           alive=lambda: proc.poll() is None)
                fetched_before = relay.received
                s3.stop()
                stopped = time.monotonic()
                out, _ = proc.communicate(timeout=300)  # bounded retries, then an exit: no hang
            finally:
                if proc.poll() is None:
                    proc.kill()
            failed_after_s = round(time.monotonic() - stopped, 3)
            assert proc.returncode == ExitCode.STORAGE_UNAVAILABLE, out
            assert "storage unavailable" in out.lower() and "Traceback" not in out, out
            assert "FILES" not in out  # the user's command never ran on a half-staged tree
            datasets = cache / "datasets"
            marker = datasets / "trees" / org / name / f"v{version}.json"
            half_trusted = int(marker.exists())
            leftovers = [p for p in (datasets / "incoming").rglob("*") if p.is_file()]
            blobs = [p for p in (datasets / "blobs").rglob("*") if p.is_file()]
            assert half_trusted == 0 and leftovers == [] and blobs == []
            # a job that starts while S3 is still down fails the same way, without waiting long
            down, down_s = timed(lambda: subprocess.run(argv, env=run_env, cwd=tmp_path, capture_output=True,
                                                        text=True, timeout=300))
            assert down.returncode == ExitCode.STORAGE_UNAVAILABLE, down.stdout + down.stderr
            assert "storage unavailable" in down.stderr.lower() and "Traceback" not in down.stderr, down.stderr
            # S3 returns: the same job stages from scratch and runs
            s3.start(timeout=180)
            relay.rate = 1024 * MiB
            rerun, rerun_s = timed(lambda: subprocess.run(argv, env=run_env, cwd=tmp_path, capture_output=True,
                                                          text=True, timeout=300))
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            assert "FILES ['big.bin', 'shards']" in rerun.stdout
            assert marker.exists() and digest(marker.with_suffix("")) == want
        finally:
            relay.close()
    figures.record("s3_down_during_staging", "S3 server stopped while a job stages a 27 MiB dataset version",
                   {"bytes_fetched_before_outage": fetched_before, "job_exit_after_stop_s": failed_after_s,
                    "exit_code": int(proc.returncode), "half_populated_entries_trusted": half_trusted,
                    "leftover_partial_files": len(leftovers), "job_started_while_down_exit_s": down_s,
                    "rerun_after_recovery_s": rerun_s,
                    "rerun_exit_code": rerun.returncode, "rerun_staged_identical": True})


# -- 3. MLflow down during training --------------------------------------------------------------------------------
TRAIN = '''
"""Tiny SGD (fit y = 2x) through the runtime's tracker, in 3 phases of 100 steps; waits for gate files."""
import logging, sys, time
from pathlib import Path
from haihe.jobs.runtime import tracking
from haihe.jobs.runtime.contract import RuntimeEnv

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
gate = Path(sys.argv[1])
tracker = tracking.start(RuntimeEnv.from_environ(), is_main=True, run_name="blip", system_metrics=False)
print("RUN", tracker.run_id, flush=True)
w, step = 0.0, 0
for phase in range(3):
    for _ in range(100):
        x = (step % 10) / 10 + 0.1
        w -= 0.05 * 2 * (w * x - 2 * x) * x
        tracker.log_metrics({"loss": (w * x - 2 * x) ** 2, "w": w}, step)
        step += 1
    tracker.flush()
    (gate / f"phase{phase}").touch()
    deadline = time.monotonic() + 300
    while phase < 2 and not (gate / f"go{phase}").exists():
        if time.monotonic() > deadline:
            sys.exit(9)
        time.sleep(0.05)
tracker.end()
print("END", flush=True)
'''


@pytest.mark.s3
@pytest.mark.mlflow
def test_mlflow_down_during_training_loses_and_duplicates_nothing(tmp_path: Path, figures: Figures) -> None:
    from mlflow import MlflowClient

    with own_s3(tmp_path / "s3", TRACKING.s3) as s3:
        mlflow = MlflowServer(tmp_path / "mlflow", TRACKING.mlflow, s3_endpoint=s3.endpoint,
                              access_key=s3.access_key, secret_key=s3.secret_key, bucket="mlflow")
        mlflow.start(timeout=180)
        proc: subprocess.Popen[str] | None = None
        try:
            gate = tmp_path / "gate"
            gate.mkdir()
            script = tmp_path / "train.py"
            script.write_text(TRAIN)
            env = RuntimeEnv(job_id=str(uuid.uuid4()), org="faults", project="tracking", user="ada",
                             tracking_uri=mlflow.url)
            run_env = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_"))}
            run_env.update({**env.to_environ(), "PYTHONUNBUFFERED": "1"})
            log_path = tmp_path / "train.log"
            with log_path.open("w") as log_file:
                proc = subprocess.Popen([sys.executable, str(script), str(gate)], env=run_env, cwd=tmp_path,
                                        stdout=log_file, stderr=subprocess.STDOUT, text=True)
                running = proc

                def reached(name: str) -> None:
                    wait_until(lambda: (gate / name).exists(), timeout=300, what=f"training {name}",
                               log_path=log_path, alive=lambda: running.poll() is None)

                reached("phase0")
                run_id = log_path.read_text().split("RUN ", 1)[1].split()[0]
                client = MlflowClient(mlflow.url)
                assert len(client.get_metric_history(run_id, "loss")) == 100
                mlflow.stop()
                down = time.monotonic()
                (gate / "go0").touch()
                reached("phase1")  # 100 more steps trained and logged while MLflow is down: no crash, no hang
                phase1_under_outage_s = round(time.monotonic() - down, 3)
                mlflow.start(timeout=180)
                outage_s = round(time.monotonic() - down, 3)
                (gate / "go1").touch()
                proc.wait(timeout=300)
            out = log_path.read_text()
            assert proc.returncode == 0 and "END" in out, out[-3000:]
            client = MlflowClient(mlflow.url)
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            steps = {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in ("loss", "w")}
            duplicates = sum(len(s) - len(set(s)) for s in steps.values())
            missing = sum(len(set(range(300)) - set(s)) for s in steps.values())
            assert duplicates == 0 and missing == 0, steps
            assert "kept and retried" in out and "MLflow is back" in out and "NOT recorded" not in out, out[-3000:]
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
            mlflow.stop()
    figures.record("mlflow_down_during_training", "MLflow server stopped after step 100 of 300, restarted after 200",
                   {"outage_s": outage_s, "steps_trained_during_outage": 100,
                    "phase_under_outage_s": phase1_under_outage_s, "metric_values_recorded": 600,
                    "metric_values_missing": missing, "duplicate_steps": duplicates, "job_exit_code": 0})


# -- 4. PostgreSQL restart under a live API with Ray jobs ----------------------------------------------------------
def _sleep_job(seconds: int) -> dict[str, Any]:
    return {"name": unique("pg"), "entrypoint": f"python -c 'import time; time.sleep({seconds})'",
            "resources": {"nodes": 1, "cpus_per_task": 1, "time_limit": 5}}


TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}


@pytest.mark.postgres
@pytest.mark.ray
def test_postgres_restart_is_a_quick_503_then_the_api_and_reconciler_resume(
        tmp_path: Path, ray_head: Any, figures: Figures) -> None:
    import sqlalchemy as sa

    home = Path(f"/tmp/haihe-faults-pg-{os.getpid()}")  # short: PostgreSQL puts its socket here
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    home.chmod(0o755)  # the postgres OS user must traverse it
    pg = PostgresServer(home / "pg", DATABASE.postgres)
    engine: sa.Engine | None = None
    try:
        pg.start(timeout=180)
        url = pg.create_database("haihe_faults")
        env = {"HAIHE_DATABASE_URL": url, **schedulers_env({"ray": ray_head.scheduler_url}, "ray")}
        with api_process(tmp_path / "api", DATABASE.base + API_OFFSET, env) as api, \
                httpx.Client(base_url=api.url, timeout=60) as http:
            t = Tenancy(http).bootstrap()  # type: ignore[arg-type]  # an httpx.Client, as TestClient is
            org = t.org()
            project = t.project(org)
            alice = t.login(t.user(org))
            submit = f"/api/v1/orgs/{org}/projects/{project}/jobs"

            def submit_job(spec: dict[str, Any], key: str) -> httpx.Response:
                return http.post(submit, json={"spec": spec}, headers={**alice, "Idempotency-Key": key})

            jobs: list[str] = []
            for seconds in (3, 3, 25):  # two end during the outage, one after it
                r = submit_job(_sleep_job(seconds), uuid.uuid4().hex)
                assert r.status_code == 201, r.text
                jobs.append(r.json()["id"])
            wait_until(lambda: all(http.get(f"/api/v1/jobs/{j}", headers=alice).json()["state"]
                                   in ("RUNNING", *TERMINAL) for j in jobs), timeout=120, what="jobs running",
                       log_path=api.process.log_path)
            # -- the outage: every call answers 503 "database unavailable" at once
            late_spec, late_key = _sleep_job(1), uuid.uuid4().hex
            stop_s = timed(pg.stop)[1]
            calls = [("GET", f"/api/v1/jobs/{jobs[0]}"), ("GET", "/api/v1/jobs"),
                     ("GET", f"/api/v1/jobs/{jobs[2]}/events"), ("POST", submit)]
            answers: list[tuple[int, Any, float]] = []
            for _round in range(3):
                for method, path in calls:
                    if method == "POST":
                        r, took = timed(lambda: submit_job(late_spec, late_key))
                    else:
                        r, took = timed(lambda p=path: http.get(p, headers=alice))  # type: ignore[misc]
                    answers.append((r.status_code, error_code(r), took))
            assert {(s, c) for s, c, _ in answers} == {(503, "database_unavailable")}, answers
            # -- PostgreSQL returns; the same API process serves again (stale pooled connections are replaced)
            pg.start(timeout=180)
            back = time.monotonic()
            wait_until(lambda: http.get(f"/api/v1/jobs/{jobs[0]}", headers=alice).status_code == 200, timeout=60,
                       what="api serving after the restart", log_path=api.process.log_path)
            recovered_s = round(time.monotonic() - back, 3)
            # the submit that got a 503 is retried with its key: one job, however often it is retried
            first, second = submit_job(late_spec, late_key), submit_job(late_spec, late_key)
            assert first.status_code in (200, 201) and second.status_code in (200, 201), first.text + second.text
            assert first.json()["id"] == second.json()["id"]
            jobs.append(first.json()["id"])
            states: dict[str, str] = {}

            def all_final() -> bool:
                for j in jobs:
                    states[j] = http.get(f"/api/v1/jobs/{j}", headers=alice).json()["state"]
                return all(s in TERMINAL for s in states.values())

            wait_until(all_final, timeout=180, what="jobs final after the restart", log_path=api.process.log_path)
            assert set(states.values()) == {"SUCCEEDED"}, states
        # -- afterwards: nothing lost, nothing twice (jobs, ledger, Ray submissions)
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT j.id, j.native_id FROM jobs j JOIN orgs o ON o.id = j.org_id "
                                        "WHERE o.name = :org"), {"org": org}).all()
            ledger = conn.execute(sa.text("SELECT job_id, kind, resource, amount FROM ledger WHERE job_id IN "
                                          "(SELECT j.id FROM jobs j JOIN orgs o ON o.id = j.org_id "
                                          "WHERE o.name = :org)"), {"org": org}).all()
        assert sorted(r[0] for r in rows) == sorted(jobs)
        closed = {j: sum(1 for e in ledger if e[0] == j and e[1] == "marker") for j in jobs}
        reserved = {j: sum(e[3] for e in ledger if e[0] == j and e[1] == "reserve") for j in jobs}
        charges = [(e[0], e[2]) for e in ledger if e[1] == "charge"]
        assert set(closed.values()) == {1}, closed  # settled exactly once
        assert all(abs(v) < 1e-6 for v in reserved.values()), reserved  # every reservation released
        assert len(charges) == len(set(charges))  # at most one charge per job and resource
        ray_jobs = httpx.get(f"{ray_head.dashboard_url}/api/jobs/", timeout=30).json()
        natives = [r[1] for r in rows]
        per_native = {n: sum(1 for rj in ray_jobs if rj.get("submission_id") == n) for n in natives}
        assert set(per_native.values()) == {1}, per_native  # each job reached Ray exactly once
    finally:
        if engine is not None:
            engine.dispose()
        pg.stop()
        shutil.rmtree(home, ignore_errors=True)
    latencies = [took for _, _, took in answers]
    figures.record("postgres_restart", "PostgreSQL stopped and started under a live API with 3 running Ray jobs",
                   {"pg_stop_s": stop_s, "calls_during_outage": len(answers),
                    "status_during_outage": "503 database_unavailable", "max_503_latency_s": max(latencies),
                    "api_serving_after_pg_ready_s": recovered_s, "api_restarted": False,
                    "jobs": len(jobs), "jobs_succeeded": sum(s == "SUCCEEDED" for s in states.values()),
                    "duplicate_jobs": 0, "ledger_settled_twice": 0, "ray_submissions_per_job": 1})
