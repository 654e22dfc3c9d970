"""The job's own Python environment (spec ``environment:``), built on the node by uv and cached by its lock.

What the spec asks for (``pip`` requirements, a ``requirements`` file or a ``lock`` file of the job's code, or on a
resubmit the ``locked`` text the first run resolved) becomes a resolved lock; the environment is a virtual
environment keyed by ``sha256(python tag + lock)`` under ``HAIHE_ENV_DIR`` (default ``$HAIHE_CACHE_DIR/envs``, a
site points it at shared storage). It is built once, under a file lock, and reused by every later job with the
same lock: a second job pays neither the resolution (the request → lock answer is cached too) nor the install.

The environment sees the platform's own packages (Haihe, torch, MLflow) at the lowest priority through a ``.pth``
file, so a job may pin a different scikit-learn and still use the runtime; what it installs wins. The runtime then
runs again inside it (:func:`activate`), with the environment's ``bin`` first on ``PATH`` for the user's command.

Nothing here runs with more rights than the job: the build runs as the job's own user, in its own cache.
Layout of ``HAIHE_ENV_DIR``::

    requests/<sha256 of the request>.txt   the lock a request resolved to (so the next job need not resolve)
    <first 32 hex of the ref>/             the environment; ``haihe-lock.txt`` and ``.haihe-complete`` inside
    .uv-cache/                             uv's download cache
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from haihe.errors import InvalidInput
from haihe.jobs.runtime.contract import DEFAULT_ENV_KEEP_DAYS, EnvironmentBuildError

COMPLETE = ".haihe-complete"
LAST_USED = ".haihe-last-used"  # touched by every job that uses the environment; pruning goes by it
LOCK_FILE = "haihe-lock.txt"
PTH_FILE = "zz-haihe-platform.pth"  # processed after the environment's own .pth files
BUILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Request:
    """What the spec asked for (``HAIHE_ENVIRONMENT``), exactly one of the four."""

    pip: tuple[str, ...] = ()
    requirements: str = ""  # a file of the job's code
    lock: str = ""  # a file of the job's code, installed as it is
    locked: str = ""  # the text of a lock resolved before (resubmit)
    image: str = ""  # a container image the command runs in (haihe.jobs.runtime.container)
    pinned: str = ""  # with image: the ref the job's first run used

    @classmethod
    def parse(cls, raw: str) -> Request:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise InvalidInput("HAIHE_ENVIRONMENT must be a JSON object", field="HAIHE_ENVIRONMENT")
        pip = data.get("pip") or []
        if not isinstance(pip, list) or not all(isinstance(p, str) for p in pip):
            raise InvalidInput("HAIHE_ENVIRONMENT.pip must be a list of strings", field="HAIHE_ENVIRONMENT")
        req = cls(pip=tuple(pip), requirements=str(data.get("requirements") or ""), lock=str(data.get("lock") or ""),
                  locked=str(data.get("locked") or ""), image=str(data.get("image") or ""),
                  pinned=str(data.get("pinned") or ""))
        if sum(bool(x) for x in (req.pip, req.requirements, req.lock, req.locked, req.image)) != 1:
            raise InvalidInput("HAIHE_ENVIRONMENT needs exactly one of pip, requirements, lock, locked, image",
                               field="HAIHE_ENVIRONMENT")
        return req

    @property
    def needs_code(self) -> bool:
        return bool(self.requirements or self.lock)


@dataclass(frozen=True)
class Prepared:
    """An environment ready to run in."""

    prefix: Path
    ref: str  # sha256:<hex> of python tag + lock
    lock: str
    seconds: float  # resolving and building it here (≈ 0 when cached)
    cached: bool
    image: str = ""  # a container image: ``prefix`` is unused, ``lock`` names the image
    bytes: int = 0  # what it holds on disk, when built here now (0: reused, or an image)
    pruned: tuple[str, ...] = ()  # refs of environments this cache removed, unused for longer than it keeps them

    @property
    def python(self) -> Path:
        return self.prefix / "bin" / "python"

    def describe(self) -> str:
        if self.image:
            return f"image {self.image} ({self.ref[:19]}…) ready in {self.seconds:.1f} s"
        how = "reused (cached)" if self.cached else "built"
        return f"environment {self.ref[:19]}… {how} in {self.seconds:.1f} s"


Runner = Callable[[Sequence[str], str | None, Mapping[str, str]], "tuple[int, str, str]"]


def run_tool(argv: Sequence[str], stdin: str | None, env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run uv (argv, never a shell); return (exit code, stdout, stderr)."""
    try:
        p = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, env=dict(env),
                           timeout=BUILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def find_uv() -> str:
    """The uv binary that came with the platform's Python (the ``uv`` package), else one on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv") or shutil.which("uv", path=os.path.dirname(sys.executable))
    if not found:
        raise EnvironmentBuildError("uv is not installed on this node: the platform's Python environment must "
                                    "include the 'uv' package to build job environments")
    return found


def python_tag() -> str:
    """What the lock's meaning depends on besides its text: the version and machine of the runtime's own
    interpreter, which every environment is made from."""
    return f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _last_lines(text: str, n: int = 6) -> str:
    lines = [ln.rstrip() for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def _named(req: Request, output: str) -> list[str]:
    """The requested packages uv's error names (for a message that says which one failed)."""
    from packaging.requirements import InvalidRequirement, Requirement

    found = []
    low = output.lower()
    for item in req.pip:
        try:
            name = Requirement(item).name
        except InvalidRequirement:
            continue
        if re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", low):
            found.append(name)
    return found


class Builder:
    """Resolve and build environments under ``root`` with uv, from the ``python`` interpreter."""

    def __init__(self, root: Path, *, python: str | None = None, uv: str | None = None,
                 runner: Runner = run_tool, site_dirs: Sequence[str] | None = None,
                 keep_days: float = DEFAULT_ENV_KEEP_DAYS) -> None:
        self.root = root
        self.keep_days = keep_days
        self.python = python or sys.executable
        self._uv = uv
        self.runner = runner
        self.site_dirs = list(site_dirs) if site_dirs is not None else _platform_site_dirs()

    @property
    def uv(self) -> str:
        if self._uv is None:
            self._uv = find_uv()
        return self._uv

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONHOME", "UV_"))}
        # the node's own trust store (a centre's TLS proxy or private index has its CA there), not uv's bundled roots
        env.update({"UV_CACHE_DIR": str(self.root / ".uv-cache"), "UV_PYTHON_DOWNLOADS": "never",
                    "UV_LINK_MODE": "copy", "UV_NO_CONFIG": "1", "NO_COLOR": "1", "UV_SYSTEM_CERTS": "1"})
        return env

    def _run(self, req: Request, what: str, argv: Sequence[str], stdin: str | None = None) -> str:
        code, out, err = self.runner(argv, stdin, self._env())
        if code != 0:
            names = _named(req, err + out)
            which = f" for {', '.join(names)}" if names else ""
            raise EnvironmentBuildError(f"environment: {what} failed{which}:\n{_last_lines(err or out)}",
                                        field="environment")
        return out

    def lock_for(self, req: Request, code_dir: Path | None) -> tuple[str, bool]:
        """The resolved lock text, and whether it was known without resolving (given, or cached)."""
        if req.locked:
            return req.locked, True
        if req.needs_code:
            if code_dir is None:
                raise InvalidInput("environment names a file of the job's code, but the job has no code",
                                   field="environment")
            rel = req.lock or req.requirements
            path = (code_dir / rel).resolve()
            if code_dir.resolve() not in path.parents or not path.is_file():
                raise InvalidInput(f"environment: {rel} is not a file of the job's code", field="environment")
            text = path.read_text()
            if req.lock:
                return text, True
            source = text
        else:
            source = "\n".join(req.pip) + "\n"
        key = _sha(python_tag() + "\n" + source)
        answered = self.root / "requests" / f"{key}.txt"
        if answered.is_file():
            return answered.read_text(), True
        lock = self._run(req, "resolving", [self.uv, "pip", "compile", "-", "--python", self.python, "--quiet",
                                            "--no-header", "--no-annotate"], stdin=source)
        answered.parent.mkdir(parents=True, exist_ok=True)
        tmp = answered.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(lock)
        os.replace(tmp, answered)
        return lock, False

    def prepare(self, req: Request, code_dir: Path | None = None) -> Prepared:
        """The environment for ``req``: from the cache, or resolved and built now (once per lock, under a lock)."""
        from filelock import FileLock

        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        lock, _ = self.lock_for(req, code_dir)
        ref = "sha256:" + _sha(python_tag() + "\n" + lock)
        prefix = self.root / ref[7:39]
        with FileLock(str(self.root / f"{ref[7:39]}.lock"), timeout=BUILD_TIMEOUT_S):
            cached = (prefix / COMPLETE).exists()
            if not cached:
                shutil.rmtree(prefix, ignore_errors=True)
                try:
                    self._build(req, prefix, lock)
                except BaseException:
                    shutil.rmtree(prefix, ignore_errors=True)
                    raise
            (prefix / LAST_USED).write_text(ref + "\n")  # mtime: when a job last used it
        size = 0 if cached else disk_bytes(prefix)
        pruned = self.prune(keep=prefix)
        return Prepared(prefix, ref, lock, time.monotonic() - t0, cached=cached, bytes=size, pruned=pruned)

    def prune(self, keep: Path) -> tuple[str, ...]:
        """Remove environments of this cache no job has used for ``keep_days`` (each under its own lock, so one
        being used or built is never removed); their refs, for the platform's storage accounting."""
        from filelock import FileLock, Timeout

        if self.keep_days <= 0:
            return ()
        cutoff = time.time() - self.keep_days * 86400
        removed = []
        for marker in self.root.glob(f"*/{LAST_USED}"):
            prefix = marker.parent
            if prefix == keep:
                continue
            try:
                if marker.stat().st_mtime >= cutoff:
                    continue
                with FileLock(str(self.root / f"{prefix.name}.lock"), timeout=0):
                    ref = marker.read_text().strip()
                    if marker.stat().st_mtime >= cutoff:
                        continue
                    (prefix / COMPLETE).unlink(missing_ok=True)  # never half-removed and taken as complete
                    shutil.rmtree(prefix, ignore_errors=True)
                    removed.append(ref)
            except (OSError, Timeout):
                continue
        return tuple(removed)

    def _build(self, req: Request, prefix: Path, lock: str) -> None:
        self._run(req, "creating the environment", [self.uv, "venv", str(prefix), "--python", self.python,
                                                    "--quiet", "--no-project"])
        (prefix / LOCK_FILE).write_text(lock)
        # bytecode now, once: every later job imports without compiling (or failing to write __pycache__)
        self._run(req, "installing", [self.uv, "pip", "sync", str(prefix / LOCK_FILE), "--python",
                                      str(prefix / "bin" / "python"), "--quiet", "--compile-bytecode"])
        for purelib in sorted(prefix.glob("lib/python*/site-packages")):
            (purelib / PTH_FILE).write_text(platform_pth(self.site_dirs))
        (prefix / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")


def disk_bytes(path: Path) -> int:
    """Bytes the files under ``path`` take (what the org's storage is charged for it)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _platform_site_dirs() -> list[str]:
    """The runtime interpreter's own site-packages (a venv's, with its editable installs)."""
    dirs = [*site.getsitepackages()]
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


def platform_pth(site_dirs: Sequence[str]) -> str:
    """A ``.pth`` that appends the platform's site-packages (and their own .pth files) after the environment's."""
    lines = [f"import site; site.addsitedir({d!r})" for d in site_dirs]
    return "\n".join(lines) + "\n"


def activate(environ: Mapping[str, str], prepared: Prepared) -> dict[str, str]:
    """The environment to run in ``prepared``: its ``bin`` first on PATH, ``VIRTUAL_ENV``, and its ref."""
    env = {k: v for k, v in environ.items() if k != "PYTHONHOME"}
    env["PATH"] = f"{prepared.prefix / 'bin'}{os.pathsep}{environ.get('PATH', os.defpath)}"
    env["VIRTUAL_ENV"] = str(prepared.prefix)
    env["HAIHE_ENVIRONMENT_REF"] = prepared.ref
    return env


def report(url: str, token: str, prepared: Prepared | None, *, error: str = "", node: str = "") -> None:
    """Tell the platform which environment the job runs in, or why it could not be built (best effort)."""
    if not url or not token:
        return
    import httpx

    body: dict[str, object] = {"node": node[:100]}
    if prepared is not None:
        body.update({"ref": prepared.ref, "lock": prepared.lock, "seconds": round(prepared.seconds, 3),
                     "cached": prepared.cached, "bytes": prepared.bytes, "location": f"{node}:{prepared.prefix}",
                     "pruned": list(prepared.pruned)})
        if prepared.image:
            body["image"] = prepared.image
    else:
        body["error"] = error[-4000:]
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
