"""Codecs of the gateway's wire formats: Open Inference Protocol v2 (KServe/Triton JSON, with Triton's binary tensor
data extension) and OpenAI embeddings.

Pure functions from request bodies to *rows* (one item each) and from model outputs back to response bodies, so
the same model server answers both protocols. Every problem is an InvalidInput whose message names the input or
field (``input "x": expected shape [-1, 64], got [3, 5]``); the OIP routes answer it as 400 ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from haihe.errors import InvalidInput, PayloadTooLarge
from haihe.platform.gateway.contract import LABEL, ModelContract, is_classifier

DTYPES: dict[str, Any] = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
                          "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
                          "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_}
_NAMES = {np.dtype(v).name: k for k, v in DTYPES.items()}
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                   "FP64", "BYTES"]
HEADER_LENGTH = "inference-header-content-length"  # Triton's binary extension: bytes of JSON before the tensors
_MAX_OUTPUTS = 16


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=256)
    shape: list[int] = Field(max_length=8)
    datatype: Datatype
    data: list[Any] | None = None  # absent when the tensor is sent as binary data (parameters.binary_data_size)
    parameters: dict[str, Any] | None = None


class TensorOut(BaseModel):
    """A requested output; ``parameters.binary_data`` asks for it as binary data."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=256)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=256)
    inputs: list[TensorIn] = Field(min_length=1, max_length=1)
    outputs: list[TensorOut] | None = Field(None, max_length=_MAX_OUTPUTS)
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class InferBody:
    """A parsed request: the JSON part and, per input, its binary data (None: the data is in the JSON)."""

    request: InferRequest
    blobs: tuple[bytes | None, ...]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=63)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)


# -- request -----------------------------------------------------------------------------------------------------
def decode_content(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding (gzip or deflate, as tritonclient can send) undone, at most ``limit``
    bytes once inflated."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return raw
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(enc)
    if wbits is None:
        raise InvalidInput(f"Content-Encoding {enc!r} is not supported: send identity, gzip or deflate",
                           field="content-encoding")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {enc}: {exc}", field="body") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"request body inflates to over the {limit}-byte limit", field="body")
    return out


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "body"


def _input_name(doc: dict[str, Any], loc: tuple[int | str, ...]) -> str:
    """``input "x": `` when a validation error is inside a named input, so the message says which one."""
    if len(loc) > 1 and loc[0] == "inputs" and isinstance(loc[1], int) and isinstance(doc.get("inputs"), list):
        items = doc["inputs"]
        item = items[loc[1]] if loc[1] < len(items) else None
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            return f'input "{item["name"][:256]}": '
    return ""


def parse_infer(raw: bytes, header_length: str | None) -> InferBody:
    """An inference request: JSON, or JSON followed by binary tensors (``Inference-Header-Content-Length``)."""
    head, rest = raw, b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(raw):
            raise InvalidInput(f"Inference-Header-Content-Length must be a byte count within the body's "
                               f"{len(raw)} bytes, got {header_length[:40]!r}", field=HEADER_LENGTH)
        head, rest = raw[:n], raw[n:]
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the decoder's stack
        why = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise InvalidInput(f"request body is not valid JSON: {why}", field="body") from None
    if not isinstance(doc, dict):
        raise InvalidInput("the request body must be a JSON object with 'inputs'", field="body")
    try:
        req = InferRequest.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        where = _location(loc)
        msg = {"missing": "field required", "extra_forbidden": "unknown field"}.get(err.get("type", ""),
                                                                                     str(err.get("msg", "invalid")))
        raise InvalidInput(f"{_input_name(doc, loc)}{where}: {msg}", field=where) from None
    blobs: list[bytes | None] = []
    pos = 0
    for i, t in enumerate(req.inputs):
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if t.data is None:
                raise InvalidInput(f'input "{t.name}": data required (or parameters.binary_data_size with the '
                                   f'tensor after the JSON)', field=f"inputs.{i}.data")
            blobs.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f'input "{t.name}": parameters.binary_data_size must be a byte count',
                               field=f"inputs.{i}.parameters.binary_data_size")
        if t.data is not None:
            raise InvalidInput(f'input "{t.name}": send data or binary_data_size, not both', field=f"inputs.{i}.data")
        if pos + size > len(rest):
            raise InvalidInput(f'input "{t.name}": binary_data_size is {size} but only {len(rest) - pos} bytes '
                               f'follow the JSON', field=f"inputs.{i}.parameters.binary_data_size")
        blobs.append(rest[pos:pos + size])
        pos += size
    if pos != len(rest):
        raise InvalidInput(f"{len(rest) - pos} bytes after the last binary tensor", field="body")
    return InferBody(req, tuple(blobs))


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists in row-major order, iteratively (a hostile nesting depth must not exhaust the stack)."""
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_KINDS = {"BOOL": "b", "INT": "iu", "UINT": "iu", "FP": "iuf"}


def _check_elements(name: str, index: int, datatype: str, flat: list[Any]) -> None:
    """JSON elements of the datatype's kind: booleans for BOOL, integers for INT/UINT, numbers for FP. numpy's
    inferred kind clears the common case at once; only a suspect tensor is walked, to name the bad element."""
    if not flat:
        return
    kinds = _KINDS[datatype.rstrip("0123456789")]
    try:
        if np.asarray(flat).dtype.kind in kinds:
            return
    except (ValueError, TypeError, OverflowError):
        pass
    field = f"inputs.{index}.data"
    for i, x in enumerate(flat):
        if datatype == "BOOL":
            ok = isinstance(x, bool)
        elif isinstance(x, bool) or not isinstance(x, int | float):
            ok = False
        elif datatype.startswith(("INT", "UINT")):
            ok = isinstance(x, int) or x.is_integer()
        else:
            ok = True
        if not ok:
            raise InvalidInput(f'input "{name}": data[{i}] is {_short(x)}, not a {datatype} value', field=field)


def _strings(name: str, index: int, blob: bytes, count: int) -> list[str]:
    """BYTES binary data: each element a 4-byte little-endian length, then its bytes (UTF-8 text here)."""
    out: list[str] = []
    pos = 0
    while pos < len(blob) and len(out) <= count:
        n = int.from_bytes(blob[pos:pos + 4], "little") if pos + 4 <= len(blob) else -1
        if n < 0 or pos + 4 + n > len(blob):
            raise InvalidInput(f'input "{name}": BYTES element {len(out)} runs past the tensor\'s binary data',
                               field=f"inputs.{index}.parameters.binary_data_size")
        try:
            out.append(blob[pos + 4:pos + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f'input "{name}": BYTES element {len(out)} is not UTF-8 text',
                               field=f"inputs.{index}.data") from None
        pos += 4 + n
    if len(out) != count or pos != len(blob):
        raise InvalidInput(f'input "{name}": binary data holds {len(out)} BYTES elements, shape needs {count}',
                           field=f"inputs.{index}.data")
    return out


def oip_rows(body: InferBody, max_rows: int) -> list[Any]:
    """The request's one input tensor, checked and cut along its first axis into rows."""
    t, blob = body.request.inputs[0], body.blobs[0]
    where = "inputs.0"
    if not t.shape or any(d < 0 for d in t.shape):
        raise InvalidInput(f'input "{t.name}": shape must list the tensor\'s non-negative dimensions, got {t.shape}',
                           field=f"{where}.shape")
    if t.shape[0] > max_rows:
        raise InvalidInput(f'input "{t.name}": at most {max_rows} rows per request, got {t.shape[0]}',
                           field=f"{where}.shape")
    count = math.prod(t.shape)
    if t.datatype == "BYTES":
        if len(t.shape) != 1:
            raise InvalidInput(f'input "{t.name}": BYTES inputs must be 1-d (one string per row), got shape '
                               f'{t.shape}', field=f"{where}.shape")
        if blob is not None:
            return _strings(t.name, 0, blob, count)
        flat = _flatten(t.data or [])
        if len(flat) != count or not all(isinstance(x, str) for x in flat):
            raise InvalidInput(f'input "{t.name}": BYTES data must be {count} strings', field=f"{where}.data")
        return list(flat)
    dtype = np.dtype(DTYPES[t.datatype])
    if blob is not None:
        if len(blob) != count * dtype.itemsize:
            raise InvalidInput(f'input "{t.name}": binary data is {len(blob)} bytes but shape {t.shape} of '
                               f'{t.datatype} needs {count * dtype.itemsize}',
                               field=f"{where}.parameters.binary_data_size")
        raw = np.frombuffer(blob, dtype=np.uint8 if t.datatype == "BOOL" else dtype.newbyteorder("<"))
        arr = (raw != 0) if t.datatype == "BOOL" else raw.astype(dtype)
    else:
        flat = _flatten(t.data or [])
        if len(flat) != count:
            raise InvalidInput(f'input "{t.name}": data has {len(flat)} elements but shape {t.shape} needs {count}',
                               field=f"{where}.data")
        _check_elements(t.name, 0, t.datatype, flat)
        try:
            with np.errstate(over="raise", invalid="raise"):
                arr = np.asarray(flat, dtype=dtype)
        except (ValueError, TypeError, OverflowError, FloatingPointError):  # e.g. an int too big for the datatype
            raise InvalidInput(f'input "{t.name}": a value does not fit {t.datatype}', field=f"{where}.data") from None
    if dtype.kind == "f" and not bool(np.isfinite(arr).all()):
        raise InvalidInput(f'input "{t.name}": values must be finite numbers (found NaN or infinity)',
                           field=f"{where}.data")
    return list(arr.reshape(t.shape))


def requested_outputs(req: InferRequest) -> list[str]:
    return [o.name for o in req.outputs or []]


# -- response ----------------------------------------------------------------------------------------------------
def _wants_binary(req: InferRequest, out: TensorOut | None) -> bool:
    default = (req.parameters or {}).get("binary_data_output") is True
    if out is not None and out.parameters and "binary_data" in out.parameters:
        return out.parameters["binary_data"] is True
    return default


def _tensor(name: str, arr: Any) -> tuple[dict[str, Any], np.ndarray]:
    arr = np.asarray(arr)
    if arr.dtype.kind in "OUS":
        return {"name": name, "shape": list(arr.shape), "datatype": "BYTES"}, arr
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return {"name": name, "shape": list(arr.shape), "datatype": _NAMES.get(arr.dtype.name, "FP32")}, arr


def _as_declared(arr: np.ndarray, datatype: str) -> np.ndarray:
    """The model's output in the datatype its contract declares (float64 scores declared FP32 go out as FP32)."""
    target = DTYPES.get(datatype)
    if target is None or arr.dtype.kind not in "biuf":
        return arr
    return arr.astype(target, copy=False)


def _binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in arr.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(len(b).to_bytes(4, "little") + b)
        return b"".join(parts)
    if datatype == "BOOL":
        return arr.astype(np.uint8).tobytes()
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def oip_response(endpoint: str, version: int, req: InferRequest, outputs: list[Any], task: str,
                 contract: ModelContract) -> tuple[dict[str, Any], list[bytes]]:
    """The response body and the binary tensors that follow it (in output order; empty for all-JSON)."""
    stacked = np.stack([np.asarray(o) for o in outputs]) if outputs else np.zeros((0,), dtype=np.float32)
    primary = contract.outputs[0]
    if contract.enforced:
        stacked = _as_declared(stacked, primary.datatype)
    produced = [_tensor(primary.name, stacked)]
    if is_classifier(task) and stacked.ndim == 2 and primary.name != LABEL:
        produced.append(_tensor(LABEL, stacked.argmax(axis=1).astype(np.int64)))
    wanted = req.outputs
    picks: list[tuple[tuple[dict[str, Any], np.ndarray], TensorOut | None]]
    if wanted is not None:
        by_name = {meta["name"]: (meta, arr) for meta, arr in produced}
        picks = [(by_name[o.name], o) for o in wanted if o.name in by_name]
    else:
        picks = [(p, None) for p in produced]
    out, blobs = [], []
    for (meta, arr), asked in picks:
        tensor = dict(meta)
        if _wants_binary(req, asked):
            blob = _binary(arr, tensor["datatype"])
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif tensor["datatype"] == "BYTES":
            tensor["data"] = [str(x) for x in arr.reshape(-1)]
        else:
            tensor["data"] = arr.reshape(-1).tolist()
        out.append(tensor)
    body: dict[str, Any] = {"model_name": endpoint, "model_version": str(version), "outputs": out}
    if req.id is not None:
        body["id"] = req.id
    return body, blobs


def encode(body: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, int | None]:
    """The HTTP body, and the JSON part's length when binary tensors follow it (for the header)."""
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


# -- OpenAI embeddings -------------------------------------------------------------------------------------------
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
