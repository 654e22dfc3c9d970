"""One predict function for every serving path: a zoo model loaded once, called on a batch of rows.

A *row* is one input item: a string for text-embedding models, a nested list / array of numbers for tensor models.
Requests carry several rows; a dynamic batch concatenates the rows of many requests (``join_rows``), predicts once,
and hands every request its own slice back (``split_rows``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EMBEDDING_TASKS = frozenset({"text-embedding", "sentence-embedding", "feature-extraction"})


@dataclass(frozen=True)
class ServeConfig:
    """What a model server needs to know: which model, where the zoo is, how to batch. Plain data (picklable)."""

    model: str  # org/name:version — a pinned version, so every replica serves the same bytes
    mlflow_url: str
    task: str = ""
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    threads: int = 1  # torch intra-op threads per replica (replicas share a small box)
    cache_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        return cls(**data)


def split_rows(requests: Sequence[Sequence[Any]]) -> tuple[list[Any], list[int]]:
    """Concatenate the rows of several requests; the counts say where each request's rows are."""
    flat: list[Any] = []
    counts = []
    for rows in requests:
        flat.extend(rows)
        counts.append(len(rows))
    return flat, counts


def join_rows(outputs: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    """Cut a batch's outputs back into one list per request (the inverse of ``split_rows``)."""
    out, start = [], 0
    for n in counts:
        out.append(list(outputs[start:start + n]))
        start += n
    if start != len(outputs):
        raise ValueError(f"model returned {len(outputs)} rows for {start} inputs")
    return out


class Predictor:
    """A loaded model and the way to call it on a batch of rows."""

    def __init__(self, model: Any, kind: str) -> None:
        if kind not in ("embedding", "torch", "pyfunc"):
            raise ValueError(f"unknown predictor kind {kind!r}")
        self.model = model
        self.kind = kind

    @classmethod
    def from_dir(cls, path: Path, task: str = "", threads: int = 1) -> Predictor:
        """Load an MLflow model directory: sentence-transformers → embeddings, torch → tensors, else pyfunc."""
        from haihe.model_zoo.registry import load_model_dir

        _limit_threads(threads)
        model = load_model_dir(Path(path), "auto")
        if hasattr(model, "encode") and (task in EMBEDDING_TASKS or not task):
            return cls(model, "embedding")
        try:
            import torch

            if isinstance(model, torch.nn.Module):
                from haihe.jobs.runtime.modes import set_training

                return cls(set_training(model, False), "torch")
        except ImportError:  # pragma: no cover - torch is optional for pyfunc models
            pass
        return cls(model, "pyfunc")

    @classmethod
    def from_config(cls, config: ServeConfig) -> Predictor:
        """Download (once, into the cache) and load the configured zoo version."""
        from haihe.model_zoo import ModelZoo

        os.environ.update(config.env)
        zoo = ModelZoo.connect(config.mlflow_url, cache_dir=Path(config.cache_dir) if config.cache_dir else None)
        return cls.from_dir(zoo.local_path(config.model), config.task, config.threads)

    def predict(self, rows: Sequence[Any]) -> list[Any]:
        """Outputs for ``rows``, one per row (numpy arrays, or lists for embeddings)."""
        import numpy as np

        if not rows:
            return []
        if self.kind == "embedding":
            texts = [str(r) for r in rows]
            vectors = self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
            return list(np.asarray(vectors, dtype=np.float32))
        batch = np.stack([np.asarray(r, dtype=np.float32) for r in rows])
        if self.kind == "torch":
            import torch

            with torch.inference_mode():
                out = self.model(torch.from_numpy(batch))
            return list(out.detach().cpu().numpy())
        return list(np.asarray(self.model.predict(batch)))


def _limit_threads(threads: int) -> None:
    """Replicas share a small box: one intra-op pool per replica would oversubscribe the cores."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except ImportError:  # pragma: no cover
        pass
