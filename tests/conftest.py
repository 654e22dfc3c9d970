"""Root conftest: the session fixtures live in tests/fixtures/, one module per family of real services."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.services",  # S3 server, MLflow server, PostgreSQL (haihe.cluster)
    "tests.fixtures.ray",  # the local Ray head (haihe.cluster.ray_head)
    "tests.fixtures.slurm",  # the local Slurm cluster (haihe.cluster.slurm)
    "tests.fixtures.platform",  # the platform app, DB and users built on the above
    "tests.fixtures.figures",  # figures the reliability tests record for docs/reliability.md
]


def pytest_configure(config: pytest.Config) -> None:
    """One temp root per port base, so two sessions side by side (``HAIHE_TEST_PORT_BASE``) keep apart.

    The services run as their own accounts under pytest's temp dirs, reached through traverse ACLs on the ancestors.
    Every new pytest session takes group and other bits off its shared root (``/tmp/pytest-of-root``), and chmod
    masks those ACLs: a second session once cut the first one's MLflow off its own database ("attempt to write a
    readonly database": SQLite could no longer stat the path) and hung its S3 server."""
    if config.option.basetemp is not None or "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    root = Path(tempfile.gettempdir()) / f"haihe-tests-{os.environ.get('HAIHE_TEST_PORT_BASE', '21000')}"
    root.mkdir(mode=0o755, exist_ok=True)
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)


# ``HAIHE_TEST_SHARD``: on 4 cores or more CI runs the integration suite as two sessions side by side, each on its own
# port base and its own services (scripts/setup-and-test.sh). A module goes to the ``slurm`` shard when any of its
# tests uses the Slurm cluster (whole modules, so no two sessions ever run one module's tests at once), or when it is
# listed below to even the two out; every other module goes to ``rest``. Unset: one session runs everything.
SHARDS = ("slurm", "rest")
SLURM_SHARD_EXTRA = frozenset({  # no Slurm, but CPU the Ray-heavy ``rest`` shard has less of to spare
    "tests/reliability/test_load_jobs_table.py",
    "tests/integration/test_quotas.py",
})


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def shard_of_modules(items: list[pytest.Item]) -> dict[str, str]:
    """Each collected module's shard (keys: the module's path relative to the root, as in a node id)."""
    shards = {_module(i): "slurm" if _module(i) in SLURM_SHARD_EXTRA else "rest" for i in items}
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            shards[_module(item)] = "slurm"
    return shards


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shard = os.environ.get("HAIHE_TEST_SHARD", "")
    if not shard:
        return
    if shard not in SHARDS:
        raise pytest.UsageError(f"HAIHE_TEST_SHARD={shard!r}: expected one of {', '.join(SHARDS)}")
    shards = shard_of_modules(items)
    dropped = [i for i in items if shards[_module(i)] != shard]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if shards[_module(i)] == shard]
