"""The zoo's rules (validation first, rollback, aliases, lineage search, caching) against a stateful in-memory
registry injected through the RegistryBackend seam."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from haihe.errors import Conflict, InvalidInput, NotFound, TrackingUnavailable
from haihe.model_zoo import Lineage, ModelZoo
from haihe.model_zoo.backend import ModelRecord, VersionRecord
from haihe.model_zoo.registry import TAG_CARD, TAG_VISIBILITY
from tests.unit.test_model_zoo_names import card_dict

RUN = "a" * 32


class FakeRegistry:
    """MLflow's registry, in memory. ``fail`` names operations that raise TrackingUnavailable (one shot each)."""

    def __init__(self) -> None:
        self.models: dict[str, ModelRecord] = {}
        self.versions: dict[str, dict[int, VersionRecord]] = {}
        self.logged: dict[str, str] = {"models:/m-1": RUN, "models:/m-2": "b" * 32}  # uri -> run
        self.fail: set[str] = set()
        self.downloads = 0
        self.mlmodels: dict[str, str] = {}  # source uri -> MLmodel text (default: a document without signature)
        self._clock = itertools.count(1000)

    def _maybe_fail(self, op: str) -> None:
        if op in self.fail:
            self.fail.discard(op)
            raise TrackingUnavailable(f"{op}: injected failure", component="mlflow")

    def _model(self, name: str) -> ModelRecord:
        if name not in self.models:
            raise NotFound(f"model {name}")
        return self.models[name]

    def get_model(self, name: str) -> ModelRecord:
        self._maybe_fail("get_model")
        return self._model(name)

    def create_model(self, name: str, *, description: str, tags: Mapping[str, str]) -> ModelRecord:
        self._maybe_fail("create_model")
        if name in self.models:
            raise Conflict(name)
        now = next(self._clock)
        self.models[name] = ModelRecord(name, description, dict(tags), {}, now, now)
        self.versions[name] = {}
        return self.models[name]

    def update_model(self, name: str, *, description: str | None, tags: Mapping[str, str]) -> None:
        self._maybe_fail("update_model")
        model = self._model(name)
        self.models[name] = replace(
            model,
            description=model.description if description is None else description,
            tags={**model.tags, **tags},
            updated_ms=next(self._clock),
        )

    def delete_model(self, name: str) -> None:
        self._model(name)
        del self.models[name]
        del self.versions[name]

    def search_models(self, *, name_prefix: str | None, tags: Mapping[str, str]) -> list[ModelRecord]:
        self._maybe_fail("search_models")
        return [
            m
            for m in self.models.values()
            if (name_prefix is None or m.name.startswith(name_prefix))
            and all(m.tags.get(k) == v for k, v in tags.items())
        ]

    def create_version(
        self, name: str, *, source: str, run_id: str | None, model_id: str | None, tags: Mapping[str, str]
    ) -> VersionRecord:
        self._maybe_fail("create_version")
        self._model(name)
        number = max(self.versions[name], default=0) + 1
        record = VersionRecord(name, number, source, run_id, model_id, "READY", dict(tags), (), next(self._clock))
        self.versions[name][number] = record
        return record

    def get_version(self, name: str, version: int) -> VersionRecord:
        self._model(name)
        if version not in self.versions[name]:
            raise NotFound(f"{name} v{version}")
        record = self.versions[name][version]
        aliases = tuple(a for a, v in self.models[name].aliases.items() if v == version)
        return replace(record, aliases=aliases)

    def version_by_alias(self, name: str, alias: str) -> VersionRecord:
        version = self._model(name).aliases.get(alias)
        if version is None:
            raise NotFound(alias)
        return self.get_version(name, version)

    def search_versions(self, *, name: str | None, tags: Mapping[str, str]) -> list[VersionRecord]:
        names = [name] if name is not None else list(self.versions)
        return [
            self.get_version(n, v.version)
            for n in names
            if n in self.versions
            for v in self.versions[n].values()
            if all(v.tags.get(k) == val for k, val in tags.items())
        ]

    def delete_version(self, name: str, version: int) -> None:
        self.get_version(name, version)
        del self.versions[name][version]
        model = self.models[name]
        self.models[name] = replace(model, aliases={a: v for a, v in model.aliases.items() if v != version})

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._maybe_fail("set_alias")
        self.get_version(name, version)
        model = self.models[name]
        self.models[name] = replace(model, aliases={**model.aliases, alias: version})

    def delete_alias(self, name: str, alias: str) -> None:
        model = self._model(name)
        if alias not in model.aliases:
            raise NotFound(alias)
        self.models[name] = replace(model, aliases={a: v for a, v in model.aliases.items() if a != alias})

    def resolve_source(self, model_uri: str) -> tuple[str, str | None, str | None]:
        if model_uri.startswith("runs:/"):
            run, _, _path = model_uri[len("runs:/") :].partition("/")
            matches = [uri for uri, r in self.logged.items() if r == run]
            if not matches:
                raise NotFound(model_uri)
            model_uri = matches[0]
        if model_uri not in self.logged:
            raise NotFound(model_uri)
        return model_uri, self.logged[model_uri], model_uri.removeprefix("models:/")

    def download(self, name: str, version: int, dest: Path) -> Path:
        self.downloads += 1
        record = self.get_version(name, version)
        (dest / "model").mkdir(parents=True)
        (dest / "model" / "MLmodel").write_text(f"source: {record.source}\n")
        return dest

    def read_model_file(self, name: str, version: int, path: str) -> str:
        source = self.get_version(name, version).source
        if path != "MLmodel":
            raise NotFound(f"{source}/{path}")
        return self.mlmodels.get(source, f"source: {source}\n")

    def log_local_model(self, *, experiment: str, local_dir: Path, name: str, run_tags: Mapping[str, str]) -> str:
        uri = f"models:/m-{len(self.logged) + 1}"
        self.logged[uri] = f"{len(self.logged) + 1:032x}"
        return uri


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def zoo(fake: FakeRegistry, tmp_path: Path) -> ModelZoo:
    return ModelZoo(fake, cache_dir=tmp_path / "cache")


def test_register_stores_card_lineage_and_visibility_as_tags(zoo: ModelZoo, fake: FakeRegistry) -> None:
    version = zoo.register(
        "acme/bert", card_dict(), model_uri="models:/m-1", lineage=Lineage(job_id="j1", dataset="acme/docs@v2")
    )
    assert str(version.ref) == "acme/bert:1"
    assert version.lineage == Lineage("j1", RUN, "acme/docs@v2")  # run filled in from the logged model
    assert version.card is not None and version.card.training_data == ["acme/docs@v2"]
    stored = fake.models["acme~bert"]
    assert stored.tags[TAG_VISIBILITY] == "private"
    assert stored.tags["haihe.org"] == "acme"
    assert fake.versions["acme~bert"][1].tags["haihe.dataset"] == "acme/docs@v2"
    listed = zoo.list()
    assert [(str(m.ref), m.task, m.owner_org) for m in listed] == [("acme/bert", "text-embedding", "acme")]


def test_nothing_is_written_when_validation_fails(zoo: ModelZoo, fake: FakeRegistry) -> None:
    bad_card = card_dict()
    del bad_card["owner"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"card": bad_card, "model_uri": "models:/m-1"}, "card.owner"),
        ({"card": card_dict(), "model_uri": "models:/m-1", "visibility": "secret"}, "visibility"),
        ({"card": card_dict(), "model_uri": "models:/m-1", "run_id": RUN}, "model_uri"),
        ({"card": card_dict(), "run_id": "nope", "artifact_path": "model"}, "run_id"),
        ({"card": card_dict(), "run_id": RUN, "artifact_path": "../x"}, "artifact_path"),
        ({"card": card_dict()}, "model_uri"),
        ({"card": card_dict(), "model_uri": "models:/m-1", "lineage": Lineage(run_id="b" * 32)}, "lineage.run_id"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as info:
            zoo.register("acme/bert", **kwargs)
        assert info.value.field == field, kwargs
    with pytest.raises(InvalidInput):
        zoo.register("acme/bert:3", card_dict(), model_uri="models:/m-1")
    with pytest.raises(NotFound):
        zoo.register("acme/bert", card_dict(), model_uri="models:/m-404")
    assert fake.models == {}


def test_a_failed_version_write_removes_the_model_it_created(zoo: ModelZoo, fake: FakeRegistry) -> None:
    fake.fail.add("create_version")
    with pytest.raises(TrackingUnavailable):
        zoo.register("acme/bert", card_dict(), model_uri="models:/m-1")
    assert fake.models == {} and fake.versions == {}


def test_a_failed_card_update_removes_the_new_version_and_restores_the_model(zoo: ModelZoo, fake: FakeRegistry) -> None:
    zoo.register("acme/bert", card_dict(description="first"), model_uri="models:/m-1")
    before = fake.models["acme~bert"]
    fake.fail.add("update_model")
    with pytest.raises(TrackingUnavailable):
        zoo.register("acme/bert", card_dict(description="second"), model_uri="models:/m-2", visibility="public")
    assert list(fake.versions["acme~bert"]) == [1]
    after = fake.models["acme~bert"]
    assert after.tags == before.tags and after.description == "first"


def test_a_model_registered_concurrently_gets_a_new_version(zoo: ModelZoo, fake: FakeRegistry) -> None:
    class Racing(FakeRegistry):
        def get_model(self, name: str) -> ModelRecord:
            if name not in self.models and not getattr(self, "raced", False):
                self.raced = True
                other = ModelZoo(self)
                other.register("acme/bert", card_dict(), model_uri="models:/m-2")
                raise NotFound(name)
            return super().get_model(name)

    racing = Racing()
    version = ModelZoo(racing).register("acme/bert", card_dict(), model_uri="models:/m-1")
    assert version.version == 2
    assert sorted(racing.versions["acme~bert"]) == [1, 2]


def test_registering_over_a_non_zoo_model_is_refused(zoo: ModelZoo, fake: FakeRegistry) -> None:
    fake.create_model("acme~bert", description="made in MLflow's UI", tags={})
    with pytest.raises(NotFound):
        zoo.get("acme/bert")
    assert zoo.list() == []


def test_aliases_point_at_existing_versions_only(zoo: ModelZoo, fake: FakeRegistry) -> None:
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-1")
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-2")
    moved = zoo.set_alias("acme/bert", "production", 1)
    assert moved is not None and moved.aliases == ("production",)
    zoo.set_alias("acme/bert", "staging", 2)
    with pytest.raises(InvalidInput) as info:
        zoo.set_alias("acme/bert", "production", 9)
    assert info.value.field == "version"
    with pytest.raises(InvalidInput) as info:
        zoo.set_alias("acme/bert", "v2", 1)
    assert info.value.field == "alias"
    with pytest.raises(NotFound):
        zoo.set_alias("acme/other", "production", 1)
    assert dict(fake.models["acme~bert"].aliases) == {"production": 1, "staging": 2}
    assert zoo.set_alias("acme/bert", "staging", None) is None
    assert zoo.set_alias("acme/bert", "staging", None) is None  # removing twice is fine
    detail = zoo.get("acme/bert@production")
    assert detail.selected is not None and detail.selected.version == 1
    assert [v.version for v in detail.versions] == [2, 1]
    assert dict(detail.model.aliases) == {"production": 1}


def test_list_filters_by_org_task_visibility_and_text(zoo: ModelZoo) -> None:
    zoo.register("acme/bert", card_dict(description="Maintenance log embeddings"), model_uri="models:/m-1")
    zoo.register("acme-labs/cnn", card_dict(task="image-classification"), model_uri="models:/m-2")
    zoo.set_visibility("acme-labs/cnn", "public")
    assert [str(m.ref) for m in zoo.list(org="acme")] == ["acme/bert"]  # a prefix of another org is not a match
    assert [str(m.ref) for m in zoo.list(task="image-classification")] == ["acme-labs/cnn"]
    assert [str(m.ref) for m in zoo.list(visibility="public")] == ["acme-labs/cnn"]
    assert [str(m.ref) for m in zoo.list(text="maintenance")] == ["acme/bert"]
    with pytest.raises(InvalidInput):
        zoo.list(visibility="everyone")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        zoo.list(org="Acme")


def test_models_from_a_dataset_version(zoo: ModelZoo) -> None:
    zoo.register("acme/a", card_dict(), model_uri="models:/m-1", lineage=Lineage(dataset="acme/docs@v1"))
    zoo.register("acme/b", card_dict(), model_uri="models:/m-2", lineage=Lineage(dataset="acme/docs@v2"))
    zoo.register("acme/a", card_dict(), model_uri="models:/m-2", lineage=Lineage(dataset="acme/docs@v1"))
    assert [str(v.ref) for v in zoo.models_from_dataset("acme/docs@v1")] == ["acme/a:1", "acme/a:2"]
    assert zoo.models_from_dataset("acme/docs@v9") == []
    with pytest.raises(InvalidInput):
        zoo.models_from_dataset("acme/docs")


def test_delete_a_version_or_the_model(zoo: ModelZoo, fake: FakeRegistry) -> None:
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-1")
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-2")
    with pytest.raises(InvalidInput):
        zoo.delete("acme/bert@production")
    with pytest.raises(NotFound):
        zoo.delete("acme/bert:7")
    zoo.delete("acme/bert:1")
    assert [v.version for v in zoo.get("acme/bert").versions] == [2]
    zoo.delete("acme/bert")
    assert fake.models == {}
    with pytest.raises(NotFound):
        zoo.delete("acme/bert")


def test_export_and_the_load_cache(zoo: ModelZoo, fake: FakeRegistry, tmp_path: Path) -> None:
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-1")
    out = zoo.export("acme/bert", tmp_path / "out")
    assert (out / "MLmodel").read_text() == "source: models:/m-1\n"
    with pytest.raises(InvalidInput) as info:
        zoo.export("acme/bert", tmp_path / "out")
    assert info.value.field == "dest_dir"
    first = zoo.local_path("acme/bert:1")
    again = zoo.local_path("acme/bert")
    assert first == again and (first / "MLmodel").is_file()
    assert fake.downloads == 2  # one export, one download into the cache, then cache hits
    with pytest.raises(NotFound):
        zoo.load("acme/bert@production")
    with pytest.raises(InvalidInput):
        zoo.load("acme/bert", flavor="onnx")  # type: ignore[arg-type]


MLMODEL_WITH_SIGNATURE = """\
flavors:
  pytorch: {}
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1,
    10]}}]'
  params: null
"""


def test_signature_is_read_from_mlmodel_without_downloading_the_model(zoo: ModelZoo, fake: FakeRegistry) -> None:
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-1")
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-2")
    fake.mlmodels["models:/m-2"] = MLMODEL_WITH_SIGNATURE
    assert zoo.signature("acme/bert:1") is None  # logged without one
    sig = zoo.signature("acme/bert")  # newest: version 2
    assert sig == {"inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}],
                   "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]}
    assert fake.downloads == 0
    fake.mlmodels["models:/m-2"] = "signature: [not, a, mapping"
    assert zoo.signature("acme/bert:2") is None
    with pytest.raises(NotFound):
        zoo.signature("acme/bert:9")


def test_cards_edited_by_hand_do_not_break_listing(zoo: ModelZoo, fake: FakeRegistry) -> None:
    zoo.register("acme/bert", card_dict(), model_uri="models:/m-1")
    fake.update_model("acme~bert", description=None, tags={TAG_CARD: "{broken", TAG_VISIBILITY: "weird"})
    [model] = zoo.list()
    assert model.card is None and model.visibility == "private" and model.task == "text-embedding"


def test_seed_is_idempotent_and_finishes_a_half_done_seed(zoo: ModelZoo, fake: FakeRegistry) -> None:
    from haihe.model_zoo import seed

    saved: list[Path] = []

    def fake_save(dest: Path) -> None:
        dest.mkdir(parents=True)
        (dest / "MLmodel").write_text("flavors: {}\n")
        saved.append(dest)

    fake.fail.add("set_alias")  # the first seed stops after registering
    with pytest.raises(TrackingUnavailable):
        seed.seed_minilm(zoo, save=fake_save)
    finished = seed.seed_minilm(zoo, save=fake_save)
    assert finished is not None and finished.aliases == ("production",)
    assert seed.seed_minilm(zoo, save=fake_save) is None
    assert len(saved) == 1
    detail = zoo.get("public/minilm-l6")
    assert [v.version for v in detail.versions] == [1]
    assert detail.model.visibility == "public" and detail.model.task == "text-embedding"


def test_lineage_from_tags_drops_only_the_field_it_cannot_read() -> None:
    from haihe.model_zoo import Lineage

    run = "a" * 32
    got = Lineage.from_tags({"haihe.job_id": "job-1", "haihe.run_id": run,
                             "haihe.dataset": "builtin:sklearn.datasets.load_digits"})
    assert (got.job_id, got.run_id, got.dataset) == ("job-1", run, None)
    assert Lineage.from_tags({"haihe.run_id": "not-a-run"}) == Lineage()
