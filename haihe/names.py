"""Every name rule in one place: what an org, project, job, dataset or zoo model may be called.

A leaf (it imports only :mod:`haihe.errors`), so the job spec, the platform, the dataset store and the model zoo
all read the same rule. Two alphabets, on purpose:

- **account names** (orgs, projects, users, jobs, schedulers, partitions, QoS) are DNS labels — lower-case letters,
  digits and ``-`` — because they become Slurm account names (``<org>.<project>``), Unix account names
  (``hh-<org>-<user>``) and host-like labels, where ``.`` and ``_`` would be ambiguous or refused;
- **resource names** (datasets, zoo models) may also hold ``.`` and ``_`` (``cats_v1``, ``resnet.50``), never
  ``..``: they only ever appear in S3 keys, MLflow names, URLs and quoted shell words.

An org name is always a valid resource name, so ``org/name`` references combine the two.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from haihe.errors import InvalidInput

ACCOUNT_NAME = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
RESOURCE_NAME = r"(?!.*\.\.)[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?"  # never "..", even inside
# a zoo alias: one short lower-case word (MLflow keeps "latest" and "v<digits>" for itself)
ALIAS = r"[a-z][a-z0-9_-]{0,62}"
RESERVED_ALIAS = r"latest|v[0-9]+"
MAX_RESOURCE_NAME_LEN = 64

# a zoo model's task: a lower-case slug such as "text-embedding"
TASK_NAME = r"[a-z][a-z0-9-]{1,62}"

# the built-in recipes (haihe.jobs.recipes maps each to its module) and the launchers a job spec may name
# (haihe.schedulers.base.Launcher has one member per name)
Recipe = Literal["digits-cnn", "finetune", "batch-infer"]
RECIPES: tuple[str, ...] = get_args(Recipe)
LauncherName = Literal["none", "torchrun", "mpi", "ray_train"]
LAUNCHERS: tuple[str, ...] = get_args(LauncherName)

# a serving job prints this line, then its address, once it answers (the Slurm gateway reads it from the log)
SERVING_ADDRESS_MARKER = "HAIHE_SERVING_ADDRESS="


def serving_address(log_text: str) -> str | None:
    """The address in the last marker line of a serving job's log (a server restarted in the same job prints a
    new one); None when there is none yet."""
    address = None
    for line in log_text.splitlines():
        if line.startswith(SERVING_ADDRESS_MARKER):
            address = line[len(SERVING_ADDRESS_MARKER):].strip() or address
    return address

# the largest row id or cursor a query may carry (SQLite INTEGER and PostgreSQL bigint): larger is a 422, not a 500
MAX_ROW_ID = 2**63 - 1

ACCOUNT_NAME_RE = re.compile(ACCOUNT_NAME)
RESOURCE_NAME_RE = re.compile(RESOURCE_NAME)


def is_account_name(value: object) -> bool:
    return isinstance(value, str) and ACCOUNT_NAME_RE.fullmatch(value) is not None


def is_resource_name(value: object) -> bool:
    return isinstance(value, str) and RESOURCE_NAME_RE.fullmatch(value) is not None


def check_account_name(value: object, field: str) -> str:
    """An org, project, user or job name, or InvalidInput naming ``field``."""
    if not is_account_name(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidInput(f"{field} {shown!r} is not a valid name: 1-63 characters of a-z, 0-9 and '-', "
                           "starting and ending with a letter or digit", field=field)
    assert isinstance(value, str)
    return value


def check_resource_name(value: object, field: str) -> str:
    """A dataset or zoo model name (or the org part of a reference to one), or InvalidInput naming ``field``."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    if not is_resource_name(value):
        raise InvalidInput(
            f"{field} {value[:80]!r} is not allowed: use 1-{MAX_RESOURCE_NAME_LEN} lower-case letters, digits, "
            "'.', '_' or '-', starting and ending with a letter or digit", field=field)
    return value
