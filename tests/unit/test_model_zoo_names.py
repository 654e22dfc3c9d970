"""Zoo references, their MLflow names, and model-card validation (every error names its field)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haihe.errors import InvalidInput
from haihe.model_zoo.card import REQUIRED_FIELDS, ModelCard
from haihe.model_zoo.names import DatasetRef, ZooRef, decode, encode

NAMES = st.from_regex(r"[a-z0-9](?:[a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True).filter(lambda s: ".." not in s)


def card_dict(**over: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "task": "text-embedding",
        "description": "embeds text",
        "input_schema": [{"name": "text", "type": "string"}],
        "output_schema": [{"name": "embedding", "type": "tensor", "dtype": "float32", "shape": [-1, 384]}],
        "intended_use": "search",
        "limitations": "English only",
        "license": "Apache-2.0",
        "owner": "acme",
    }
    card.update(over)
    return card


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acme/bert", ZooRef("acme", "bert")),
        ("acme/bert@production", ZooRef("acme", "bert", alias="production")),
        ("acme/bert:12", ZooRef("acme", "bert", version=12)),
        ("public/minilm-l6@production", ZooRef("public", "minilm-l6", alias="production")),
    ],
)
def test_refs_parse_and_print_back(text: str, expected: ZooRef) -> None:
    assert ZooRef.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "text",
    [
        "bert",
        "acme/bert/x",
        "acme/bert@prod@x",
        "acme/bert:0",
        "acme/bert:v1",
        "acme/bert@latest",
        "acme/bert@v3",
        "Acme/bert",
        "acme/../etc",
        "acme/bert@Prod",
        "acme/b~x",
        "acme/bert:1@production",
        "",
        "acme/" + "x" * 70,
    ],
)
def test_bad_refs_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ZooRef.parse(text)
    assert info.value.field == "ref"


@given(NAMES, NAMES)
def test_registered_names_round_trip_and_are_uri_safe(org: str, name: str) -> None:
    encoded = encode(org, name)
    assert "/" not in encoded and ":" not in encoded
    assert decode(encoded) == ZooRef(org, name)


def test_non_zoo_names_do_not_decode() -> None:
    assert decode("plain-model") is None
    assert decode("a~B") is None
    assert decode("a~b~c") is None


def test_dataset_refs() -> None:
    assert str(DatasetRef.parse("acme/sensors@v3")) == "acme/sensors@v3"
    for bad in ("acme/sensors", "acme/sensors@3", "acme/sensors@v0", "acme/Sensors@v1", "a/b/c@v1"):
        with pytest.raises(InvalidInput) as info:
            DatasetRef.parse(bad)
        assert info.value.field == "dataset"


def test_a_complete_card_round_trips_through_json() -> None:
    card = ModelCard.from_dict(card_dict(metrics={"acc": 0.9}, training_data=["acme/sensors@v2"]))
    assert ModelCard.from_json(card.to_json()) == card


@pytest.mark.parametrize("missing", REQUIRED_FIELDS)
def test_each_required_field_is_named_when_missing(missing: str) -> None:
    data = card_dict()
    del data[missing]
    with pytest.raises(InvalidInput) as info:
        ModelCard.from_dict(data)
    assert info.value.field == f"card.{missing}"
    assert repr(missing) in info.value.message


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"task": "Text Embedding"}, "card.task"),
        ({"description": "   "}, "card.description"),
        ({"input_schema": []}, "card.input_schema"),
        ({"output_schema": [{"name": "y", "type": "tensr"}]}, "card.output_schema[0].type"),
        ({"output_schema": [{"name": "y", "type": "tensor", "shape": [0]}]}, "card.output_schema[0].shape"),
        ({"training_data": ["acme/sensors"]}, "card.training_data"),
        ({"metrics": {"acc": float("nan")}}, "card.metrics"),
        ({"colour": "blue"}, "card.colour"),
    ],
)
def test_bad_card_values_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ModelCard.from_dict(card_dict(**over))
    assert info.value.field == field


def test_card_must_be_a_mapping_and_valid_json() -> None:
    with pytest.raises(InvalidInput) as info:
        ModelCard.from_dict(["task"])
    assert info.value.field == "card"
    with pytest.raises(InvalidInput):
        ModelCard.from_json("{not json")


def test_importing_the_zoo_pulls_in_neither_mlflow_nor_the_platform() -> None:
    code = (
        "import sys, haihe.model_zoo, haihe.model_zoo.tracking, haihe.model_zoo.seed;"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'mlflow' or m.startswith('haihe.platform')"
        " or m.split('.')[0] in ('torch', 'sentence_transformers')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
