"""``python -m haihe.jobs.runtime.envrun -- COMMAND...``: run a command in the environment ``HAIHE_ENVIRONMENT``
names (built by uv or found in the cache, as for jobs: :mod:`haihe.jobs.runtime.environment`).

For what is not a job and has no runtime around it: a Slurm endpoint's model server
(``haihe.platform.gateway.slurm_runtime``) whose model needs Python packages of its own. The command is found on the
environment's PATH (``python`` is the environment's, with the platform's packages after its own). Exit code 9 and
uv's words (naming the package) when the environment cannot be built.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from haihe.errors import HaiheError, InvalidInput
from haihe.jobs.runtime.contract import ExitCode, default_cache_dir


def main(argv: Sequence[str] | None = None) -> int:
    from haihe.jobs.runtime import environment as envs

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m haihe.jobs.runtime.envrun -- COMMAND...", file=sys.stderr)
        return ExitCode.USAGE
    raw = os.environ.get("HAIHE_ENVIRONMENT", "")
    if not raw:
        os.execvp(args[0], args)  # noqa: S606 - nothing to build: the command as it is
    root = Path(os.environ.get("HAIHE_ENV_DIR") or Path(os.environ.get("HAIHE_CACHE_DIR") or default_cache_dir())
                / "envs")
    try:
        request = envs.Request.parse(raw)
        if request.needs_code or request.image:
            raise InvalidInput("envrun takes Python packages (pip or locked) only", field="HAIHE_ENVIRONMENT")
        prepared = envs.Builder(root).prepare(request)
    except HaiheError as exc:
        print(f"haihe envrun: exit {int(ExitCode.ENVIRONMENT)}: {exc.message}", file=sys.stderr, flush=True)
        return ExitCode.ENVIRONMENT
    print(f"haihe envrun: {prepared.describe()}", file=sys.stderr, flush=True)
    environ = envs.activate(os.environ, prepared)
    os.execvpe(args[0], args, environ)  # noqa: S606 - argv from the platform, never a shell
    return ExitCode.FAILED  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
