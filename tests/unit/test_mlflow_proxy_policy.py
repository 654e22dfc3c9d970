"""Job tokens and the MLflow proxy's policy, against a fake of what the policy asks MLflow (its ``Lookup`` seam)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from haihe.errors import AuthenticationRequired
from haihe.platform.tracking.proxy import (
    Call,
    Decision,
    JobScope,
    Policy,
    UserScope,
    issue_token,
    job_tracking,
    verify_token,
)

SECRET = "s" * 40
API = "api/2.0/mlflow/"


class FakeLookup:
    """Experiments 1 (acme/vision: the job's), 2 (beta/secret), 3 (acme/other); runs, logged models, models."""

    experiments = {"1": "acme/vision", "2": "beta/secret", "3": "acme/other"}
    runs = {"ra": "1", "rb": "2", "rc": "3"}
    logged = {"m-a": "1", "m-b": "2", "m-pub": "2"}
    models: dict[str, dict[str, str]] = {"beta~pub": {"haihe.visibility": "public"}, "beta~priv": {}}
    versions = {"m-pub": ["beta~pub"], "m-b": ["beta~priv"]}

    async def experiment_name(self, experiment_id: str) -> str | None:
        return self.experiments.get(experiment_id)

    async def run_experiment(self, run_id: str) -> str | None:
        return self.runs.get(run_id)

    async def logged_model_experiment(self, model_id: str) -> str | None:
        return self.logged.get(model_id)

    async def model_tags(self, name: str) -> Mapping[str, str] | None:
        return self.models.get(name)

    async def models_of_logged_model(self, model_id: str) -> Sequence[str]:
        return self.versions.get(model_id, [])


SCOPE = JobScope("job-1", "acme", "vision")


def decide(method: str, url: str, body: dict[str, Any] | None = None, writable: bool = True,
           **query: str) -> Decision:
    policy = Policy(SCOPE, FakeLookup(), writable=writable)
    return asyncio.run(policy.decide(Call(method, url, {k: [v] for k, v in query.items()}, body or {})))


def test_tokens_are_signed_bound_to_a_job_and_expire() -> None:
    token = issue_token(SECRET, SCOPE)
    assert verify_token(SECRET, token) == SCOPE
    body, _, sig = token.partition(".")
    other = issue_token(SECRET, JobScope("job-1", "beta", "vision")).partition(".")[0]
    for bad in (f"{other}.{sig}", body + ".", "hjt_x.y", "nope", ""):  # another org's payload with this signature
        with pytest.raises(AuthenticationRequired):
            verify_token(SECRET, bad)
    with pytest.raises(AuthenticationRequired):
        verify_token("another-secret" * 3, token)
    old = issue_token(SECRET, SCOPE, ttl_s=60, now=1000.0)
    assert verify_token(SECRET, old, now=1050.0) == SCOPE
    with pytest.raises(AuthenticationRequired):
        verify_token(SECRET, old, now=1061.0)
    url, job_token = job_tracking("http://mlflow:5000", "https://haihe.example/", SECRET, SCOPE)
    assert url == "https://haihe.example/mlflow" and verify_token(SECRET, job_token) == SCOPE
    assert job_tracking("", "https://haihe.example", SECRET, SCOPE) == ("", "")


@pytest.mark.parametrize(("method", "path", "body", "allowed"), [
    ("POST", "experiments/create", {"name": "acme/vision"}, True),
    ("POST", "experiments/create", {"name": "acme/vision/sweep"}, True),
    ("POST", "experiments/create", {"name": "acme/other"}, False),
    ("POST", "experiments/create", {"name": "beta/secret"}, False),
    ("POST", "experiments/create", {"name": "acme/vision", "artifact_location": "s3://mlflow/artifacts/2"}, False),
    ("POST", "runs/create", {"experiment_id": "1"}, True),
    ("POST", "runs/create", {"experiment_id": "2"}, False),
    ("POST", "runs/create", {"experiment_id": "3"}, False),
    ("POST", "runs/log-batch", {"run_id": "ra", "metrics": []}, True),
    ("POST", "runs/log-batch", {"run_id": "rb", "metrics": []}, False),
    ("POST", "runs/set-tag", {"run_uuid": "rb", "key": "k", "value": "v"}, False),
    ("POST", "runs/update", {"run_id": "missing"}, False),
    ("POST", "runs/delete", {"run_id": "ra"}, False),
    ("POST", "experiments/delete", {"experiment_id": "1"}, False),
    ("POST", "logged-models", {"experiment_id": "1", "name": "model"}, True),
    ("POST", "logged-models", {"experiment_id": "2", "name": "model"}, False),
    ("PATCH", "logged-models/m-a", {"status": "READY"}, True),
    ("PATCH", "logged-models/m-b", {"status": "READY"}, False),
    ("POST", "registered-models/create", {"name": "acme~cnn", "tags": [{"key": "haihe.org", "value": "acme"}]}, True),
    ("POST", "registered-models/create", {"name": "beta~cnn"}, False),
    ("POST", "registered-models/create",
     {"name": "acme~cnn", "tags": [{"key": "haihe.visibility", "value": "public"}]}, False),
    ("POST", "registered-models/set-tag", {"name": "acme~cnn", "key": "haihe.visibility", "value": "public"}, False),
    ("POST", "registered-models/alias", {"name": "beta~pub", "alias": "production", "version": "1"}, False),
    ("POST", "registered-models/alias", {"name": "acme~cnn", "alias": "production", "version": "1"}, True),
    ("POST", "model-versions/create", {"name": "acme~cnn", "source": "models:/m-a", "model_id": "m-a"}, True),
    ("POST", "model-versions/create", {"name": "acme~cnn", "source": "models:/m-b", "run_id": "rb"}, False),
    ("POST", "model-versions/create", {"name": "acme~cnn", "source": "mlflow-artifacts:/2/rb/artifacts/m"}, False),
    ("POST", "model-versions/create", {"name": "acme~cnn", "source": "runs:/ra/model"}, True),
])
def test_writes_stay_inside_the_jobs_experiment_and_org(method: str, path: str, body: dict[str, Any],
                                                        allowed: bool) -> None:
    decision = decide(method, API + path, body)
    assert decision.allowed is allowed, decision
    if not allowed:
        assert decision.status in (403, 404) and decision.error_code


def test_reads_see_the_org_and_the_public_zoo_only() -> None:
    assert decide("GET", API + "experiments/get-by-name", experiment_name="acme/other").allowed
    refused = decide("GET", API + "experiments/get-by-name", experiment_name="beta/secret")
    assert (refused.status, refused.error_code) == (404, "RESOURCE_DOES_NOT_EXIST")
    assert decide("GET", API + "runs/get", run_id="rc").allowed
    assert not decide("GET", API + "metrics/get-history", run_id="rb", metric_key="loss").allowed
    assert not decide("POST", API + "runs/search", {"experiment_ids": ["1", "2"]}).allowed
    assert decide("POST", API + "runs/search", {"experiment_ids": ["1", "3"]}).allowed
    assert decide("GET", API + "registered-models/get", name="beta~pub").allowed
    assert not decide("GET", API + "registered-models/get", name="beta~priv").allowed
    assert decide("GET", API + "model-versions/get-download-uri", name="acme~x", version="1").allowed
    # a public model's files may be read although they sit in another org's experiment; a private one's not
    assert decide("GET", "api/2.0/mlflow-artifacts/artifacts/2/models/m-pub/artifacts/MLmodel").allowed
    assert decide("GET", API + "logged-models/m-pub").allowed
    assert not decide("GET", "api/2.0/mlflow-artifacts/artifacts/2/models/m-b/artifacts/MLmodel").allowed
    assert decide("GET", "api/2.0/mlflow-artifacts/presigned/2/models/m-pub/artifacts/MLmodel").allowed
    assert not decide("GET", "api/2.0/mlflow-artifacts/presigned/2/models/m-b/artifacts/MLmodel").allowed
    assert not decide("GET", "api/2.0/mlflow-artifacts/artifacts", path="2/rb/artifacts").allowed
    assert decide("GET", "api/2.0/mlflow-artifacts/artifacts", path="3/rc/artifacts").allowed
    assert decide("GET", "health").allowed


def test_artifact_writes_and_odd_paths() -> None:
    art = "api/2.0/mlflow-artifacts/artifacts/"
    assert decide("PUT", art + "1/ra/artifacts/model/MLmodel").allowed
    assert not decide("PUT", art + "2/rb/artifacts/model/MLmodel").allowed
    assert not decide("PUT", art + "3/rc/artifacts/x").allowed
    assert not decide("PUT", art + "1/../2/rb/x").allowed
    assert not decide("PUT", art + "1//x").allowed
    assert not decide("DELETE", art + "1/ra/artifacts/x").allowed
    assert decide("POST", "api/2.0/mlflow-artifacts/mpu/create/1/ra/artifacts/big.bin").allowed
    assert not decide("POST", "api/2.0/mlflow-artifacts/mpu/create/2/rb/artifacts/big.bin").allowed
    for method, path in (("POST", "graphql"), ("GET", "ajax-api/2.0/mlflow/runs/get"),
                         ("POST", "api/3.0/mlflow/gateway/secrets/create"), ("GET", "api/2.0/mlflow/webhooks")):
        assert not decide(method, path).allowed


def test_an_ended_or_suspended_jobs_token_only_reads() -> None:
    assert not decide("POST", API + "runs/log-batch", {"run_id": "ra"}, writable=False).allowed
    assert not decide("PUT", "api/2.0/mlflow-artifacts/artifacts/1/ra/artifacts/x", writable=False).allowed
    assert decide("GET", API + "runs/get", writable=False, run_id="ra").allowed


def test_search_answers_are_filtered_to_what_the_job_may_see() -> None:
    policy = Policy(SCOPE, FakeLookup())
    experiments = {"experiments": [{"name": "acme/vision"}, {"name": "beta/secret"}, {"name": "acme/other"}]}
    assert [e["name"] for e in asyncio.run(policy.filter_body("experiments", experiments))["experiments"]] == [
        "acme/vision", "acme/other"]
    models = {"registered_models": [
        {"name": "acme~a"}, {"name": "beta~priv", "tags": []},
        {"name": "beta~pub", "tags": [{"key": "haihe.visibility", "value": "public"}]}]}
    kept = asyncio.run(policy.filter_body("registered_models", models))["registered_models"]
    assert [m["name"] for m in kept] == ["acme~a", "beta~pub"]
    versions = {"model_versions": [{"name": "beta~priv"}, {"name": "beta~pub"}, {"name": "acme~a"}]}
    kept = asyncio.run(policy.filter_body("model_versions", versions))["model_versions"]
    assert [v["name"] for v in kept] == ["beta~pub", "acme~a"]


# -- people: the stock MLflow client with their key or token, MLflow's UI with their portal session ----------------
ALICE = UserScope("alice", read_orgs=frozenset({"acme"}), write_orgs=frozenset({"acme"}))
ALICE_BROWSER = UserScope("alice", read_orgs=frozenset({"acme"}))  # a portal session: read-only
VIEWER = UserScope("vic", read_orgs=frozenset({"acme"}))  # a viewer of acme: reads only
BOB = UserScope("bob", read_orgs=frozenset({"beta"}), write_orgs=frozenset({"beta"}))


def decide_as(scope: UserScope, method: str, url: str, body: dict[str, Any] | None = None, writable: bool = True,
              **query: str) -> Decision:
    policy = Policy(scope, FakeLookup(), writable=writable)
    return asyncio.run(policy.decide(Call(method, url, {k: [v] for k, v in query.items()}, body or {})))


def test_a_person_reads_every_experiment_of_their_orgs_and_nothing_else() -> None:
    assert decide_as(ALICE, "GET", API + "runs/get", run_id="ra").allowed
    assert decide_as(ALICE, "GET", API + "runs/get", run_id="rc").allowed  # another project of acme
    assert decide_as(ALICE, "GET", API + "runs/get", run_id="rb").status == 404
    assert decide_as(BOB, "GET", API + "runs/get", run_id="ra").status == 404
    assert decide_as(ALICE, "POST", API + "runs/search", {"experiment_ids": ["1", "3"]}).allowed
    assert decide_as(ALICE, "POST", API + "runs/search", {"experiment_ids": ["1", "2"]}).status == 404
    assert decide_as(BOB, "POST", API + "runs/search", {"experiment_ids": ["1"]}).status == 404
    assert decide_as(ALICE, "GET", "api/2.0/mlflow-artifacts/artifacts/1/abc/model.pt").allowed
    assert decide_as(BOB, "GET", "api/2.0/mlflow-artifacts/artifacts/1/abc/model.pt").status == 404


def test_search_answers_are_filtered_to_the_persons_orgs() -> None:
    body = {"experiments": [{"name": "acme/vision"}, {"name": "beta/secret"}, {"name": "Default"}],
            "registered_models": [{"name": "acme~digits"}, {"name": "beta~priv"},
                                  {"name": "beta~pub", "tags": [{"key": "haihe.visibility", "value": "public"}]}]}
    for scope, exps, models in ((ALICE, ["acme/vision"], ["acme~digits", "beta~pub"]),
                                (BOB, ["beta/secret"], ["beta~priv", "beta~pub"])):
        policy = Policy(scope, FakeLookup())
        d = asyncio.run(policy.decide(Call("POST", API + "experiments/search", {}, {})))
        shown = asyncio.run(policy.filter_body(d.filter or "experiments", {"experiments": list(body["experiments"])}))
        assert [e["name"] for e in shown["experiments"]] == exps
        shown = asyncio.run(policy.filter_body("registered_models",
                                               {"registered_models": list(body["registered_models"])}))
        assert [m["name"] for m in shown["registered_models"]] == models


def test_writes_only_where_the_role_allows_and_never_from_a_browser_session() -> None:
    assert decide_as(ALICE, "POST", API + "runs/create", {"experiment_id": "3"}).allowed
    assert not decide_as(ALICE, "POST", API + "runs/create", {"experiment_id": "2"}).allowed
    assert not decide_as(VIEWER, "POST", API + "runs/create", {"experiment_id": "1"}).allowed
    assert not decide_as(ALICE_BROWSER, "POST", API + "runs/log-batch", {"run_id": "ra"}, writable=False).allowed
    assert not decide_as(ALICE, "POST", API + "registered-models/create", {"name": "beta~x"}).allowed
    assert decide_as(ALICE, "POST", API + "registered-models/create", {"name": "acme~x"}).allowed
    # the UI: its page and static files, and its copy of the REST API under ajax-api/ (searches are reads)
    for path in ("", "static-files/static/js/main.js"):
        assert decide_as(ALICE_BROWSER, "GET", path, writable=False).allowed
    assert decide_as(ALICE_BROWSER, "POST", "ajax-api/2.0/mlflow/runs/search", {"experiment_ids": ["1"]},
                     writable=False).allowed
    assert decide_as(ALICE_BROWSER, "POST", "ajax-api/2.0/mlflow/runs/search", {"experiment_ids": ["2"]},
                     writable=False).status == 404
    assert not decide_as(ALICE_BROWSER, "POST", "ajax-api/2.0/mlflow/runs/delete", {"run_id": "ra"},
                         writable=False).allowed
    # a job's token never gets the UI
    assert not decide("GET", "").allowed and not decide("GET", "static-files/x.js").allowed


GET_RUN = ("query MlflowGetRunQuery($data: MlflowGetRunInput!) "
           "{ mlflowGetRun(input: $data) { run { info { runUuid } } } }")


@pytest.mark.parametrize(("scope", "body", "status"), [
    (ALICE_BROWSER, {"query": GET_RUN, "variables": {"data": {"runId": "ra"}}}, 200),
    (ALICE_BROWSER, {"query": GET_RUN, "variables": {"data": {"runId": "rb"}}}, 404),  # beta's run
    (BOB, {"query": GET_RUN, "variables": {"data": {"runId": "ra"}}}, 404),
    (ALICE_BROWSER, {"query": 'query { mlflowGetRun(input: {runId: "rb"}) { run { info { runUuid } } } }'}, 404),
    (ALICE_BROWSER, {"query": "query Q($d: MlflowGetMetricHistoryBulkIntervalInput) "
                              "{ mlflowGetMetricHistoryBulkInterval(input: $d) { metrics { key } } }",
                     "variables": {"d": {"runIds": ["ra", "rc"], "metricKey": "loss"}}}, 200),
    (ALICE_BROWSER, {"query": "query Q($d: MlflowGetMetricHistoryBulkIntervalInput) "
                              "{ mlflowGetMetricHistoryBulkInterval(input: $d) { metrics { key } } }",
                     "variables": {"d": {"runIds": ["ra", "rb"], "metricKey": "loss"}}}, 404),
    (ALICE_BROWSER, {"query": 'mutation { mlflowSearchRuns(input: {experimentIds: ["1"]}) { runs { info '
                              '{ runUuid } } } }'}, 200),
    (ALICE_BROWSER, {"query": 'mutation { mlflowSearchRuns(input: {experimentIds: ["1", "2"]}) { runs { info '
                              '{ runUuid } } } }'}, 404),
    (ALICE_BROWSER, {"query": "query { __schema { types { name } } }"}, 403),  # no introspection
    (ALICE_BROWSER, {"query": "query { mlflowSearchModelVersions(input: {}) { modelVersions { name } } }"}, 403),
    (ALICE_BROWSER, {"query": "query A { test(inputString: \"x\") { output } } query B { test { output } }"}, 403),
    (ALICE_BROWSER, {"query": "{ ...F } fragment F on Query { mlflowGetRun(input: {runId: \"rb\"}) { run "
                              "{ info { runUuid } } } }"}, 403),
    (ALICE_BROWSER, {"query": "query { mlflowGetRun("}, 403),
])
def test_the_uis_graphql_is_decided_like_its_rest_twin(scope: UserScope, body: dict[str, Any], status: int) -> None:
    d = decide_as(scope, "POST", "graphql", body, writable=False)
    assert (d.status if not d.allowed else 200) == status, d


def test_jobs_get_no_graphql() -> None:
    assert not decide("POST", "graphql", {"query": GET_RUN, "variables": {"data": {"runId": "ra"}}}).allowed
