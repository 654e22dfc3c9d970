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
