"""JobSpec: the YAML a researcher writes, in the sbatch vocabulary users know.

    name: digits
    kind: train                    # train | batch_infer | serve
    project: vision                # a project of your org (or org/project)
    scheduler: slurm               # default: the platform's default scheduler
    resources: {nodes: 2, gpus_per_node: 0, cpus_per_task: 1, mem_gb: 2, time_limit: "00:30:00",
                partition: cpu, qos: normal}
    launcher: torchrun             # none | torchrun | mpi | ray_train
    recipe: digits-cnn             # a built-in recipe, or: workdir + entrypoint
    workdir: ./src                 # packed by the CLI (honours .gitignore and .haiheignore), uploaded, staged
    entrypoint: python train.py --epochs 3
    env: {LR: "0.1"}
    dataset: {name: digits, version: 3, mount: /data}
    model: {from_zoo: public/minilm-l6@production}
    register: {name: digits-cnn}   # register the trained model in the zoo under your org
    tracking: {experiment: vision}
    checkpoint: {every: 100, keep: 3}
    environment: {pip: ["scikit-learn==1.5.2"]}   # or {requirements: reqs.txt} / {lock: uv.lock.txt} (in workdir)
    sweep: {lr: [0.1, 0.01]}       # a parameter grid: a Slurm job array, or N Ray jobs

Every error names the file (when loaded from one), the field and the allowed values.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from haihe import names
from haihe.errors import InvalidInput

NAME = names.ACCOUNT_NAME  # the job's own name, its project, scheduler, partition and QoS
RESOURCE = names.RESOURCE_NAME  # the datasets and zoo models it names (may hold '.' and '_')
_ZOO_REF_RE = re.compile(rf"(?P<org>{NAME})/(?P<name>{RESOURCE})(?:@(?P<alias>{names.ALIAS})|:(?P<version>\d+))?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SWEEP = 1000
RESERVED_ENV_PREFIXES = ("HAIHE_", "SLURM_", "MLFLOW_", "AWS_", "RAY_")


def parse_time_limit(value: str | int) -> int:
    """Minutes from sbatch's formats: ``M``, ``HH:MM:SS``, ``MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    if isinstance(value, bool):
        raise ValueError("time_limit must be minutes or HH:MM:SS")
    if isinstance(value, int):
        minutes = value
    else:
        text = value.strip()
        days = 0
        if "-" in text:
            d, _, text = text.partition("-")
            if not d.isdigit():
                raise ValueError(f"invalid time_limit {value!r}")
            days = int(d)
        parts = text.split(":")
        if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
            raise ValueError(f"invalid time_limit {value!r}: use minutes or [D-]HH:MM:SS")
        nums = [int(p) for p in parts]
        if days:
            h, m, s = [*nums, 0, 0][:3]
        elif len(nums) == 3:
            h, m, s = nums
        elif len(nums) == 2:
            h, m, s = 0, nums[0], nums[1]
        else:
            h, m, s = 0, nums[0], 0
        minutes = days * 1440 + h * 60 + m + (1 if s else 0)
    if minutes < 1:
        raise ValueError("time_limit must be at least one minute")
    if minutes > 366 * 1440:
        raise ValueError("time_limit over one year")
    return minutes


class _Strict(BaseModel):
    # python-re: the name rules (haihe/names.py) use a look-ahead, which pydantic's default Rust engine lacks
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, regex_engine="python-re")


class ResourcesSpec(_Strict):
    nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    tasks_per_node: Annotated[int, Field(ge=1, le=256)] = 1
    cpus_per_task: Annotated[int, Field(ge=1, le=1024)] = 1
    gpus_per_node: Annotated[int, Field(ge=0, le=64)] = 0
    mem_gb: Annotated[float | None, Field(gt=0, le=65536)] = None
    time_limit: Annotated[int, Field(description="minutes, or [D-]HH:MM:SS")] = 30
    partition: Annotated[str | None, Field(pattern=NAME)] = None
    qos: Annotated[str | None, Field(pattern=NAME)] = None

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time(cls, v: Any) -> int:
        if not isinstance(v, str | int) or isinstance(v, bool):
            raise ValueError("time_limit must be minutes or [D-]HH:MM:SS")
        return parse_time_limit(v)


class DatasetRef(_Strict):
    name: Annotated[str, Field(pattern=rf"^(?:{NAME}/)?{RESOURCE}$")]
    version: Annotated[int | Literal["latest"], Field()] = "latest"
    mount: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]{0,200}$")] = "/data"

    @field_validator("mount")
    @classmethod
    def _no_dotdot(cls, v: str) -> str:
        if ".." in v.split("/"):
            raise ValueError("mount must not contain '..'")
        return v


class ModelRef(_Strict):
    from_zoo: str

    @field_validator("from_zoo")
    @classmethod
    def _ref(cls, v: str) -> str:
        if not _ZOO_REF_RE.fullmatch(v):
            raise ValueError("from_zoo must look like org/name@alias or org/name:version")
        return v


class RegisterSpec(_Strict):
    name: Annotated[str, Field(pattern=f"^{RESOURCE}$")]


class TrackingSpec(_Strict):
    # printable text only: the experiment name reaches the job's environment and batch script
    experiment: Annotated[str | None, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")] = None


class CheckpointSpec(_Strict):
    every: Annotated[int, Field(ge=1, le=10_000_000, description="steps between checkpoints")] = 100
    keep: Annotated[int, Field(ge=1, le=100)] = 3


MAX_PIP = 200


def check_requirements(items: list[str]) -> list[str]:
    """Requirement strings (PEP 508) for uv, stripped; ValueError naming the item for options, line breaks or
    anything else that is not a requirement (options belong in a requirements file)."""
    from packaging.requirements import InvalidRequirement, Requirement

    for i, item in enumerate(items):
        text = item.strip()
        if text.startswith("-") or any(c in text for c in "\x00\r\n"):
            raise ValueError(f"pip[{i}] {item!r} is not a requirement: options and line breaks are not "
                             "allowed (put them in a requirements file)")
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise ValueError(f"pip[{i}] {item!r} is not a requirement ({exc})") from None
    return [item.strip() for item in items]


class EnvironmentSpec(_Strict):
    """The job's own Python environment, built by uv on the node and cached by the hash of its resolved lock
    (docs/environments.md). Exactly one of: ``pip`` (requirement strings), ``requirements`` or ``lock`` (a file of
    the job's workdir; a lock is installed as it is, without resolving)."""

    pip: list[Annotated[str, Field(min_length=1, max_length=500)]] | None = Field(None, min_length=1,
                                                                                    max_length=MAX_PIP)
    requirements: Annotated[str | None, Field(max_length=1024)] = None
    lock: Annotated[str | None, Field(max_length=1024)] = None
    image: Annotated[str | None, Field(max_length=500, pattern=r"^[A-Za-z0-9/][A-Za-z0-9._:/@+-]*$",
                                       description="a container image the command runs in: a registry reference, "
                                       "oci-archive:/path, docker-archive:/path, or an Apptainer .sif path")] = None

    @field_validator("pip")
    @classmethod
    def _requirements(cls, v: list[str] | None) -> list[str] | None:
        return check_requirements(v) if v else v

    @field_validator("requirements", "lock")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v or v.startswith("/") or ".." in v.split("/") or "\x00" in v:
            raise ValueError("must be a relative path inside the job's workdir, without '..'")
        return v

    @model_validator(mode="after")
    def _one(self) -> EnvironmentSpec:
        given = [k for k in ("pip", "requirements", "lock", "image") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of pip, requirements, lock, image")
        return self


class JobSpec(_Strict):
    name: Annotated[str, Field(pattern=f"^{NAME}$")]
    kind: Literal["train", "batch_infer", "serve"] = "train"
    project: Annotated[str | None, Field(pattern=rf"^(?:{NAME}/)?{NAME}$")] = None
    scheduler: Annotated[str | None, Field(pattern=f"^{NAME}$")] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    launcher: names.LauncherName = "none"
    recipe: names.Recipe | None = None
    workdir: Annotated[str | None, Field(max_length=4096)] = None
    entrypoint: list[Annotated[str, Field(max_length=10_000)]] | None = None
    env: dict[str, Annotated[str, Field(max_length=32_768)]] = Field(default_factory=dict, max_length=200)
    dataset: DatasetRef | None = None
    model: ModelRef | None = None
    registration: RegisterSpec | None = Field(None, alias="register")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    checkpoint: CheckpointSpec | None = None
    environment: EnvironmentSpec | None = None
    retries: Annotated[int, Field(ge=0, le=10, description="new attempts when the infrastructure loses one "
                                  "(Ray head restart, node failure); never for the program's own failure")] = 0
    sweep: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")],
                Annotated[list[str | int | float | bool], Field(min_length=1, max_length=MAX_SWEEP)]] | None = None

    @field_validator("entrypoint", mode="before")
    @classmethod
    def _split_entrypoint(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                parts = shlex.split(v)
            except ValueError as exc:
                raise ValueError(f"entrypoint is not a valid command line: {exc}") from exc
            return parts
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _ENV_NAME_RE.fullmatch(key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            if key.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"env name {key!r} is reserved (prefixes {', '.join(RESERVED_ENV_PREFIXES)})")
            if "\x00" in value:
                raise ValueError(f"env value of {key!r} contains a NUL byte")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.recipe is None and not self.entrypoint:
            raise ValueError("give either recipe (one of: " + ", ".join(names.RECIPES) + ") or entrypoint")
        if self.recipe is not None and self.entrypoint:
            raise ValueError("give recipe or entrypoint, not both")
        if self.entrypoint and any("\x00" in a for a in self.entrypoint):
            raise ValueError("entrypoint contains a NUL byte")
        if self.recipe == "finetune" and (self.model is None or self.dataset is None):
            raise ValueError("recipe finetune needs model.from_zoo and dataset")
        if self.recipe == "batch-infer" and (self.model is None or self.dataset is None):
            raise ValueError("recipe batch-infer needs model.from_zoo and dataset")
        if self.environment is not None and self.launcher == "ray_train":
            raise ValueError("environment is not supported with launcher ray_train yet: its workers run in "
                             "Ray's own Python (use launcher none or torchrun)")
        if self.environment is not None and self.environment.image and not self.entrypoint:
            raise ValueError("environment.image runs the entrypoint inside the image: give entrypoint (a recipe "
                             "needs the platform's runtime in-process)")
        if self.sweep and self.sweep_size() > MAX_SWEEP:
            raise ValueError(f"sweep expands to {self.sweep_size()} jobs; at most {MAX_SWEEP}")
        return self

    def sweep_size(self) -> int:
        if not self.sweep:
            return 1
        n = 1
        for values in self.sweep.values():
            n *= len(values)
        return n

    def sweep_points(self) -> list[dict[str, Any]]:
        """The grid, in a stable order: point i is what array task i runs with."""
        if not self.sweep:
            return [{}]
        keys = sorted(self.sweep)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(self.sweep[k] for k in keys))]


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "spec"


def _allowed(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f" (allowed: {ctx['expected']})"
    return ""


def validate_spec(data: Any, source: str | None = None) -> JobSpec:
    """Validate a parsed spec; errors name the source, the field and the allowed values."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}a job spec must be a mapping of fields", field="spec")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems: list[dict[str, Any]] = []
        for err in exc.errors():
            path = _field_path(tuple(err["loc"]))
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "field required"
            else:
                msg = str(err["msg"]).removeprefix("Value error, ")
            # type and ctx: pydantic's error code and its limits, so a form can say the same in the user's language
            ctx = {k: v if isinstance(v, int | float | str) else str(v) for k, v in (err.get("ctx") or {}).items()}
            problems.append({"field": path, "message": msg + _allowed(dict(err)), "type": err["type"], "ctx": ctx})
        first = problems[0]
        raise InvalidInput(f"{where}{first['field']}: {first['message']}", field=str(first["field"]),
                           problems=problems) from None


def load_spec(path: Path) -> JobSpec:
    """Read a YAML (or JSON) job spec file."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror})", field="spec") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}", field="spec") from exc
    return validate_spec(data, str(path))


def check_name(value: str) -> bool:
    return names.is_account_name(value)
