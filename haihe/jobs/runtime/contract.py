"""The contract between the platform and the job runtime: environment variables in, exit codes out.

The platform (``haihe.jobs.render``, when it renders a spec into a Launch) builds a :class:`RuntimeEnv` and passes
``to_environ()`` as the job's environment (the one writer of these variables); the runtime on the compute node
reads it back with ``RuntimeEnv.from_environ()``. When the job ends, the reconciler turns its exit code into a
reason with :func:`describe_exit`. This module is a leaf (standard library and ``haihe.errors`` only), so the
platform may import it without pulling in torch or MLflow.

=========================  ==============================================================================
variable                   meaning
=========================  ==============================================================================
HAIHE_JOB_ID               the platform's job UUID (also the scheduler tag); MLflow tag ``haihe.job_id``
HAIHE_ORG                  organisation name (tag ``haihe.org``)
HAIHE_PROJECT              project name (tag ``haihe.project``)
HAIHE_USER                 submitting user (tag ``haihe.user``)
HAIHE_EXPERIMENT           MLflow experiment, ``<org>/<project>`` by default
MLFLOW_TRACKING_URI        MLflow server (unset: no tracking, a warning)
MLFLOW_TRACKING_TOKEN      the job's credential at the platform's MLflow proxy (sent as a bearer token)
HAIHE_DATASET              dataset version ``org/name@vN`` (optional; ``@latest`` or no ``@``: the newest)
HAIHE_DATASET_MOUNT        path where the staged version appears (a symlink into the cache; optional)
HAIHE_DATASETS_BUCKET      bucket holding datasets (default ``haihe-datasets``)
HAIHE_CACHE_DIR            node-local cache (datasets; default ``$TMPDIR/haihe-cache-<uid>``, mode 0700)
HAIHE_S3_ENDPOINT          S3 endpoint ``http(s)://host:port``
HAIHE_STORAGE_CREDENTIALS_URL  where the job trades HAIHE_JOB_TOKEN for temporary, job-scoped S3 credentials
HAIHE_JOB_TOKEN            the job's own token (the platform's MLflow proxy and credentials broker accept it)
AWS_ACCESS_KEY_ID          static S3 keys, used only without a credentials URL (a site's own nodes, tests);
AWS_SECRET_ACCESS_KEY      the platform never renders them into a job
HAIHE_CHECKPOINT_URI       ``s3://bucket/prefix`` or a local directory (unset: no checkpoints)
HAIHE_CHECKPOINT_EVERY     checkpoint every N optimizer steps (0: only on SIGTERM/SIGUSR1)
HAIHE_CHECKPOINT_KEEP      keep the newest K checkpoints (default 2)
HAIHE_STOP_CHECK_EVERY     ranks agree on a stop signal every N steps (0: auto, 1 on CPU/gloo, 10 under nccl)
HAIHE_OUTPUT_URI           ``s3://bucket/prefix`` or a local directory for outputs (batch-infer predictions)
HAIHE_REGISTER_AS          zoo model ``org/name`` to register on success (optional)
HAIHE_FROM_ZOO             zoo model ``org/name@alias`` or ``org/name:version`` to start from (optional)
HAIHE_ARRAY_INDEX          index of this task in a sweep/array (optional)
HAIHE_PARAMS               JSON object of recipe parameters (default ``{}``)
HAIHE_SWEEP                JSON list of parameter objects, one per array index; ``params`` merges
                           ``HAIHE_SWEEP[HAIHE_ARRAY_INDEX]`` over ``HAIHE_PARAMS``
HAIHE_CODE_URI             ``s3://bucket/key.tar.gz``: the packed workdir, unpacked on the node as the command's cwd
HAIHE_JOB_NAME             the job's name (MLflow run name)
HAIHE_ENVIRONMENT          JSON: the job's own Python environment, ``{"pip": [...]}``, ``{"requirements": path}``,
                           ``{"lock": path}`` (paths in the code) or ``{"locked": text}`` (a resolved lock, on resubmit)
HAIHE_ENVIRONMENT_URL      where the runtime reports the environment it resolved and how long it took
HAIHE_ENVIRONMENT_REF      ``sha256:…`` of the resolved lock; set by the runtime when it runs inside the environment
HAIHE_ENV_KEEP_DAYS        environments of HAIHE_ENV_DIR no job used for this long are removed (default 30; 0: never)
HAIHE_CONTAINER            JSON ``{"runtime": "podman"|"apptainer", "args": [...]}``: how this site runs images
HAIHE_ENV_DIR              where environments are cached (default ``$HAIHE_CACHE_DIR/envs``; a site's shared path)
HAIHE_JOB_ATTEMPT          1, then 2, 3, ... when the platform runs the job again after the infrastructure lost
                           an attempt (spec ``retries``)
HAIHE_TRACKING_WAIT_S      how long a job that must register a model waits for an unreachable MLflow before it
                           exits 5 (default 90; a job that only logs never waits)
=========================  ==============================================================================
"""

from __future__ import annotations

import enum
import json
import os
import re
import signal
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from haihe import names
from haihe.errors import HaiheError, InvalidInput, NotFound, StorageUnavailable, TrackingUnavailable
from haihe.model_zoo.names import ZooRef

DEFAULT_DATASETS_BUCKET = "haihe-datasets"
DEFAULT_CHECKPOINT_KEEP = 2

_NAME = names.RESOURCE_NAME  # org names are resource names too
_DATASET_RE = re.compile(rf"^(?P<org>{_NAME})/(?P<name>{_NAME})(?:@(?P<version>v[1-9][0-9]{{0,8}}|latest))?$")


class ExitCode(enum.IntEnum):
    """Exit codes of ``python -m haihe.jobs.runtime``; the reconciler maps them with :func:`describe_exit`."""

    OK = 0
    FAILED = 1  # the training code raised (a bug, a NaN, an OOM ...)
    USAGE = 2  # the runtime's own command line was wrong (argparse)
    BAD_INPUT = 3  # an environment variable, parameter, recipe name or zoo/dataset reference is malformed
    DATA_ERROR = 4  # the dataset version is missing, corrupt (sha256) or unreadable
    TRACKING_UNAVAILABLE = 5  # MLflow could not be reached and the job needed it (model registration)
    STORAGE_UNAVAILABLE = 6  # S3 could not be reached for checkpoints or outputs
    REGISTRY_ERROR = 7  # the model zoo refused the registration or the source model is missing
    DIST_INIT_FAILED = 8  # torch.distributed could not form the process group (rendezvous, network)
    ENVIRONMENT = 9  # the job's own Python environment could not be resolved or installed
    REQUEUE = 75  # EX_TEMPFAIL: checkpoint written after SIGTERM/SIGUSR1; requeue and resume


EXIT_REASONS: dict[int, str] = {
    ExitCode.OK: "succeeded",
    ExitCode.FAILED: "the training code failed (see the log's traceback)",
    ExitCode.USAGE: "the runtime was started with a wrong command line",
    ExitCode.BAD_INPUT: "bad input: a job variable, parameter, recipe or model/dataset reference is invalid",
    ExitCode.DATA_ERROR: "data error: the dataset version is missing, corrupt or unreadable",
    ExitCode.TRACKING_UNAVAILABLE: "MLflow tracking server unavailable and the job needed it",
    ExitCode.STORAGE_UNAVAILABLE: "S3 storage unavailable for checkpoints or outputs",
    ExitCode.REGISTRY_ERROR: "model zoo error: registration refused or source model missing",
    ExitCode.DIST_INIT_FAILED: "distributed setup failed (rendezvous or network between nodes)",
    ExitCode.ENVIRONMENT: "the job's Python environment could not be built (the timeline and log name the package)",
    ExitCode.REQUEUE: "checkpointed after a stop signal; waiting to be requeued",
}


def describe_exit(code: int) -> str:
    """A human reason for an exit code (also ``128+N``: killed by signal N, as shells and Slurm report it)."""
    if code in EXIT_REASONS:
        return EXIT_REASONS[code]
    if code > 128 or code < 0:
        num = code - 128 if code > 128 else -code
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = f"signal {num}"
        if num == signal.SIGKILL:
            return f"killed by {name} (out of memory, walltime or cancelled)"
        return f"killed by {name}"
    return f"the program exited with code {code}"


class DataError(HaiheError):
    """The dataset version is missing, corrupt or unreadable."""

    code = "data_error"


class RegistryError(HaiheError):
    """The zoo refused a registration, or the source model does not exist."""

    code = "registry_error"


class DistInitError(HaiheError):
    """The process group could not be formed (rendezvous host unreachable, ranks missing)."""

    code = "dist_init_failed"


class EnvironmentBuildError(HaiheError):
    """The job's environment could not be resolved or installed (a package that does not exist, a conflict)."""

    code = "environment_error"


class RequeueRequested(HaiheError):
    """A stop signal arrived; a checkpoint of ``step`` was written (when checkpoints are on): requeue the job."""

    code = "requeue"

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")
        self.step = step
        self.signum = signum


# Most specific first: the first class an exception is an instance of gives its exit code.
_EXIT_FOR: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (RequeueRequested, ExitCode.REQUEUE),
    (DataError, ExitCode.DATA_ERROR),
    (RegistryError, ExitCode.REGISTRY_ERROR),
    (DistInitError, ExitCode.DIST_INIT_FAILED),
    (EnvironmentBuildError, ExitCode.ENVIRONMENT),
    (TrackingUnavailable, ExitCode.TRACKING_UNAVAILABLE),
    (StorageUnavailable, ExitCode.STORAGE_UNAVAILABLE),
    (InvalidInput, ExitCode.BAD_INPUT),
    (NotFound, ExitCode.BAD_INPUT),
)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code the runtime ends with when ``exc`` escapes (anything unexpected: FAILED)."""
    for kind, code in _EXIT_FOR:
        if isinstance(exc, kind):
            return code
    return ExitCode.FAILED


def is_requeue(code: int) -> bool:
    """True when the job asked to be requeued (it wrote a checkpoint and will resume)."""
    return code == ExitCode.REQUEUE


@dataclass(frozen=True)
class DatasetRef:
    org: str
    name: str
    version: int | None  # None: the newest committed version

    def __str__(self) -> str:
        return f"{self.org}/{self.name}@{'latest' if self.version is None else f'v{self.version}'}"


def parse_dataset(value: str, field_name: str = "HAIHE_DATASET") -> DatasetRef:
    """``org/name@vN`` (or ``@latest``, or no ``@``) → DatasetRef; InvalidInput naming the variable otherwise."""
    m = _DATASET_RE.fullmatch(value.strip())
    if not m:
        raise InvalidInput(f"{field_name}={value!r}: expected org/name@vN (lower-case names)", field=field_name)
    version = m["version"]
    return DatasetRef(m["org"], m["name"], None if version in (None, "latest") else int(version[1:]))


def parse_zoo(value: str, field_name: str = "HAIHE_FROM_ZOO", *, allow_ref: bool = True) -> ZooRef:
    """``org/name``, ``org/name@alias`` or ``org/name:version`` (the zoo's own syntax) → ZooRef."""
    ref = ZooRef.parse(value.strip(), field_name)
    if ref.pinned() and not allow_ref:
        raise InvalidInput(f"{field_name}={value!r}: expected org/name (no alias or version)", field=field_name)
    return ref


_NOT_STRINGS = ("env_keep_days", "tracking_wait_s", "experiment", "checkpoint_every", "checkpoint_keep",
                "stop_check_every", "array_index", "params", "sweep", "attempt")
DEFAULT_ENV_KEEP_DAYS = 30.0
DEFAULT_TRACKING_WAIT_S = 90.0
_DEFAULTS_LEFT_OUT = (("env_keep_days", DEFAULT_ENV_KEEP_DAYS), ("tracking_wait_s", DEFAULT_TRACKING_WAIT_S))


def _json(environ: Mapping[str, str], name: str, kind: type, default: Any) -> Any:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{name} is not valid JSON: {exc.msg}", field=name) from None
    if not isinstance(value, kind):
        raise InvalidInput(f"{name} must be a JSON {'object' if kind is dict else 'list'}", field=name)
    return value


def _int(environ: Mapping[str, str], name: str, default: int | None, minimum: int = 0) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name}={raw!r} must be a whole number", field=name) from None
    if value < minimum:
        raise InvalidInput(f"{name}={value} must be at least {minimum}", field=name)
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    """A finite number, at least 0 (``nan`` and ``inf`` refused)."""
    raw = environ.get(name, "").strip()
    value = float(raw) if raw and raw.replace(".", "", 1).isdigit() else None
    if raw and value is None:
        raise InvalidInput(f"{name}={raw!r} must be a finite number, at least 0", field=name)
    return default if value is None else value


def default_cache_dir() -> str:
    """``$TMPDIR/haihe-cache-<uid>``, made 0700 and checked to be this user's own directory: jobs of different
    users on one node never share staged data, and a directory planted in a shared /tmp is refused."""
    path = os.path.join(tempfile.gettempdir(), f"haihe-cache-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return path  # an unwritable TMPDIR: staging names the problem when it writes
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise InvalidInput(f"{path} is not a directory owned by this user; set HAIHE_CACHE_DIR",
                           field="HAIHE_CACHE_DIR")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class RuntimeEnv:
    """Everything the platform tells a job through its environment (the field docs are the contract).

    Build one on the platform side and pass ``to_environ()``; read it on the node with ``from_environ()``.
    Secrets (S3 keys) are fields too, but they are hidden from ``repr`` and never logged.
    """

    job_id: str = ""  # HAIHE_JOB_ID
    org: str = ""  # HAIHE_ORG
    project: str = ""  # HAIHE_PROJECT
    user: str = ""  # HAIHE_USER
    experiment: str = ""  # HAIHE_EXPERIMENT (default "<org>/<project>", else "haihe")
    tracking_uri: str = ""  # MLFLOW_TRACKING_URI
    tracking_token: str = field(default="", repr=False)  # MLFLOW_TRACKING_TOKEN
    dataset: str = ""  # HAIHE_DATASET  org/name@vN
    dataset_mount: str = ""  # HAIHE_DATASET_MOUNT
    datasets_bucket: str = DEFAULT_DATASETS_BUCKET  # HAIHE_DATASETS_BUCKET
    cache_dir: str = ""  # HAIHE_CACHE_DIR
    s3_endpoint: str = ""  # HAIHE_S3_ENDPOINT
    s3_access_key: str = field(default="", repr=False)  # AWS_ACCESS_KEY_ID
    s3_secret_key: str = field(default="", repr=False)  # AWS_SECRET_ACCESS_KEY
    credentials_url: str = ""  # HAIHE_STORAGE_CREDENTIALS_URL  (wins over static keys)
    job_token: str = field(default="", repr=False)  # HAIHE_JOB_TOKEN
    checkpoint_uri: str = ""  # HAIHE_CHECKPOINT_URI  s3://bucket/prefix or a local directory
    checkpoint_every: int = 0  # HAIHE_CHECKPOINT_EVERY  steps; 0 = only on a stop signal
    checkpoint_keep: int = DEFAULT_CHECKPOINT_KEEP  # HAIHE_CHECKPOINT_KEEP
    stop_check_every: int = 0  # HAIHE_STOP_CHECK_EVERY  0 = auto (1 with gloo, 10 with nccl)
    output_uri: str = ""  # HAIHE_OUTPUT_URI  s3://bucket/prefix or a local directory
    register_as: str = ""  # HAIHE_REGISTER_AS  org/name
    from_zoo: str = ""  # HAIHE_FROM_ZOO  org/name@alias
    array_index: int | None = None  # HAIHE_ARRAY_INDEX
    params: Mapping[str, Any] = field(default_factory=dict)  # HAIHE_PARAMS  (JSON object)
    sweep: tuple[Mapping[str, Any], ...] = ()  # HAIHE_SWEEP  (JSON list of objects)
    code_uri: str = ""  # HAIHE_CODE_URI
    job_name: str = ""  # HAIHE_JOB_NAME
    attempt: int = 1  # HAIHE_JOB_ATTEMPT
    environment: str = ""  # HAIHE_ENVIRONMENT  (JSON object)
    environment_url: str = ""  # HAIHE_ENVIRONMENT_URL
    environment_ref: str = ""  # HAIHE_ENVIRONMENT_REF  sha256:<hex>, set by the runtime itself
    env_dir: str = ""  # HAIHE_ENV_DIR
    container: str = ""  # HAIHE_CONTAINER  (JSON object)
    env_keep_days: float = DEFAULT_ENV_KEEP_DAYS  # HAIHE_ENV_KEEP_DAYS
    tracking_wait_s: float = DEFAULT_TRACKING_WAIT_S  # HAIHE_TRACKING_WAIT_S

    # ---- names of the variables, in one table ----
    VARIABLES: ClassVar[dict[str, str]] = {
        "job_id": "HAIHE_JOB_ID",
        "org": "HAIHE_ORG",
        "project": "HAIHE_PROJECT",
        "user": "HAIHE_USER",
        "experiment": "HAIHE_EXPERIMENT",
        "tracking_uri": "MLFLOW_TRACKING_URI",
        "tracking_token": "MLFLOW_TRACKING_TOKEN",
        "dataset": "HAIHE_DATASET",
        "dataset_mount": "HAIHE_DATASET_MOUNT",
        "datasets_bucket": "HAIHE_DATASETS_BUCKET",
        "cache_dir": "HAIHE_CACHE_DIR",
        "s3_endpoint": "HAIHE_S3_ENDPOINT",
        "s3_access_key": "AWS_ACCESS_KEY_ID",
        "s3_secret_key": "AWS_SECRET_ACCESS_KEY",
        "credentials_url": "HAIHE_STORAGE_CREDENTIALS_URL",
        "job_token": "HAIHE_JOB_TOKEN",
        "checkpoint_uri": "HAIHE_CHECKPOINT_URI",
        "checkpoint_every": "HAIHE_CHECKPOINT_EVERY",
        "checkpoint_keep": "HAIHE_CHECKPOINT_KEEP",
        "stop_check_every": "HAIHE_STOP_CHECK_EVERY",
        "output_uri": "HAIHE_OUTPUT_URI",
        "register_as": "HAIHE_REGISTER_AS",
        "from_zoo": "HAIHE_FROM_ZOO",
        "array_index": "HAIHE_ARRAY_INDEX",
        "params": "HAIHE_PARAMS",
        "sweep": "HAIHE_SWEEP",
        "code_uri": "HAIHE_CODE_URI",
        "job_name": "HAIHE_JOB_NAME",
        "attempt": "HAIHE_JOB_ATTEMPT",
        "environment": "HAIHE_ENVIRONMENT",
        "environment_url": "HAIHE_ENVIRONMENT_URL",
        "environment_ref": "HAIHE_ENVIRONMENT_REF",
        "env_dir": "HAIHE_ENV_DIR",
        "container": "HAIHE_CONTAINER",
        "env_keep_days": "HAIHE_ENV_KEEP_DAYS",
        "tracking_wait_s": "HAIHE_TRACKING_WAIT_S",
    }

    def __post_init__(self) -> None:
        if self.dataset:
            parse_dataset(self.dataset)
        if self.from_zoo:
            parse_zoo(self.from_zoo)
        if self.register_as:
            parse_zoo(self.register_as, "HAIHE_REGISTER_AS", allow_ref=False)
        if self.checkpoint_every < 0:
            raise InvalidInput("HAIHE_CHECKPOINT_EVERY must not be negative", field="HAIHE_CHECKPOINT_EVERY")
        if self.checkpoint_keep < 1:
            raise InvalidInput("HAIHE_CHECKPOINT_KEEP must be at least 1", field="HAIHE_CHECKPOINT_KEEP")
        if not isinstance(self.params, Mapping):
            raise InvalidInput("HAIHE_PARAMS must be a JSON object", field="HAIHE_PARAMS")
        if self.environment:
            try:
                parsed = json.loads(self.environment)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise InvalidInput("HAIHE_ENVIRONMENT must be a JSON object", field="HAIHE_ENVIRONMENT")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RuntimeEnv:
        """Read (and check) the contract; InvalidInput names the offending variable."""
        env = os.environ if environ is None else environ
        v = cls.VARIABLES
        params = _json(env, v["params"], dict, {})
        sweep = _json(env, v["sweep"], list, [])
        if not all(isinstance(point, dict) for point in sweep):
            raise InvalidInput("HAIHE_SWEEP must be a JSON list of objects", field="HAIHE_SWEEP")
        org, project = env.get(v["org"], ""), env.get(v["project"], "")
        experiment = env.get(v["experiment"], "") or (f"{org}/{project}" if org and project else "haihe")
        strings = {name: env.get(var, "") for name, var in v.items() if name not in _NOT_STRINGS}
        strings["datasets_bucket"] = strings["datasets_bucket"] or DEFAULT_DATASETS_BUCKET
        strings["cache_dir"] = strings["cache_dir"] or default_cache_dir()
        return cls(
            **strings,
            experiment=experiment,
            checkpoint_every=_int(env, v["checkpoint_every"], 0) or 0,
            checkpoint_keep=_int(env, v["checkpoint_keep"], DEFAULT_CHECKPOINT_KEEP, minimum=1)
            or DEFAULT_CHECKPOINT_KEEP,
            stop_check_every=_int(env, v["stop_check_every"], 0) or 0,
            array_index=_int(env, v["array_index"], None),
            attempt=_int(env, v["attempt"], 1, minimum=1) or 1,
            env_keep_days=_float(env, v["env_keep_days"], DEFAULT_ENV_KEEP_DAYS),
            tracking_wait_s=_float(env, v["tracking_wait_s"], DEFAULT_TRACKING_WAIT_S),
            params=params,
            sweep=tuple(sweep),
        )

    def to_environ(self) -> dict[str, str]:
        """The variables to put in a job's environment (empty values are left out), with what third-party clients
        in the job read for the same facts: boto3's endpoint and region, and unbuffered output for the log."""
        out: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
        if self.s3_endpoint:
            out.update({"AWS_ENDPOINT_URL": self.s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"})
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "" or (f.name in ("params", "sweep", "stop_check_every") and not value):
                continue
            if (f.name, value) in _DEFAULTS_LEFT_OUT:
                continue
            var = self.VARIABLES[f.name]
            if f.name == "params":
                out[var] = json.dumps(dict(value), sort_keys=True)
            elif f.name == "sweep":
                out[var] = json.dumps([dict(p) for p in value], sort_keys=True)
            else:
                out[var] = str(value)
        return out

    def effective_params(self) -> dict[str, Any]:
        """HAIHE_PARAMS with this array task's sweep point (HAIHE_SWEEP[HAIHE_ARRAY_INDEX]) merged over it."""
        merged = dict(self.params)
        if self.sweep:
            index = self.array_index or 0
            if index >= len(self.sweep):
                raise InvalidInput(f"HAIHE_ARRAY_INDEX={index} but HAIHE_SWEEP has {len(self.sweep)} points",
                                   field="HAIHE_ARRAY_INDEX")  # fmt: skip
            merged.update(self.sweep[index])
        return merged

    # ---- parsed views ----
    @property
    def dataset_ref(self) -> DatasetRef | None:
        return parse_dataset(self.dataset) if self.dataset else None

    @property
    def zoo_source(self) -> ZooRef | None:
        return parse_zoo(self.from_zoo) if self.from_zoo else None

    @property
    def zoo_target(self) -> ZooRef | None:
        return parse_zoo(self.register_as, "HAIHE_REGISTER_AS", allow_ref=False) if self.register_as else None

    def tags(self) -> dict[str, str]:
        """MLflow run tags that tie a run to its job (the lineage the zoo records)."""
        tags = {
            "haihe.job_id": self.job_id,
            "haihe.org": self.org,
            "haihe.project": self.project,
            "haihe.user": self.user,
            "haihe.dataset": str(self.dataset_ref) if self.dataset else "",
            "haihe.from_zoo": self.from_zoo,
            "haihe.array_index": "" if self.array_index is None else str(self.array_index),
            "haihe.environment": self.environment_ref,
        }
        return {k: v for k, v in tags.items() if v}
