"""The gateway speaks the Open Inference Protocol v2 as KServe specifies it and Triton's client expects: string
errors, 400 naming the input for a request the model cannot take, metadata listing inputs and outputs, health and
server metadata routes, and Triton's binary tensor data extension. A real app and database; a fake runtime and zoo.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from haihe import __version__
from haihe.model_zoo.card import ModelCard
from haihe.platform.gateway import contract as contracts
from tests.fixtures.platform import bearer
from tests.unit.endpoint_fakes import FakeZoo
from tests.unit.test_endpoints_gateway import World, open_world
from tests.unit.test_model_zoo_names import card_dict

DIGITS_CARD = ModelCard.from_dict(card_dict(
    task="image-classification",
    input_schema=[{"name": "pixels", "type": "tensor", "dtype": "float32", "shape": [-1, 64]}],
    output_schema=[{"name": "probabilities", "type": "tensor", "dtype": "float32", "shape": [-1, 64]}]))
CNN_SIGNATURE = {"inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}],
                 "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}]}


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    zoo = FakeZoo()
    zoo.add("acme-models/digits", "image-classification", [1, 2], aliases={"production": 1}, card=DIGITS_CARD)
    zoo.add("acme-models/cnn", "", [3], aliases={"production": 3}, signature=CNN_SIGNATURE)  # a recipe's model
    zoo.add("acme-models/bare", "image-classification", [1], aliases={"production": 1})  # nothing declared
    zoo.add("public/minilm-l6", "text-embedding", [1], aliases={"production": 1}, card=ModelCard.from_dict(
        card_dict()))
    with open_world(tmp_path, zoo) as world:
        for name, model in (("digits", "acme-models/digits@production"), ("cnn", "acme-models/cnn@production"),
                            ("bare", "acme-models/bare@production"), ("mini", "public/minilm-l6@production")):
            world.create(name, model=model)
        for _ in range(3):
            world.hub.supervise_once()
        yield world


def _tensor(name: str, arr: Any, datatype: str = "FP32") -> dict[str, Any]:
    a = np.asarray(arr)
    return {"name": name, "shape": list(a.shape), "datatype": datatype, "data": a.reshape(-1).tolist()}


def _infer(w: World, endpoint: str, *inputs: dict[str, Any], **extra: Any) -> Any:
    return w.client.post(f"/v2/models/{endpoint}/infer", json={"inputs": list(inputs), **extra},
                         headers=bearer(w.key))


def _string_error(r: Any, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str), body  # the protocol's {"error": "<message>"}; tritonclient needs a str
    return str(body["error"])


# -- server routes -----------------------------------------------------------------------------------------------
def test_health_and_server_metadata_answer_without_a_key(w: World) -> None:
    live = w.client.get("/v2/health/live")
    assert live.status_code == 200 and live.json() == {"live": True}
    ready = w.client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    for path in ("/v2", "/v2/"):
        meta = w.client.get(path)
        assert meta.status_code == 200
        assert meta.json() == {"name": "haihe", "version": __version__, "extensions": ["binary_tensor_data"]}


def test_server_not_ready_when_its_database_is_gone(w: World) -> None:
    w.hub.ctx.db.engine.dispose()
    db_file = Path(str(w.hub.ctx.db.engine.url.database))
    db_file.rename(db_file.with_suffix(".moved"))
    db_file.mkdir()  # a directory where the database was: SQLite cannot open it
    try:
        r = w.client.get("/v2/health/ready")
        assert "database" in _string_error(r, 400)  # the protocol's "false" is a 4xx
        assert w.client.get("/v2/health/live").status_code == 200
    finally:
        db_file.rmdir()
        db_file.with_suffix(".moved").rename(db_file)


# -- errors ------------------------------------------------------------------------------------------------------
def test_every_v2_error_body_is_a_string(w: World) -> None:
    r = w.client.get("/v2/models/digits")
    assert "API key" in _string_error(r, 401) and r.headers["www-authenticate"] == "Bearer"  # headers kept
    assert "not found" in _string_error(w.client.get("/v2/models/nope", headers=bearer(w.key)), 404)
    assert "version 1, not '7'" in _string_error(
        w.client.get("/v2/models/digits/versions/7", headers=bearer(w.key)), 404)
    r = w.client.post("/v2/repository/index", headers=bearer(w.key))  # a Triton-only extension
    assert "no such route" in _string_error(r, 404)
    r = w.client.get("/v2/models/digits/infer", headers=bearer(w.key))
    assert "POST" in _string_error(r, 405) and r.headers["allow"] == "POST"
    r = w.client.post("/v2/models/digits/infer", content=b"{not json", headers=bearer(w.key))
    assert "not valid JSON" in _string_error(r, 400) and r.json()["field"] == "body"
    over = w.client.put(f"/api/v1/orgs/{w.org}/quota", json={"requests_per_month": 0}, headers=w.admin)
    assert over.status_code == 200
    w.hub.book.refresh(next(r.org_id for r in w.hub.routes.values() if r.name == "digits"))
    r = _infer(w, "digits", _tensor("pixels", np.zeros((1, 64))))
    assert "requests_per_month" in _string_error(r, 402) and r.json()["code"] == "quota_exceeded"
    assert r.json()["details"]["quota"] == "requests_per_month"
    # the platform's own API keeps its structured errors
    assert w.client.get(f"/api/v1/orgs/{w.org}/endpoints/nope", headers=w.admin).json()["error"]["code"] == \
        "not_found"


@pytest.mark.parametrize(("body", "says", "field"), [
    ({"inputs": [_tensor("pixels", np.zeros((3, 5)))]}, 'input "pixels": expected shape [-1, 64], got [3, 5]',
     "inputs.0.shape"),
    ({"inputs": [_tensor("pixels", np.zeros((2, 64), dtype=np.int64), "INT64")]},
     'input "pixels": expected datatype FP32, got INT64', "inputs.0.datatype"),
    ({"inputs": [_tensor("x", np.zeros((2, 64)))]}, 'input "x": the model has no such input; it takes "pixels"',
     "inputs.0.name"),
    ({"id": "1"}, "inputs: field required", "inputs"),
    ({"inputs": []}, "inputs: List should have at least 1 item", "inputs"),
    ({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP99", "data": [0.0] * 64}]},
     'input "pixels": inputs.0.datatype: Input should be', "inputs.0.datatype"),
    ({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [math.nan] + [0.0] * 63}]},
     'input "pixels": values must be finite numbers', "inputs.0.data"),
    ({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": ["a"] + [0.0] * 63}]},
     "input \"pixels\": data[0] is 'a', not a FP32 value", "inputs.0.data"),
    ({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1e300] * 64}]},
     'input "pixels": a value does not fit FP32', "inputs.0.data"),
    ({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [0.0] * 64}]},
     'input "pixels": data has 64 elements but shape [2, 64] needs 128', "inputs.0.data"),
    ({"inputs": [_tensor("pixels", np.zeros((1, 64)))], "outputs": [{"name": "nope"}]},
     'output "nope": the model has no such output; it produces "probabilities", "label"', "outputs.0.name"),
])
def test_bad_input_is_400_naming_it_and_never_reaches_the_model(w: World, body: dict[str, Any], says: str,
                                                                  field: str) -> None:
    before = w.runtime.calls
    raw = json.dumps(body, allow_nan=True).encode()  # NaN as careless clients send it
    r = w.client.post("/v2/models/digits/infer", content=raw,
                      headers={**bearer(w.key), "content-type": "application/json"})
    assert says in _string_error(r, 400)
    assert r.json()["field"] == field and r.json()["code"] == "invalid_input"
    assert w.runtime.calls == before


# -- metadata ----------------------------------------------------------------------------------------------------
def test_metadata_lists_inputs_and_outputs_from_the_card(w: World) -> None:
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        meta = w.client.get(path, headers=bearer(w.key)).json()
        assert meta["name"] == "digits" and meta["versions"] == ["1"] and meta["platform"] == "haihe-ray"
        assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
        assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 64]},
                                   {"name": "label", "datatype": "INT64", "shape": [-1]}]
        assert meta["contract"] == "card" and meta["ready"] is True
    mini = w.client.get("/v2/models/mini", headers=bearer(w.key)).json()
    assert mini["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert mini["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]


def test_metadata_from_the_signature_a_training_job_logged(w: World) -> None:
    meta = w.client.get("/v2/models/cnn", headers=bearer(w.key)).json()
    assert meta["contract"] == "signature"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    r = _infer(w, "cnn", _tensor("input-0", np.ones((2, 1, 8, 8))))
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["name"] == "output-0" and r.json()["outputs"][0]["shape"] == [2, 1, 8, 8]
    r = _infer(w, "cnn", _tensor("input-0", np.ones((2, 64))))
    assert 'expected shape [-1, 1, 8, 8], got [2, 64]' in _string_error(r, 400)
    # nobody named the one input (no card): the name is not held against the caller, the shape still is
    assert _infer(w, "cnn", _tensor("x", np.ones((1, 1, 8, 8)))).status_code == 200
    r = _infer(w, "cnn", _tensor("x", np.ones((1, 1, 8, 8), dtype=np.float64), "FP64"))
    assert 'input "x": expected datatype FP32, got FP64' in _string_error(r, 400)


def test_without_a_declaration_metadata_comes_from_the_task_and_is_not_enforced(w: World) -> None:
    meta = w.client.get("/v2/models/bare", headers=bearer(w.key)).json()
    assert meta["contract"] == "task"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, -1]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, -1]},
                               {"name": "label", "datatype": "INT64", "shape": [-1]}]
    r = _infer(w, "bare", _tensor("whatever", [[1.0, 2.0]]))
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["output-0", "label"]


def test_contracts_are_read_once_per_version_and_again_after_an_mlflow_outage(w: World) -> None:
    hub, zoo = w.hub, w.zoo
    assert isinstance(zoo, FakeZoo)
    hub._contracts.clear()
    zoo.down = True
    meta = w.client.get("/v2/models/digits", headers=bearer(w.key)).json()
    assert meta["contract"] == "task"  # served meanwhile, not kept
    assert _infer(w, "digits", _tensor("pixels", np.zeros((1, 64)))).status_code == 200
    zoo.down = False
    route = next(r for r in hub.routes.values() if r.name == "digits")
    hub._contracts[(route.pinned_model, route.task)] = (0.0, False, contracts.from_task(route.task))  # long ago
    reads = zoo.reads
    for _ in range(3):
        assert w.client.get("/v2/models/digits", headers=bearer(w.key)).json()["contract"] == "card"
    assert zoo.reads == reads + 1


def test_another_orgs_key_finds_no_model_route(w: World) -> None:
    other = w.t.org()
    key = w.t.key(other, w.admin, username=w.t.user(other, role="service_account"), scopes=["inference"])
    before = w.runtime.calls
    for method, path in (("GET", "/v2/models/digits"), ("GET", "/v2/models/digits/versions/1"),
                         ("GET", "/v2/models/digits/ready"), ("GET", "/v2/models/digits/versions/1/ready"),
                         ("POST", "/v2/models/digits/infer"), ("POST", "/v2/models/digits/versions/1/infer")):
        r = w.client.request(method, path, headers=bearer(key),
                             json={"inputs": [_tensor("pixels", np.zeros((1, 64)))]})
        assert "not found" in _string_error(r, 404), path
    assert w.runtime.calls == before


# -- readiness ---------------------------------------------------------------------------------------------------
def test_model_ready_is_200_or_a_4xx_with_the_reason(w: World) -> None:
    r = w.client.get("/v2/models/digits/ready", headers=bearer(w.key))
    assert r.status_code == 200 and r.json() == {"name": "digits", "ready": True}
    assert w.client.get("/v2/models/digits/versions/1/ready", headers=bearer(w.key)).status_code == 200
    assert w.client.get("/v2/models/digits/versions/2/ready", headers=bearer(w.key)).status_code == 404
    w.runtime.next_state = "starting"
    w.create("slow", model="acme-models/digits@production")
    w.hub.supervise_once()
    r = w.client.get("/v2/models/slow/ready", headers=bearer(w.key))
    assert "not ready (deploying)" in _string_error(r, 400)
    assert "API key" in _string_error(w.client.get("/v2/models/digits/ready"), 401)


# -- inference ---------------------------------------------------------------------------------------------------
def test_json_inference_names_outputs_as_the_metadata_does(w: World) -> None:
    x = np.arange(128, dtype=np.float32).reshape(2, 64) / 128
    r = _infer(w, "digits", _tensor("pixels", x), id="req-7")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "digits" and body["model_version"] == "1"
    probs, label = body["outputs"]
    assert probs["name"] == "probabilities" and probs["datatype"] == "FP32" and probs["shape"] == [2, 64]
    assert np.allclose(probs["data"], (x * 2).reshape(-1))
    assert label == {"name": "label", "shape": [2], "datatype": "INT64", "data": [63, 63]}
    only = _infer(w, "digits", _tensor("pixels", x), outputs=[{"name": "label"}]).json()["outputs"]
    assert [o["name"] for o in only] == ["label"]
    pinned = w.client.post("/v2/models/digits/versions/1/infer", json={"inputs": [_tensor("pixels", x)]},
                           headers=bearer(w.key))
    assert pinned.status_code == 200 and pinned.json()["model_version"] == "1"
    r = w.client.post("/v2/models/digits/versions/2/infer", json={"inputs": [_tensor("pixels", x)]},
                      headers=bearer(w.key))
    assert "serves model version 1, not '2'" in _string_error(r, 404)
    texts = _infer(w, "mini", {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["ab", "abcd"]})
    assert texts.status_code == 200 and texts.json()["outputs"][0]["data"] == [2.0, 1.0, 4.0, 1.0]


def test_binary_tensor_data_in_and_out(w: World) -> None:
    x = np.linspace(0, 1, 3 * 64, dtype=np.float32).reshape(3, 64)
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                   {"name": "label", "parameters": {"binary_data": False}}]}).encode()
    r = w.client.post("/v2/models/digits/infer", content=head + x.tobytes(),
                      headers={**bearer(w.key), "Inference-Header-Content-Length": str(len(head)),
                               "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    body = json.loads(r.content[:n])
    probs, label = body["outputs"]
    assert probs["parameters"] == {"binary_data_size": 3 * 64 * 4} and "data" not in probs
    assert np.allclose(np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 64), x * 2)
    assert label["data"] == [63, 63, 63]
    short = w.client.post("/v2/models/digits/infer", content=head + x.tobytes()[:-4],
                          headers={**bearer(w.key), "Inference-Header-Content-Length": str(len(head))})
    assert 'input "pixels": binary_data_size is 768 but only 764 bytes' in _string_error(short, 400)


def test_binary_strings_and_a_gzip_body(w: World) -> None:
    texts = [b"ab", b"abcd"]
    blob = b"".join(len(t).to_bytes(4, "little") + t for t in texts)
    head = json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(blob)}}]}).encode()
    r = w.client.post("/v2/models/mini/infer", content=gzip.compress(head + blob),
                      headers={**bearer(w.key), "Inference-Header-Content-Length": str(len(head)),
                               "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0, 1.0, 4.0, 1.0]
    r = w.client.post("/v2/models/mini/infer", content=b"x", headers={**bearer(w.key), "Content-Encoding": "br"})
    assert "Content-Encoding 'br' is not supported" in _string_error(r, 400)


# -- contract sources --------------------------------------------------------------------------------------------
def test_signature_columns_and_card_names() -> None:
    sentence = {"inputs": [{"type": "string", "required": True}],
                "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 384]}}]}
    c = contracts.from_signature(sentence, ModelCard.from_dict(card_dict()), "text-embedding")
    assert c is not None and [s.to_dict() for s in c.inputs] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert c.outputs[0].name == "embedding"  # the card names what the signature leaves unnamed
    table = {"inputs": [{"type": "double", "name": "a"}, {"type": "double", "name": "b"}],
             "outputs": [{"type": "long"}]}
    c = contracts.from_signature(table, None, "tabular-classification")
    assert c is not None and [s.to_dict() for s in c.inputs] == [{"name": "input-0", "datatype": "FP64",
                                                                   "shape": [-1, 2]}]
    assert [s.to_dict() for s in c.outputs] == [{"name": "output-0", "datatype": "INT64", "shape": [-1]}]
    assert contracts.from_signature({"inputs": [], "outputs": []}, None, "") is None


def test_a_training_jobs_signature_becomes_the_endpoints_metadata() -> None:
    """The runtime logs ``torch_signature(model, sample)``; the gateway reads it back as OIP metadata."""
    import torch

    from haihe.jobs.recipes.models import DigitsCNN
    from haihe.jobs.runtime.tracking import torch_signature

    model = DigitsCNN()
    model.train()
    signature = torch_signature(model, torch.zeros(4, 1, 8, 8)).to_dict()
    assert model.training  # put back as it was
    parsed = {k: json.loads(signature[k]) for k in ("inputs", "outputs")}  # as MLmodel stores it
    c = contracts.from_signature(parsed, None, "image-classification")
    assert c is not None and c.source == "signature"
    assert [s.to_dict() for s in c.inputs] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [s.to_dict() for s in c.outputs] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 10]},
                                                {"name": "label", "datatype": "INT64", "shape": [-1]}]
