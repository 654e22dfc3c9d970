"""What the API benches share: a tenant to submit as, and percentiles. Run a bench as ``python bench/<name>.py``."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import httpx

PASSWORD = "correct-horse-battery"


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (1..99); the value itself for a single sample."""
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def make_tenant(url: str, home: Path, env: dict[str, str]) -> dict[str, str]:
    """Admin, org ``acme`` with project ``vision``, researcher ``alice``: returns alice's auth header."""
    def cli(*args: str, stdin: str | None = None) -> None:
        subprocess.run([sys.executable, "-m", "haihe.cli", *args], input=stdin, text=True, check=True,
                       capture_output=True, env={**env, "HAIHE_URL": url, "XDG_CONFIG_HOME": str(home / "cfg")})

    cli("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    cli("admin", "orgs", "create", "acme")
    cli("admin", "projects", "create", "acme", "vision")
    cli("admin", "users", "create", "acme", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    r = httpx.post(url + "/api/v1/auth/token", json={"username": "alice", "password": PASSWORD})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}


# -- where the CPU goes ------------------------------------------------------------------------------------------
_LABELS = (("haihe.serve", "api"), ("slurmrestd", "slurmrestd"), ("slurmctld", "slurmctld"), ("slurmdbd", "slurmdbd"),
           ("mariadbd", "mariadb"), ("mysqld", "mariadb"), ("postgres", "postgresql"), ("mlflow", "mlflow"),
           ("munged", "munge"))


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds (user + system) used so far, by component: every live process on the host, labelled by its
    command line, plus this bench (its client threads) and its reaped children (``sbatch``)."""
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        label = next((name for key, name in _LABELS if key in cmd), "other")
        out[label] = out.get(label, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out["bench clients"] = me.ru_utime + me.ru_stime
    out["sbatch processes"] = kids.ru_utime + kids.ru_stime
    return out


def cpu_per_item(before: dict[str, float], after: dict[str, float], items: int) -> dict[str, float]:
    """CPU milliseconds per item, by component, between two snapshots (components that used < 0.05 ms dropped)."""
    per = {k: 1000 * (after.get(k, 0.0) - before.get(k, 0.0)) / items for k in after}
    return {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def cpu_line(per: dict[str, float]) -> str:
    total = sum(per.values())
    cores = len(os.sched_getaffinity(0))
    return (f"{total:.1f} CPU-ms per submit ({', '.join(f'{k} {v:.1f}' for k, v in per.items())}); "
            f"{cores} cores allow at most {1000 * cores / total:.0f}/s")


def py_spy(pid: int, out: Path, rate: int, seconds: int | None = None) -> subprocess.Popen[bytes]:
    """py-spy (the venv's) recording ``pid`` as collapsed stacks into ``out``: for ``seconds``, else until SIGINT."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", str(rate), "-f", "raw", "--nonblocking",
            "-o", str(out), "--pid", str(pid), *(["-d", str(seconds)] if seconds else [])]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
