"""Issue 15: a hostile tenant's job, on the real Slurm cluster and the real Ray head, against the real S3 server and
MLflow, tries to reach the platform and another org; every attempt is its own assertion that names what it tried.

Org beta's "victim" job runs first: it stages beta's dataset, unpacks its code bundle, writes secrets into its
working directory, its /tmp and its own output prefix, and prints where they are and its pid. Then org acme's probe
(tests/reliability/probe_job.py) gets all of that as arguments — what an attacker could learn or guess — and tries:
running as root or as the platform, any credential that lists buckets, reading beta's dataset, code bundle, output
and MLflow artifacts (directly on S3 and through the MLflow proxy), writing outside its own prefix, reading the
platform's state, database and secrets, reading the victim's files and staged data, and SIGKILLing the victim.
A control proves the probe really had working credentials: it writes its own output prefix. The victim must still
end SUCCEEDED (it was not killed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from haihe.cluster.procs import port_open
from tests.fixtures.live_platform import Cli, LivePlatform, job_log, start_live_platform

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.s3, pytest.mark.mlflow, pytest.mark.slow]

PROBE = (Path(__file__).parent / "probe_job.py").read_text()
SCHEDULERS = ("slurm", "ray")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}

VICTIM = r'''
import json, os, sys, time, pathlib
import httpx, boto3
cwd = pathlib.Path.cwd()
(cwd / "victim-secret.txt").write_text("beta-cwd-secret")
tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / "victim-tmp-secret.txt"
tmp.write_text("beta-tmp-secret")
creds = httpx.post(os.environ["HAIHE_STORAGE_CREDENTIALS_URL"],
                   headers={"Authorization": "Bearer " + os.environ["HAIHE_JOB_TOKEN"]}, timeout=10).json()
bucket, _, prefix = os.environ["HAIHE_OUTPUT_URI"].removeprefix("s3://").partition("/")
s3 = boto3.client("s3", endpoint_url=os.environ["HAIHE_S3_ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"],
                  aws_session_token=creds.get("session_token"))
s3.put_object(Bucket=bucket, Key=prefix + "/victim-output.bin", Body=b"beta-output-secret")
mount = os.environ["HAIHE_DATA_DIR"]
staged = sorted(str(p) for p in pathlib.Path(mount).rglob("*") if p.is_file())
print("VICTIM " + json.dumps({"cwd_secret": str(cwd / "victim-secret.txt"),
      "tmp_secret": str(tmp), "staged": staged[0], "cwd": str(cwd),
      "output": f"s3://{bucket}/{prefix}/victim-output.bin"}), flush=True)
deadline = time.time() + 240
while time.time() < deadline:  # until the test drops a "stop" object into this job's own output prefix
    try:
        s3.head_object(Bucket=bucket, Key=prefix + "/stop")
        break
    except Exception:
        time.sleep(1)
'''


def _wait_job(live: LivePlatform, h: dict[str, str], job_id: str, pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{live.url}/api/v1/jobs/{job_id}", headers=h, timeout=10).json()
        if pred(job):
            return job
        time.sleep(1)
    raise AssertionError(f"{what}: not reached in {timeout}s (job is {job.get('state')}: {job.get('reason')})")


def _log(live: LivePlatform, h: dict[str, str], job_id: str) -> str:
    return job_log(live, h, job_id)


def _line(text: str, marker: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:])
    return None


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, slurm_cluster: Any, ray_head: Any, s3_server: Any,
         mlflow_server: Any) -> Iterator[LivePlatform]:
    home = tmp_path_factory.mktemp("isolation-platform")
    yield from start_live_platform(
        home, schedulers={"slurm": slurm_cluster.scheduler_url("cli"), "ray": ray_head.scheduler_url},
        default="slurm", s3=s3_server, mlflow=mlflow_server, extra_env=dict(slurm_cluster.env))


@pytest.fixture(scope="module")
def tenants(live: LivePlatform, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """acme (alice, the attacker) and beta (bob, the victim) with a dataset and a code bundle of beta's."""
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    cli.run("admin", "orgs", "create", "beta")
    cli.run("admin", "projects", "create", "beta", "lab")
    cli.run("admin", "users", "create", "beta", "bob", "--password-stdin", stdin="correct-horse-battery\n")
    cli.login("bob")
    data = tmp_path_factory.mktemp("beta-data")
    (data / "secret.csv").write_text("beta,dataset,secret\n")
    cli.run("datasets", "push", str(data), "--name", "secretdata", "--org", "beta", as_user="bob")
    return {"cli": cli, "alice": live.token("alice"), "bob": live.token("bob")}


def _submit_victim(cli: Cli, live: LivePlatform, scheduler: str, work: Path) -> str:
    (work / "src").mkdir(parents=True, exist_ok=True)
    (work / "src" / "victim.py").write_text(VICTIM)
    resources = "{partition: cpu, time_limit: 10}" if scheduler == "slurm" else "{time_limit: 10}"
    (work / "victim.yaml").write_text(
        f"name: victim-{scheduler}\nproject: beta/lab\nscheduler: {scheduler}\nworkdir: ./src\n"
        f"entrypoint: [python, victim.py]\ndataset: {{name: secretdata, mount: /data}}\nresources: {resources}\n")
    out = cli.run("submit", str(work / "victim.yaml"), "--json", as_user="bob")  # stdout + stderr (progress)
    return str(json.JSONDecoder().raw_decode(out[out.index("{"):])[0]["id"])


def _mlflow_artifact(mlflow_server: Any) -> tuple[str, str]:
    """beta's run with an artifact, made straight on the MLflow server: (proxy path, s3 uri)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    name = "beta/lab"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id, tags={"haihe.org": "beta"})
    client.log_text(run.info.run_id, "beta-model-secret", "model/weights.txt")
    rel = f"{exp_id}/{run.info.run_id}/artifacts/model/weights.txt"
    return f"/api/2.0/mlflow-artifacts/artifacts/{rel}", f"s3://{mlflow_server.bucket}/artifacts/{rel}"


PROBE_RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def probe(live: LivePlatform, tenants: dict[str, Any], s3_server: Any, mlflow_server: Any, services_home: Path,
          slurm_cluster: Any, ray_head: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    def run(scheduler: str) -> dict[str, Any]:
        if scheduler in PROBE_RESULTS:
            return PROBE_RESULTS[scheduler]
        cli: Cli = tenants["cli"]
        work = tmp_path_factory.mktemp(f"victim-{scheduler}")
        victim_id = _submit_victim(cli, live, scheduler, work)
        victim_job = _wait_job(live, tenants["bob"], victim_id,
                               lambda j: j["state"] in TERMINAL or _line(_log(live, tenants["bob"], victim_id),
                                                                         "VICTIM") is not None,
                               300, "the victim reports")
        victim = _line(_log(live, tenants["bob"], victim_id), "VICTIM")
        assert victim is not None, \
            f"victim ended {victim_job['state']}: {_log(live, tenants['bob'], victim_id)[-3000:]}"
        full = httpx.get(f"{live.url}/api/v1/jobs/{victim_id}", headers=tenants["bob"]).json()
        artifact_path, artifact_s3 = _mlflow_artifact(mlflow_server)
        listed = _admin_s3(s3_server).list_objects_v2(Bucket="haihe-code", Prefix="code/beta/lab/")
        bundles = [o["Key"] for o in listed.get("Contents", [])]
        assert bundles, "beta's code bundle is not in S3"
        args = {
            "s3_endpoint": s3_server.endpoint,
            "platform_uids": sorted({0, os.getuid()}),
            "secret_files": [str(live.home / "admin.json"), str(services_home / "secrets.json")],
            "other_objects": {
                "dataset file": "s3://haihe-datasets/beta/secretdata/v1/secret.csv",
                "job output": victim["output"],
                "MLflow model artifact": artifact_s3,
                "code bundle": f"s3://haihe-code/{bundles[0]}",
            },
            "forbidden_writes": {
                "into org B's dataset": "s3://haihe-datasets/beta/secretdata/v1/secret.csv",
                "into org B's job output": victim["output"],
                "outside any job prefix": "s3://haihe-code/evil.bin",
            },
            "mlflow_paths": {"model artifact": artifact_path},
            "mlflow_direct": {"model artifact": mlflow_server.url + artifact_path},
            "ray_dashboard": ray_head.dashboard_url,
            "tcp": {"the MLflow server": mlflow_server.port, "Ray Serve's HTTP proxy": ray_head.ports.serve_http,
                    **({"the Ray head's GCS": int(ray_head.gcs_address.rsplit(":", 1)[1])}
                       if scheduler == "slurm" else {})},
            "paths": {
                "the platform's state directory": str(live.home),
                "the platform's database": str(live.home / "haihe.db"),
                "the MLflow server's database": str(Path(mlflow_server.home) / "mlflow.db"),
                "the S3 server's data": str(s3_server.home),
                "org B's job log": str(_log_file(full, slurm_cluster, ray_head)),
                "org B's working directory file": victim["cwd_secret"],
                "org B's /tmp file": victim["tmp_secret"],
                "org B's staged dataset": victim["staged"],
            },
            "pids": {"org B's running job": _host_pid(victim_id)},
        }
        spec = {"name": f"probe-{scheduler}", "scheduler": scheduler, "entrypoint": ["python", "-c", PROBE],
                "env": {"PROBE_ARGS": json.dumps(args)},
                "resources": {"partition": "cpu", "time_limit": 10} if scheduler == "slurm" else {"time_limit": 10}}
        r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec},
                       headers=tenants["alice"], timeout=30)
        assert r.status_code == 201, r.text
        probe_id = r.json()["id"]
        # Serve's proxy runs only once an endpoint was deployed: something listens there meanwhile, so a refused
        # connection is the firewall's doing, not an empty port's
        with _listening(ray_head.ports.serve_http):
            ended = _wait_job(live, tenants["alice"], probe_id, lambda j: j["state"] in TERMINAL, 300,
                              "the probe ends")
        text = _log(live, tenants["alice"], probe_id)
        results = _line(text, "HAIHE_PROBE")
        assert results is not None, f"probe ended {ended['state']} ({ended.get('reason')}):\n{text[-4000:]}"
        bucket, _, key = victim["output"].removeprefix("s3://").partition("/")
        _admin_s3(s3_server).put_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/stop", Body=b"")
        victim_end = _wait_job(live, tenants["bob"], victim_id, lambda j: j["state"] in TERMINAL, 300,
                               "the victim ends")
        results["victim survived"] = {"ok": victim_end["state"] == "SUCCEEDED", "detail": victim_end["state"]}
        PROBE_RESULTS[scheduler] = results
        out = Path(__file__).resolve().parents[2] / "test-artifacts"
        out.mkdir(parents=True, exist_ok=True)  # docs/security.md quotes what each attempt got
        (out / f"isolation-{scheduler}.json").write_text(json.dumps(results, indent=1, sort_keys=True))
        return results

    return run


@contextlib.contextmanager
def _listening(port: int) -> Iterator[None]:
    """A TCP listener on 127.0.0.1:``port`` for the block, unless something listens there already."""
    if port_open("127.0.0.1", port):
        yield
        return
    with socket.create_server(("127.0.0.1", port)):
        yield


def _admin_s3(s3_server: Any) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                        aws_secret_access_key=s3_server.secret_key, region_name="us-east-1")


def _host_pid(job_id: str) -> int:
    """The victim's pid as the host sees it (on Ray it runs in its own pid namespace), found as root in /proc."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"HAIHE_JOB_ID={job_id}".encode() in environ.split(b"\0") and b"victim.py" in cmdline:
            return int(proc.name)
    raise AssertionError(f"no process of job {job_id} runs victim.py")


def _log_file(job: dict[str, Any], slurm_cluster: Any, ray_head: Any) -> Path:
    """Where the scheduler keeps the victim's log on the node (found as root, as an attacker might guess it)."""
    if job["scheduler"] == "slurm":
        pattern, root = f"{job['native_id']}.out", Path(slurm_cluster.jobs_dir)
    else:
        pattern, root = f"job-driver-{job['native_id']}.log", Path(ray_head.temp_dir)
    found = sorted(root.rglob(pattern))
    assert found, f"no {pattern} under {root}"
    return found[0]


ATTACKS = (
    "run as uid 0",
    "run as the platform's uid",
    "become root with setuid(0)",
    "list buckets with any credential found",
    "read org B's dataset file",
    "read org B's job output",
    "read org B's MLflow model artifact",
    "read org B's code bundle",
    "write into org B's dataset",
    "write into org B's job output",
    "write outside any job prefix",
    "read org B's model artifact through MLflow",
    "read org B's model artifact straight from the MLflow server",
    "submit an unsandboxed job to the Ray head's Jobs API",
    "connect to the MLflow server",
    "connect to Ray Serve's HTTP proxy",
    "read the platform's state directory",
    "read the platform's database",
    "read the MLflow server's database",
    "read the S3 server's data",
    "read org B's job log",
    "read org B's working directory file",
    "read org B's /tmp file",
    "read org B's staged dataset",
    "signal org B's running job",
)


def _result(results: dict[str, Any], attack: str) -> dict[str, Any]:
    hits = [v for k, v in results.items() if k == attack or k.startswith(attack + " (")]
    assert hits, f"the probe did not report {attack!r}; it reported {sorted(results)}"
    return hits[0]


def test_hostile_slurm_job_cannot_reach_the_ray_head(probe: Any) -> None:
    got = _result(probe("slurm"), "connect to the Ray head's GCS")
    assert not got["ok"], f"on slurm, org A's job could connect to the Ray head's GCS: {got['detail']}"


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_job_cannot(probe: Any, scheduler: str, attack: str) -> None:
    got = _result(probe(scheduler), attack)
    assert not got["ok"], f"on {scheduler}, org A's job could {attack}: {got['detail']}"


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_legitimate_paths_still_work_for_the_probe_and_the_victim(probe: Any, scheduler: str) -> None:
    results = probe(scheduler)
    assert results["control: write own output prefix"]["ok"], results["control: write own output prefix"]
    assert results["victim survived"]["ok"], f"org B's job did not succeed: {results['victim survived']}"


def _alice_succeeds(live: LivePlatform, tenants: dict[str, Any], spec: dict[str, Any], timeout: float) -> str:
    """Submit ``spec`` as alice (acme/vision), wait for it to end, assert SUCCEEDED; returns its log."""
    r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec},
                   headers=tenants["alice"], timeout=30)
    assert r.status_code == 201, r.text
    job = _wait_job(live, tenants["alice"], r.json()["id"], lambda j: j["state"] in TERMINAL, timeout, "the job ends")
    text = _log(live, tenants["alice"], job["id"])
    assert job["state"] == "SUCCEEDED", f"{job['state']} ({job.get('reason')}):\n{text[-4000:]}"
    return text


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_job_reads_a_dataset_another_org_shared_with_it(live: LivePlatform, tenants: dict[str, Any],
                                                          tmp_path: Path, scheduler: str) -> None:
    """The legitimate cross-org path under the same isolation: beta shares a dataset with acme; acme's job stages it
    with its own per-job credentials (as its own Unix account on Slurm, in the sandbox on Ray) and reads it."""
    cli: Cli = tenants["cli"]
    name = f"shared-{scheduler}"
    data = tmp_path / "shared"
    data.mkdir()
    (data / "notes.txt").write_text(f"beta shares this with acme on {scheduler}\n")
    cli.run("datasets", "push", str(data), "--name", name, "--org", "beta", as_user="bob")
    cli.run("datasets", "share", f"beta/{name}", "--org", "acme")  # as the platform admin
    read = "import os,pathlib; print('SHARED', pathlib.Path(os.environ['HAIHE_DATA_DIR'], 'notes.txt').read_text())"
    spec = {"name": f"reads-shared-{scheduler}", "scheduler": scheduler, "entrypoint": ["python", "-c", read],
            "dataset": {"name": f"beta/{name}"},
            "resources": {"partition": "cpu", "time_limit": 10} if scheduler == "slurm" else {"time_limit": 10}}
    text = _alice_succeeds(live, tenants, spec, 300)
    assert f"SHARED beta shares this with acme on {scheduler}" in text


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_job_finetunes_a_public_model_of_another_org(live: LivePlatform, tenants: dict[str, Any],
                                                      mlflow_server: Any, tmp_path: Path, scheduler: str) -> None:
    """Loading another org's public zoo model through the MLflow proxy (the job never reaches MLflow itself),
    training on its own dataset with its own credentials, and registering the result in its own org."""
    import numpy as np
    from sklearn.datasets import load_digits

    from haihe.model_zoo import ModelZoo
    from tests.integration.test_endpoints_ray import register_digits

    zoo = ModelZoo.connect(mlflow_server.url, cache_dir=tmp_path / "zoo")
    if not [m for m in zoo.list(org="beta") if m.ref.name == "digits"]:
        register_digits(zoo, mlflow_server.url, "beta", seed=3)
        zoo.set_visibility("beta/digits", "public")
    digits = load_digits()
    data = tmp_path / "npz"
    data.mkdir()
    np.savez(data / "train.npz", x=(digits.data / 16.0).astype(np.float32), y=digits.target)
    cli: Cli = tenants["cli"]
    cli.run("datasets", "push", str(data), "--name", f"digits-{scheduler}", "--org", "acme", as_user="alice")
    spec = {"name": f"finetune-{scheduler}", "scheduler": scheduler, "recipe": "finetune",
            "model": {"from_zoo": "beta/digits@production"}, "dataset": {"name": f"digits-{scheduler}"},
            "register": {"name": f"digits-tuned-{scheduler}"},
            "resources": {"partition": "cpu", "time_limit": 15} if scheduler == "slurm" else {"time_limit": 15}}
    _alice_succeeds(live, tenants, spec, 600)
    tuned = [m for m in zoo.list(org="acme") if m.ref.name == f"digits-tuned-{scheduler}"]
    assert tuned, "the fine-tuned model is not in acme's zoo"
