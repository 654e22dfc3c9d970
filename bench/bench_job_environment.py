"""Issue 19's bench: job start overhead with a cached environment vs without one, same node, same run.

Both start the job runtime exactly as a compute node does (``python -m haihe.jobs.runtime -- COMMAND``) and time
it until the user's command has started (a command that prints which Python and scikit-learn it would use, without
importing the package: the two scikit-learns import different amounts of SciPy, which is the program's cost, not
the environment's). "plain" runs in the platform's own Python; "environment" names
``environment: {pip: ["scikit-learn==1.5.2"]}``, already built (the first, building run is timed and printed on its
own, not counted). What the environment adds is finding it (hash of the request, one file read, one stat), putting
its ``bin`` first on the command's PATH, and its interpreter reading one more ``.pth``. The scheduler's part
(sbatch, Ray) is the same for both and is left out, which makes the ratio stricter, not kinder. Runs alternate;
medians and the ratio are printed (target: ≤ 1.2x). ``--import`` times a command that imports scikit-learn too.

    .venv/bin/python bench/bench_job_environment.py [--n 15] [--out results.json]

Needs the network to PyPI once (the first build). Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = ["python", "-c", "import importlib.metadata as m, sys; print(sys.prefix, m.version('scikit-learn'))"]
IMPORTS = ["python", "-c", "import sklearn; print('sklearn', sklearn.__version__)"]
ENVIRONMENT = {"pip": ["scikit-learn==1.5.2"]}


def run_once(env: dict[str, str], command: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "haihe.jobs.runtime", "--", *command], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"runtime failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return elapsed, p.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--import", dest="imports", action="store_true", help="the command imports scikit-learn")
    ns = ap.parse_args()
    command = IMPORTS if ns.imports else STARTED
    with tempfile.TemporaryDirectory(prefix="haihe-bench-env-") as tmp:
        base = {**os.environ, "HAIHE_JOB_ID": "bench", "HAIHE_CACHE_DIR": tmp,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        base.pop("MLFLOW_TRACKING_URI", None)
        with_env = {**base, "HAIHE_ENVIRONMENT": json.dumps(ENVIRONMENT), "HAIHE_ENV_DIR": str(Path(tmp) / "envs")}
        build_s, out = run_once(with_env, command)
        print(f"first run (resolve + build): {build_s:.2f} s -> {out}")
        plain_t: list[float] = []
        env_t: list[float] = []
        for _ in range(ns.n):
            t, out_plain = run_once(base, command)
            plain_t.append(t)
            t, out_env = run_once(with_env, command)
            env_t.append(t)
        assert out_plain != out_env, "the environment's scikit-learn must differ from the platform's"
        plain, cached = statistics.median(plain_t), statistics.median(env_t)
        result = {"n": ns.n, "plain_median_s": round(plain, 3), "cached_env_median_s": round(cached, 3),
                  "ratio": round(cached / plain, 3), "first_build_s": round(build_s, 2),
                  "plain_prints": out_plain, "env_prints": out_env}
        print(f"plain {plain:.3f} s ({out_plain}); cached environment {cached:.3f} s ({out_env}); "
              f"ratio {cached / plain:.2f}x (target <= 1.2x)")
        if ns.out:
            ns.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
