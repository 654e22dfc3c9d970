"""Built-in recipes: jobs a researcher runs without writing code (``python -m haihe.jobs.runtime --recipe NAME``).

A recipe is a function ``run(ctx: JobContext) -> None``; its parameters come from ``HAIHE_PARAMS`` (and a sweep
point). Modules are imported only when their recipe runs, so listing recipes needs no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from haihe.errors import InvalidInput

# name → (module, one-line description); the portal's "new job" form offers these
RECIPES: dict[str, tuple[str, str]] = {
    "digits-cnn": ("haihe.jobs.recipes.digits_cnn",
                   "small CNN on scikit-learn's bundled handwritten digits (no download); DDP-ready"),
    "finetune": ("haihe.jobs.recipes.finetune",
                 "continue training a zoo model (HAIHE_FROM_ZOO) on a dataset version of .npz files (x, y)"),
    "batch-infer": ("haihe.jobs.recipes.batch_infer",
                    "run a zoo model over a dataset version's .npz/.npy files; predictions to HAIHE_OUTPUT_URI"),
}  # fmt: skip


def names() -> list[str]:
    return sorted(RECIPES)


def describe() -> dict[str, str]:
    return {name: RECIPES[name][1] for name in names()}


def get(name: str) -> Callable[[Any], None]:
    """The recipe's ``run`` function; InvalidInput listing the valid names for an unknown one."""
    if name not in RECIPES:
        raise InvalidInput(f"unknown recipe {name!r}; choose one of: {', '.join(names())}", field="recipe")
    module = importlib.import_module(RECIPES[name][0])
    run: Callable[[Any], None] = module.run
    return run
