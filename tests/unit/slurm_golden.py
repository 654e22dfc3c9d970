"""Golden-file comparison for the Slurm renderers (HAIHE_UPDATE_GOLDEN=1 rewrites the files)."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "slurm"


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HAIHE_UPDATE_GOLDEN") == "1" or not path.exists():
        if os.environ.get("HAIHE_UPDATE_GOLDEN") != "1":
            raise AssertionError(f"golden file {path} missing; run with HAIHE_UPDATE_GOLDEN=1 and review it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file (HAIHE_UPDATE_GOLDEN=1 to accept)"
