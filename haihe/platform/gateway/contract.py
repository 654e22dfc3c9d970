"""An endpoint model's input/output contract: what OIP model metadata reports and what the gateway holds requests to.

Sources, the first that says something wins:

1. ``signature`` — the MLflow signature the version was logged with (training jobs log one): datatypes and shapes.
   Tensor specs carry no names; they take the card's names when the card lists as many, else ``input-N``.
2. ``card`` — the zoo card's ``input_schema``/``output_schema`` (every zoo registration has one).
3. ``task`` — nothing declared (or the zoo unreadable): text in for text models, a float batch otherwise. Reported
   as metadata but not enforced, since nobody declared it.

Classifiers also get the gateway's own ``label`` output (argmax) when their first output is a 2-d score matrix.
Shapes are full tensor shapes with -1 for a variable size (the first dimension is the batch).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from haihe.errors import HaiheError, InvalidInput
from haihe.jobs.serving.predictor import EMBEDDING_TASKS
from haihe.model_zoo.names import ZooRef

log = logging.getLogger(__name__)

Source = Literal["signature", "card", "task"]

# numpy dtype names (MLflow tensor specs, card dtypes) -> OIP datatypes
NUMPY_TO_OIP = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
                "float32": "FP32", "float64": "FP64", "str": "BYTES", "object": "BYTES", "bytes": "BYTES",
                "string": "BYTES"}
# MLflow column types -> OIP datatypes
_COLUMN_TO_OIP = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                  "string": "BYTES", "binary": "BYTES"}
# card IOField types whose values are one per row (shape [-1]) -> default OIP datatype
_CARD_SCALARS = {"string": "BYTES", "bytes": "BYTES", "json": "BYTES", "integer": "INT64", "float": "FP32",
                 "boolean": "BOOL"}
LABEL = "label"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size
    shape_known: bool = True  # False: the rank was never declared; ``shape`` is only a hint for clients
    name_known: bool = True  # False: nobody named it (``input-N``); requests may use any name for it

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelContract:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    source: Source

    @property
    def enforced(self) -> bool:
        """Declared by whoever registered the model, so requests are checked against it before the model."""
        return self.source != "task"


def is_text_task(task: str) -> bool:
    return task in EMBEDDING_TASKS or task.startswith("text")


def is_classifier(task: str) -> bool:
    return "classification" in task


def _with_label(outputs: list[TensorSpec], task: str) -> tuple[TensorSpec, ...]:
    first = outputs[0] if outputs else None
    if (is_classifier(task) and first is not None and len(first.shape) == 2
            and all(o.name != LABEL for o in outputs)):
        outputs = [*outputs, TensorSpec(LABEL, "INT64", (-1,))]
    return tuple(outputs)


def from_task(task: str) -> ModelContract:
    """What serving tells without a declaration: text models take strings; others a float batch of any shape."""
    if is_text_task(task):
        inputs = [TensorSpec("input-0", "BYTES", (-1,), name_known=False)]
    else:
        inputs = [TensorSpec("input-0", "FP32", (-1, -1), shape_known=False, name_known=False)]
    outputs = [TensorSpec("output-0", "FP32", (-1, -1), shape_known=False, name_known=False)]
    return ModelContract(tuple(inputs), _with_label(outputs, task), "task")


def _card_spec(field: Any) -> TensorSpec:
    kind = str(field.type)
    dtype, shape, name = field.dtype, field.shape, str(field.name)
    if kind in _CARD_SCALARS:
        datatype = NUMPY_TO_OIP.get(dtype or "", _CARD_SCALARS[kind])
        return TensorSpec(name, datatype, tuple(shape) if shape else (-1,))
    datatype = NUMPY_TO_OIP.get(dtype or "float32", "FP32")
    if shape:
        return TensorSpec(name, datatype, tuple(int(d) for d in shape))
    return TensorSpec(name, datatype, (-1, -1), shape_known=False)


def from_card(card: Any, task: str) -> ModelContract | None:
    """The card's schema as tensors; None when the card lists no inputs (then nothing is declared)."""
    inputs = [_card_spec(f) for f in getattr(card, "input_schema", None) or []]
    outputs = [_card_spec(f) for f in getattr(card, "output_schema", None) or []]
    if not inputs:
        return None
    if not outputs:
        outputs = list(from_task(task).outputs[:1])
    return ModelContract(tuple(inputs), _with_label(outputs, task), "card")


def _named(spec: Mapping[str, Any], i: int, prefix: str, names: Sequence[str], count: int) -> tuple[str, bool]:
    """(name, declared): the signature's, else the card's at the same place, else ``<prefix>-<i>``."""
    if spec.get("name"):
        return str(spec["name"]), True
    if names and len(names) == count:
        return names[i], True
    return f"{prefix}-{i}", False


def _signature_specs(specs: Sequence[Mapping[str, Any]], prefix: str, names: Sequence[str]) -> list[TensorSpec]:
    tensors = [s for s in specs if s.get("type") == "tensor"]
    if tensors and len(tensors) == len(specs):
        out = []
        for i, s in enumerate(tensors):
            ts = s.get("tensor-spec") or {}
            name, known = _named(s, i, prefix, names, len(tensors))
            out.append(TensorSpec(name, NUMPY_TO_OIP.get(str(ts.get("dtype")), "BYTES"),
                                  tuple(int(d) for d in ts.get("shape") or (-1,)), name_known=known))
        return out
    # column-based (a table): one column is a 1-d tensor; several numeric columns are one [-1, n] tensor, which
    # is what the model server hands a pyfunc model; mixed columns are listed one by one
    types = [_COLUMN_TO_OIP.get(str(s.get("type")), "BYTES") for s in specs]
    if len(specs) == 1:
        name, known = _named(specs[0], 0, prefix, names, 1)
        return [TensorSpec(name, types[0], (-1,), name_known=known)]
    if specs and "BYTES" not in types:
        datatype = types[0] if len(set(types)) == 1 else "FP64"
        name, known = _named({}, 0, prefix, names, 1)
        return [TensorSpec(name, datatype, (-1, len(specs)), name_known=known)]
    columns = []
    for i, (s, t) in enumerate(zip(specs, types, strict=True)):
        name, known = _named(s, i, prefix, (), len(specs))
        columns.append(TensorSpec(name, t, (-1,), name_known=known))
    return columns


def from_signature(signature: Mapping[str, Sequence[Mapping[str, Any]]], card: Any, task: str
                   ) -> ModelContract | None:
    """The signature's tensors, named from the card where the signature leaves names out."""
    card_in = [str(f.name) for f in (getattr(card, "input_schema", None) or [])]
    card_out = [str(f.name) for f in (getattr(card, "output_schema", None) or [])]
    inputs = _signature_specs(signature.get("inputs") or [], "input", card_in)
    if not inputs:
        return None
    outputs = _signature_specs(signature.get("outputs") or [], "output", card_out)
    if not outputs:
        fallback = from_card(card, task) if card is not None else None
        outputs = list((fallback or from_task(task)).outputs[:1])
    return ModelContract(tuple(inputs), _with_label(outputs, task), "signature")


def load_contract(zoo: Any, model: str, task: str) -> tuple[ModelContract, bool]:
    """The contract of the pinned zoo version ``model`` (``org/name:N``) and whether it is final (cacheable for
    good: a version never changes). A zoo that cannot be read gives the task's contract, not final."""
    ref = ZooRef.parse(model)
    try:
        detail = zoo.get(ref)
        selected = detail.selected
        card = getattr(selected, "card", None)
        if card is None:
            card = getattr(getattr(detail, "model", None), "card", None)
        signature = zoo.signature(ref)
    except HaiheError as exc:
        log.warning("model %s: cannot read its signature or card (%s); serving the task's contract", model, exc)
        return from_task(task), False
    found = (from_signature(signature, card, task) if signature else None) or (
        from_card(card, task) if card is not None else None)
    return found or from_task(task), True


# -- checks ------------------------------------------------------------------------------------------------------
def _fits(declared: Sequence[int], actual: Sequence[int]) -> bool:
    return len(declared) == len(actual) and all(d == -1 or d == a for d, a in zip(declared, actual, strict=True))


def check_input(contract: ModelContract, index: int, name: str, datatype: str, shape: Sequence[int]) -> None:
    """Refuse (InvalidInput naming the input) a tensor the declared contract does not take."""
    if not contract.enforced:
        return
    where = f"inputs.{index}"
    spec = next((s for s in contract.inputs if s.name == name), None)
    if spec is None and len(contract.inputs) == 1 and not contract.inputs[0].name_known:
        spec = contract.inputs[0]  # nobody named the model's one input: any name will do
    if spec is None:
        takes = ", ".join(f'"{s.name}"' for s in contract.inputs)
        raise InvalidInput(f'input "{name}": the model has no such input; it takes {takes}', field=f"{where}.name")
    if len(contract.inputs) > 1:
        takes = ", ".join(f'"{s.name}"' for s in contract.inputs)
        raise InvalidInput(f"the model takes {len(contract.inputs)} inputs ({takes}); the gateway passes one input "
                           f"tensor per request", field="inputs")
    if datatype != spec.datatype:
        raise InvalidInput(f'input "{name}": expected datatype {spec.datatype}, got {datatype}',
                           field=f"{where}.datatype")
    if spec.shape_known and not _fits(spec.shape, shape):
        raise InvalidInput(f'input "{name}": expected shape {list(spec.shape)}, got {list(shape)}',
                           field=f"{where}.shape")


def output_names(contract: ModelContract) -> list[str]:
    return [o.name for o in contract.outputs]


def check_outputs(contract: ModelContract, requested: Sequence[str]) -> None:
    """Refuse a request for an output the model does not produce (naming it and what it does produce)."""
    known = output_names(contract)
    for i, name in enumerate(requested):
        if name not in known:
            produces = ", ".join(f'"{n}"' for n in known)
            raise InvalidInput(f'output "{name}": the model has no such output; it produces {produces}',
                               field=f"outputs.{i}.name")
