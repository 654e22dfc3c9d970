"""Codecs of the gateway's wire formats: Open Inference Protocol v2 (KServe/Triton JSON) and OpenAI embeddings.

Pure functions from request bodies to *rows* (one item each) and from model outputs back to response bodies, so
the same model server answers both protocols and every shape error is a 422 naming the field.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from haihe.errors import InvalidInput

DTYPES: dict[str, Any] = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
                          "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: Literal["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
    data: list[Any]
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=256)
    inputs: list[TensorIn] = Field(min_length=1, max_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=63)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)


def _flatten(data: list[Any]) -> list[Any]:
    if data and isinstance(data[0], list):
        return [x for item in data for x in _flatten(item if isinstance(item, list) else [item])]
    return data


def oip_rows(req: InferRequest, max_rows: int) -> list[Any]:
    """The request's one input tensor, cut along its first axis into rows."""
    t = req.inputs[0]
    if not t.shape or any(d < 0 for d in t.shape):
        raise InvalidInput("inputs[0].shape must list the tensor's non-negative dimensions", field="inputs.0.shape")
    if t.shape[0] > max_rows:
        raise InvalidInput(f"at most {max_rows} rows per request (got {t.shape[0]})", field="inputs.0.shape")
    flat = _flatten(t.data)
    if len(flat) != math.prod(t.shape):
        raise InvalidInput(f"inputs[0].data has {len(flat)} elements but shape {t.shape} needs "
                           f"{math.prod(t.shape)}", field="inputs.0.data")
    if t.datatype == "BYTES":
        if len(t.shape) != 1 or not all(isinstance(x, str) for x in flat):
            raise InvalidInput("BYTES inputs must be a 1-d list of strings", field="inputs.0.data")
        return list(flat)
    try:
        arr = np.asarray(flat, dtype=DTYPES[t.datatype]).reshape(t.shape)
    except (ValueError, TypeError, OverflowError):  # OverflowError: an int too big for the datatype
        raise InvalidInput(f"inputs[0].data is not {t.datatype}", field="inputs.0.data") from None
    return list(arr)


def oip_response(endpoint: str, version: int, request_id: str | None, outputs: list[Any],
                 task: str) -> dict[str, Any]:
    arr = np.stack([np.asarray(o) for o in outputs]) if outputs else np.zeros((0,), dtype=np.float32)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    out = [{"name": "output-0", "shape": list(arr.shape), "datatype": _NAMES.get(arr.dtype.name, "FP32"),
            "data": arr.reshape(-1).tolist()}]
    if "classification" in task and arr.ndim == 2:
        labels = arr.argmax(axis=1)
        out.append({"name": "label", "shape": [int(labels.shape[0])], "datatype": "INT64", "data": labels.tolist()})
    body: dict[str, Any] = {"model_name": endpoint, "model_version": str(version), "outputs": out}
    if request_id is not None:
        body["id"] = request_id
    return body


def embedding_rows(req: EmbeddingsRequest, max_rows: int) -> list[str]:
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise InvalidInput("input must not be empty", field="input")
    if not all(isinstance(t, str) for t in texts):
        raise InvalidInput("token arrays are not supported: send text", field="input")
    if len(texts) > max_rows:
        raise InvalidInput(f"at most {max_rows} inputs per request (got {len(texts)})", field="input")
    return [str(t) for t in texts]


def embeddings_response(model: str, texts: list[str], outputs: list[Any], encoding: str,
                        dimensions: int | None) -> dict[str, Any]:
    data = []
    for i, vec in enumerate(outputs):
        v = np.asarray(vec, dtype=np.float32).reshape(-1)
        if dimensions is not None:
            if dimensions > v.shape[0]:
                raise InvalidInput(f"dimensions {dimensions} is more than the model's {v.shape[0]}",
                                   field="dimensions")
            v = v[:dimensions]
            v = v / max(float(np.linalg.norm(v)), 1e-12)
        emb: Any = base64.b64encode(v.astype("<f4").tobytes()).decode() if encoding == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(len(t.split()) for t in texts)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
