"""The pure batch-script renderer and the option table: golden files, quoting, refusals, REST mapping."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from haihe.errors import InvalidInput
from haihe.schedulers.base import Launch, Launcher, Resources
from haihe.schedulers.slurm.options import job_name, rest_job, slurm_options, tag_from_name
from haihe.schedulers.slurm.sbatch import LauncherConfig, render_script
from tests.unit.slurm_golden import assert_golden

JOBS = "/shared/jobs"
CFG = LauncherConfig(torchrun=("/opt/venv/bin/python", "-m", "torch.distributed.run"))

CASES = {
    "simple": Launch(tag="0b5e-tag", name="hello", command=("python", "train.py", "--lr", "0.1")),
    "torchrun": Launch(tag="ddp-1", name="ddp", command=("/opt/venv/bin/python", "train.py"),
                       launcher=Launcher.TORCHRUN, partition="gpu", account="org1", qos="high",
                       resources=Resources(nodes=2, tasks_per_node=4, gpus_per_node=4, mem_gb=32,
                                           time_limit_min=120)),
    "mpi": Launch(tag="mpi-1", name="allreduce", command=("python", "allreduce.py"), launcher=Launcher.MPI,
                  resources=Resources(nodes=2, tasks_per_node=2)),
    "array_requeue": Launch(tag="sweep-1", name="sweep", command=("python", "sweep.py"), array_size=8,
                            requeue=True, signal_before_end_s=120, workdir="/home/u/proj"),
    "hostile": Launch(tag="evil-1", name="x'; rm -rf / #\n$(id) `id` 天津",
                      command=("echo", "$(id)", "`id`", "a'b", "line1\nline2", ";", "天津"),
                      env={"B_VAR": "x'\"$HOME\";\n`id`", "A_VAR": "plain"}, workdir="/tmp/it's here"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_golden(case: str) -> None:
    launch = CASES[case]
    text = render_script(launch, slurm_options(launch, jobs_dir=JOBS), CFG)
    assert_golden(f"{case}.sbatch", text)
    sbatch = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert sbatch == sorted(sbatch)
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


def test_hostile_script_runs_literally_under_bash(tmp_path: Path) -> None:
    workdir = tmp_path / "it's $(here)"
    workdir.mkdir()
    base = CASES["hostile"]
    launch = Launch(tag=base.tag, name=base.name, env=base.env, workdir=str(workdir),
                    command=("bash", "-c", 'printf "%s|" "$PWD" "$HAIHE_JOB_NAME" "$B_VAR" "$@"', "a0", *base.command))
    text = render_script(launch, slurm_options(launch, jobs_dir=JOBS), CFG)
    out = subprocess.run(["bash"], input=text, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    expected = [str(workdir), base.name, base.env["B_VAR"], *base.command]
    assert out.stdout == "".join(f"{v}|" for v in expected)
    name_line = next(ln for ln in text.splitlines() if ln.startswith("#SBATCH --job-name="))
    assert name_line == f"#SBATCH --job-name={job_name(base.name, base.tag)}"


def test_name_carries_tag() -> None:
    assert tag_from_name(job_name("my job!", "abc-123")) == "abc-123"
    assert tag_from_name("plain") is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"partition": "gpu;id"}, "partition"),
        ({"account": "a b"}, "account"),
        ({"qos": "$(x)"}, "qos"),
        ({"tag": "bad tag"}, "tag"),
    ],
)
def test_unsafe_slurm_names_refused(fields: dict[str, str], field: str) -> None:
    base = {"tag": "t1", "name": "n", "command": ("true",)}
    launch = Launch(**{**base, **fields})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as err:
        slurm_options(launch, jobs_dir=JOBS)
    assert err.value.field == field


def test_bad_env_name_and_nul_refused() -> None:
    with pytest.raises(InvalidInput):
        launch = Launch(tag="t", name="n", command=("true",), env={"BAD-NAME": "x"})
        render_script(launch, slurm_options(launch, jobs_dir=JOBS))
    with pytest.raises(InvalidInput):
        launch = Launch(tag="t", name="n", command=("echo", "a\x00b"))
        render_script(launch, slurm_options(launch, jobs_dir=JOBS))


def test_rest_job_mirrors_options() -> None:
    launch = CASES["torchrun"]
    job = rest_job(slurm_options(launch, jobs_dir=JOBS), {"PATH": "/bin"})
    assert job["nodes"] == [2, 2] and job["tasks"] == 8 and job["tasks_per_node"] == 4
    assert job["gres"] == "gpu:4" and job["time_limit"] == 120 and job["memory_per_node"] == 32768
    assert job["partition"] == "gpu" and job["qos"] == "high" and job["comment"] == "ddp-1"
    assert job["environment"] == {"PATH": "/bin"} and job["requeue"] is False
    arr = rest_job(slurm_options(CASES["array_requeue"], jobs_dir=JOBS), {})
    assert arr["array"] == "0-7" and arr["requeue"] is True and arr["signal"] == "B:USR1@120"
    assert arr["standard_output"] == f"{JOBS}/%A_%a.out" and arr["open_mode"] == "append"


def test_without_batch_signal_a_single_process_job_runs_as_a_signalled_step() -> None:
    # slurmrestd 22.05 refuses --signal=B:..., and without B: only steps are signalled
    launch = CASES["simple"]
    launch = dataclasses.replace(launch, signal_before_end_s=90)
    opts = slurm_options(launch, jobs_dir=JOBS, batch_signal=False)
    assert opts["signal"] == "USR1@90"
    body = render_script(launch, opts, LauncherConfig(batch_signal=False)).splitlines()[-1]
    assert body.startswith('exec srun --nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_ON_NODE"')
    # sbatch signals the batch shell itself, so the program is exec-ed directly there
    assert render_script(launch, slurm_options(launch, jobs_dir=JOBS), CFG).splitlines()[-1].startswith("exec ")
    assert "srun" not in render_script(launch, slurm_options(launch, jobs_dir=JOBS), CFG).splitlines()[-1]


def test_qos_not_passed_without_accounting() -> None:
    launch = CASES["torchrun"]
    assert "qos" not in slurm_options(launch, jobs_dir=JOBS, pass_qos=False)
