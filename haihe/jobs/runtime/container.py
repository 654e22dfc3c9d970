"""A job's container image (spec ``environment.image``): the user's command runs inside it, the runtime outside.

The runtime stays on the node's own Python (staging, MLflow run, signals, exit codes); only the command is wrapped,
the way the site configured (``HAIHE_CONTAINER``, from ``HAIHE_CONTAINER_RUNTIME`` and ``HAIHE_CONTAINER_ARGS``):

- ``podman`` (rootless, as the job's own user): the image is pulled (or loaded from ``oci-archive:``/
  ``docker-archive:``) into the user's own store under ``HAIHE_ENV_DIR``; its id (``sha256:…``, content-addressed)
  is the job's environment ref. The command runs with ``--network host`` (the platform's MLflow and S3 stay
  reachable), ``--userns keep-id`` (files it writes are the user's), the job's code and data bound at the same paths.
- ``apptainer``: ``apptainer exec`` of a ``.sif`` file; its ref is the file's sha256.

The job's environment goes in through a 0600 ``--env-file`` in the job's private TMPDIR, never on a command line
(``ps`` shows command lines to every user of the node).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from haihe.errors import InvalidInput
from haihe.jobs.runtime.contract import EnvironmentBuildError
from haihe.jobs.runtime.environment import Runner, run_tool

# variables of the node that mean nothing (or the wrong thing) inside an image
HOST_ONLY = ("PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD",
             "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "HAIHE_ENVIRONMENT")
_ID_RE = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


@dataclass(frozen=True)
class ContainerConfig:
    runtime: str  # podman | apptainer
    global_args: tuple[str, ...] = ()  # podman: before `run`
    run_args: tuple[str, ...] = ()  # podman: after `run`; apptainer: of `exec`

    @classmethod
    def parse(cls, raw: str) -> ContainerConfig:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("runtime") not in ("podman", "apptainer"):
            raise EnvironmentBuildError("this node has no container runtime configured (HAIHE_CONTAINER); ask the "
                                        "platform admins", field="environment.image")
        args = [str(a) for a in data.get("args") or []]
        if data["runtime"] == "podman" and "run" in args:
            i = args.index("run")
            return cls("podman", tuple(args[:i]), tuple(args[i + 1:]))
        if data["runtime"] == "podman":
            return cls("podman", tuple(args), ())
        return cls("apptainer", (), tuple(args))


@dataclass(frozen=True)
class Container:
    """An image ready to run: ``ref`` is what the job's environment_ref records."""

    config: ContainerConfig
    image: str  # as the spec named it
    ref: str  # sha256:<hex>: the image id (podman) or the file's digest (apptainer)
    seconds: float
    store: Path  # podman's per-user storage and run dirs live here
    runroot: Path

    def _podman(self) -> list[str]:
        return [shutil.which("podman") or "podman", *self.config.global_args, "--root", str(self.store),
                "--runroot", str(self.runroot)]

    def command(self, argv: Sequence[str], *, env_file: Path, workdir: str | None,
                binds: Mapping[str, str]) -> list[str]:
        """The command line that runs ``argv`` inside the image (pure: unit tested)."""
        if self.config.runtime == "podman":
            out = [*self._podman(), "run", "--rm", "--network", "host", "--userns", "keep-id",
                   "--env-file", str(env_file)]
            for host, inside in binds.items():
                out += ["-v", f"{host}:{inside}"]
            if workdir:
                out += ["-w", workdir]
            return [*out, *self.config.run_args, self.ref.removeprefix("sha256:"), *argv]
        out = ["apptainer", "exec", "--cleanenv", "--env-file", str(env_file)]
        for host, inside in binds.items():
            out += ["--bind", f"{host}:{inside}"]
        if workdir:
            out += ["--pwd", workdir]
        return [*out, *self.config.run_args, self.image, *argv]

    def tool_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """podman's own environment: its config and runtime dirs in the job's places, not a $HOME it may lack."""
        env = dict(environ)
        if self.config.runtime == "podman":
            env["XDG_RUNTIME_DIR"] = str(self.runroot)
            env["XDG_CONFIG_HOME"] = str(self.store.parent / "config")
        return env


def short_runroot(key: str, base: str = "/tmp") -> Path:  # noqa: S108 - a private dir, checked below
    """podman's run dir for one image store (``key``), private to this user (0700, owned by us), the same for every
    job on that store (podman records it in the store and refuses another), and short: podman refuses a runroot of
    more than 50 characters, which the job's private TMPDIR is."""
    path = Path(base) / f"hhp-{os.getuid()}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as exc:
        raise EnvironmentBuildError(f"environment: no run directory for the container ({exc})",
                                    field="environment.image") from None
    if st.st_uid != os.getuid() or (st.st_mode & 0o077) or not path.is_dir() or path.is_symlink():
        raise EnvironmentBuildError(f"environment: {path} is not this job's private directory",
                                    field="environment.image")
    return path


def prepare(config: ContainerConfig, image: str, *, env_dir: Path, runroot: Path, pinned: str = "",
            runner: Runner = run_tool) -> Container:
    """Pull (or load) the image; its ref. ``pinned``: the ref the job's first run used, which must not change."""
    t0 = time.monotonic()
    store = env_dir / "containers" / "storage"
    store.mkdir(parents=True, exist_ok=True)
    runroot.mkdir(mode=0o700, parents=True, exist_ok=True)
    probe = Container(config, image, "", 0.0, store, runroot)
    if config.runtime == "podman":
        code, out, err = runner([*probe._podman(), "pull", "-q", image], None, probe.tool_environ(os.environ))
        lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
        m = _ID_RE.match(lines[-1]) if lines else None
        if code != 0 or m is None:
            tail = "\n".join((err or out).strip().splitlines()[-4:])
            raise EnvironmentBuildError(f"environment: image {image} could not be pulled:\n{tail}",
                                        field="environment.image")
        ref = "sha256:" + m.group(1)
    else:
        path = Path(image)
        if not path.is_file():
            raise InvalidInput(f"environment: image {image} is not a file on this node", field="environment.image")
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        ref = "sha256:" + digest.hexdigest()
    if pinned and pinned != ref:
        raise EnvironmentBuildError(f"environment: image {image} is now {ref[:19]}…, not the {pinned[:19]}… this "
                                    "job first ran in; refusing to run it in another image", field="environment.image")
    return Container(config, image, ref, time.monotonic() - t0, store, runroot)


def write_env_file(path: Path, environ: Mapping[str, str]) -> Path:
    """The job's variables for inside the image, one ``KEY=VALUE`` a line, mode 0600 (values with a line break,
    which the format cannot carry, and the node's own paths are left out)."""
    lines = [f"{k}={v}" for k, v in sorted(environ.items())
             if k not in HOST_ONLY and "\n" not in v and "\r" not in v and "=" not in k and k]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
