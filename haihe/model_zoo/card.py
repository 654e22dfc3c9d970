"""Model cards: what a zoo model does, on what data, for what use, under which licence — validated on load.

A card travels with every registered version (as the MLflow version tag ``haihe.card``, JSON) so a version's
description, metrics and training data never change under it; the registered model carries the card of its newest
version for listing and search. Every error names the offending field (``card.license``, ``card.input_schema[0].type``).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from haihe.errors import InvalidInput
from haihe.model_zoo.names import DatasetRef
from haihe.names import TASK_NAME

# Tasks the platform knows how to search, serve and fine-tune; any other lower-case slug is accepted too.
KNOWN_TASKS = (
    "text-embedding",
    "text-classification",
    "text-generation",
    "image-classification",
    "object-detection",
    "tabular-classification",
    "tabular-regression",
    "time-series-forecasting",
    "anomaly-detection",
)
REQUIRED_FIELDS = (
    "task",
    "description",
    "input_schema",
    "output_schema",
    "intended_use",
    "limitations",
    "license",
    "owner",
)
MAX_CARD_JSON = 64_000  # MLflow allows 100 000 characters in a registry tag value; keep a margin

_Text = Field(min_length=1, max_length=5000)


class IOField(BaseModel):
    """One input or output of the model: ``{"name": "text", "type": "string"}``,
    ``{"name": "embedding", "type": "tensor", "dtype": "float32", "shape": [-1, 384]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    type: str = Field(pattern=r"^(tensor|string|integer|float|boolean|image|audio|json|bytes)$")
    dtype: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9]{0,15}$")
    shape: list[int] | None = None
    description: str = Field(default="", max_length=1000)

    @field_validator("shape")
    @classmethod
    def _shape(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(d < -1 or d == 0 for d in value):
            raise ValueError("dimensions are positive sizes, or -1 for a variable size")
        return value


class ModelCard(BaseModel):
    """The card of one model version. Required: task, description, input/output schema, intended use,
    limitations, licence and owner; metrics and training data are filled in by training jobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(pattern=f"^{TASK_NAME}$")
    description: str = _Text
    input_schema: list[IOField] = Field(min_length=1, max_length=50)
    output_schema: list[IOField] = Field(min_length=1, max_length=50)
    intended_use: str = _Text
    limitations: str = _Text
    license: str = Field(min_length=1, max_length=100)
    owner: str = Field(min_length=1, max_length=200)
    metrics: dict[str, float] = Field(default_factory=dict, max_length=100)
    training_data: list[str] = Field(default_factory=list, max_length=50)
    training_data_notes: str = Field(default="", max_length=5000)

    @field_validator("description", "intended_use", "limitations", "license", "owner")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("training_data")
    @classmethod
    def _datasets(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                DatasetRef.parse(item)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, float]) -> dict[str, float]:
        for key, number in value.items():
            if not key or len(key) > 250:
                raise ValueError("metric names are 1-250 characters")
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(f"metric {key!r} must be a finite number")
        return value

    # ---- loading and storing ----
    @classmethod
    def from_dict(cls, data: object, *, source: str = "card") -> ModelCard:
        """Validate a card document; raise InvalidInput naming ``<source>.<field>`` on the first problem."""
        if isinstance(data, ModelCard):
            return data
        if not isinstance(data, dict):
            raise InvalidInput(f"{source} must be a mapping of card fields", field=source)
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise InvalidInput(
                f"{source}: missing required field(s) {listed}", field=f"{source}.{missing[0]}", missing=missing
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = _location(error.get("loc", ()))
            field = f"{source}.{where}" if where else source
            raise InvalidInput(f"{field}: {error.get('msg', 'invalid value')}", field=field) from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "card") -> ModelCard:
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidInput(f"{source} is not valid JSON", field=source) from None
        return cls.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        if len(text) > MAX_CARD_JSON:
            raise InvalidInput(f"card is too large ({len(text)} characters, at most {MAX_CARD_JSON})", field="card")
        return text


def _location(loc: tuple[int | str, ...] | list[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
