"""Train/eval switching that also takes models loaded from the zoo's pt2 format.

A model logged by a job is saved with ``torch.export`` (the pt2 format: a graph and weights, no pickled classes) and
loads back as a graph module, which has no train/eval switch: it keeps the behaviour it was exported with (eval).
The built-in recipes' models have no dropout or batch norm, so fine-tuning such a module is exact; a model with them
fine-tunes with eval-time behaviour.
"""

from __future__ import annotations

import contextlib
from typing import Any


def set_training(model: Any, on: bool) -> Any:
    """``model.train(on)`` where the model has the switch; a pt2 (exported) module stays as it is. Returns the model."""
    with contextlib.suppress(NotImplementedError):  # torch.export's graph modules: "not supported yet"
        model.train(on)
    return model
