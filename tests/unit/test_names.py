"""One rule per kind of name (haihe/names.py), read by every place that checks one: what can be created can be
named (issue 17: a dataset `cats_v1` could be created, but no job spec could name it)."""

from __future__ import annotations

import pytest

from haihe import names
from haihe.datasets import layout
from haihe.errors import InvalidInput
from haihe.jobs.spec import validate_spec
from haihe.model_zoo import names as zoo_names
from haihe.platform.identity import service as identity

RESOURCE_OK = ["cats_v1", "resnet.50", "a", "x-y_z.1", "0abc"]
RESOURCE_BAD = ["Cats", "_x", "x_", "a..b", "", "a/b", "a" * 65, "ü", "a b"]
ACCOUNT_OK = ["acme", "a-1", "0x"]
ACCOUNT_BAD = ["a_b", "a.b", "-a", "A", ""]


@pytest.mark.parametrize("name", RESOURCE_OK)
def test_a_dataset_or_model_that_can_be_created_can_be_named_by_a_job(name: str) -> None:
    assert layout.check_name(name, "dataset") == name
    assert zoo_names.check_name(name, "name") == name
    spec = validate_spec({"name": "j", "recipe": "finetune", "dataset": {"name": f"acme/{name}"},
                          "model": {"from_zoo": f"acme/{name}@production"}, "register": {"name": name}})
    assert spec.dataset is not None and spec.dataset.name == f"acme/{name}"
    assert spec.registration is not None


@pytest.mark.parametrize("name", RESOURCE_BAD)
def test_what_cannot_be_created_cannot_be_named_either(name: str) -> None:
    with pytest.raises(InvalidInput):
        layout.check_name(name, "dataset")
    with pytest.raises(InvalidInput):
        zoo_names.check_name(name, "name")
    with pytest.raises(InvalidInput):
        validate_spec({"name": "j", "entrypoint": ["true"], "dataset": {"name": f"acme/{name}"}})


@pytest.mark.parametrize("name", ACCOUNT_OK)
def test_account_names(name: str) -> None:
    assert identity.check_name(name, "name") == name
    assert names.is_resource_name(name)  # an org is always a valid first part of a resource reference


@pytest.mark.parametrize("name", ACCOUNT_BAD)
def test_account_names_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        identity.check_name(name, "name")
    assert err.value.field == "name"
