"""Seeding the public zoo with all-MiniLM-L6-v2 from the installed package, then embedding with it — no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.model_zoo import ModelZoo
from haihe.model_zoo.seed import MINILM_REF, seed_minilm

pytestmark = [pytest.mark.mlflow, pytest.mark.s3]


def test_seed_minilm_then_load_and_embed(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo = ModelZoo.connect(mlflow_server.url, cache_dir=tmp_path / "cache")
    first = seed_minilm(zoo)
    # the session server is shared: another test of this session may have seeded it already
    if first is not None:
        assert first.aliases == ("production",)
    assert seed_minilm(zoo) is None  # idempotent: nothing registered the second time
    detail = zoo.get(MINILM_REF)
    assert len(detail.versions) == 1
    assert detail.model.visibility == "public"
    assert detail.model.task == "text-embedding"
    assert detail.model.card is not None and detail.model.card.license == "Apache-2.0"

    model = zoo.load("public/minilm-l6@production")
    vectors = np.asarray(
        model.encode(
            [
                "A man is playing a guitar.",
                "Someone is strumming a guitar.",
                "The quarterly tax report is due on Friday.",
            ],
            normalize_embeddings=True,
        )
    )
    assert vectors.shape == (3, 384)
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    print(f"minilm cosine: paraphrase {paraphrase:.2f}, unrelated {unrelated:.2f}")
    assert paraphrase > unrelated + 0.3

    # the pyfunc view of the same version serves the gateway: strings in, one 384-d row per string out
    pyfunc = zoo.load("public/minilm-l6:1", flavor="pyfunc")
    out = np.asarray(pyfunc.predict(["hello world", "good morning"]))
    assert out.shape == (2, 384)
