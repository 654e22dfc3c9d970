"""Read the array files of a staged dataset version: ``.npz`` (arrays ``x`` and, for training, ``y``) or ``.npy``
(inputs only). Files are taken in path order, so every rank sees the same rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from haihe.jobs.runtime.contract import DataError

SUFFIXES = (".npz", ".npy")


def array_files(root: Path, pattern: str = "**/*") -> list[Path]:
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"no .npz/.npy files in the dataset ({root})", field="HAIHE_DATASET")
    return files


def load_xy(path: Path, *, need_y: bool) -> tuple[Any, Any]:
    """(x, y or None) from one file; DataError naming the file when the arrays are missing or disagree."""
    import numpy as np

    try:
        if path.suffix == ".npy":
            x, y = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data:
                    raise DataError(f"{path.name}: no array 'x'", field="HAIHE_DATASET")
                x = data["x"]
                y = data.get("y", None)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path.name}: unreadable ({exc})", field="HAIHE_DATASET") from None
    if need_y and y is None:
        raise DataError(f"{path.name}: training needs labels (array 'y')", field="HAIHE_DATASET")
    if y is not None and len(y) != len(x):
        raise DataError(f"{path.name}: {len(x)} inputs but {len(y)} labels", field="HAIHE_DATASET")
    return x, y
