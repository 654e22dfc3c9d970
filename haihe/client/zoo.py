"""Model zoo and tracking operations of the typed API client (mixed into ``HaiheClient``).

``pull_model`` fetches the files the API lists: straight from S3 when the URLs are presigned, else through the
API's streaming route. Nothing here imports MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from haihe import errors
from haihe.client.http import model, models, raise_for_error, seg
from haihe.platform.zoo.schemas import (
    DatasetModelPublic,
    DownloadPublic,
    ModelDetail,
    ModelPublic,
    RunMetricsPublic,
    RunPublic,
    VersionPublic,
)


def split_ref(ref: str) -> tuple[str, str, int | None, str | None]:
    """``org/name[@alias|:N]`` → (org, name, version, alias)."""
    base, at, alias = ref.partition("@")
    base, colon, number = base.partition(":")
    org, slash, name = base.partition("/")
    if not slash or not org or not name:
        raise errors.InvalidInput(f"{ref!r} is not org/name[@alias|:version]", field="model")
    if colon and not number.isdigit():
        raise errors.InvalidInput(f"{ref!r}: the version must be a number", field="model")
    return org, name, int(number) if colon else None, alias if at else None


def _model(org: str, name: str) -> str:
    return f"/api/v1/models/{seg(org)}/{seg(name)}"


class ZooClientMixin:
    """Zoo methods; ``self.request(method, path, **kwargs)`` and ``self._http`` come from HaiheClient."""

    _http: httpx.Client

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HaiheClient's
        raise NotImplementedError

    def list_models(self, *, task: str | None = None, q: str | None = None, org: str | None = None,
                    visibility: str | None = None) -> list[ModelPublic]:
        params = {k: v for k, v in {"task": task, "q": q, "org": org, "visibility": visibility}.items() if v}
        return models(ModelPublic, self.request("GET", "/api/v1/models", params=params))

    def get_model(self, ref: str) -> ModelDetail:
        org, name, _, _ = split_ref(ref)
        return model(ModelDetail, self.request("GET", _model(org, name)))

    def set_model_alias(self, ref: str, alias: str, version: int | None) -> VersionPublic | None:
        org, name, _, _ = split_ref(ref)
        result = self.request("PUT", f"{_model(org, name)}/aliases/{seg(alias)}", json={"version": version})
        return model(VersionPublic, result) if result else None

    def set_model_visibility(self, ref: str, visibility: str) -> ModelPublic:
        org, name, _, _ = split_ref(ref)
        return model(ModelPublic, self.request("PUT", f"{_model(org, name)}/visibility",
                                               json={"visibility": visibility}))

    def delete_model(self, ref: str) -> None:
        org, name, version, alias = split_ref(ref)
        if alias:
            raise errors.InvalidInput("delete takes org/name or org/name:version, not an alias", field="model")
        self.request("DELETE", _model(org, name), params={"version": version} if version else None)

    def register_model(self, ref: str, job_id: str, card: dict[str, Any], *, artifact_path: str = "model",
                       run_id: str | None = None, visibility: str | None = None) -> VersionPublic:
        org, name, _, _ = split_ref(ref)
        body = {"job_id": job_id, "card": card, "artifact_path": artifact_path, "run_id": run_id,
                "visibility": visibility}
        return model(VersionPublic, self.request("POST", f"{_model(org, name)}/versions", json=body))

    def model_download(self, ref: str) -> DownloadPublic:
        org, name, version, alias = split_ref(ref)
        params: dict[str, Any] = {"version": version} if version else {"alias": alias} if alias else {}
        return model(DownloadPublic, self.request("GET", f"{_model(org, name)}/download", params=params))

    def pull_model(self, ref: str, dest: Path | str,
                   progress: Callable[[str, int], None] | None = None) -> tuple[DownloadPublic, Path]:
        """Download a version's files into ``dest`` (new or empty); returns the manifest and the directory."""
        target = Path(dest)
        if target.exists() and any(target.iterdir()):
            raise errors.InvalidInput(f"{target} is not empty", field="dest")
        manifest = self.model_download(ref)
        for f in manifest.files:
            path = target / f.path
            if not path.resolve().is_relative_to(target.resolve()):
                raise errors.InvalidInput(f"refusing to write outside {target}: {f.path!r}", field="path")
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fetch(f.url, path, manifest.presigned, progress, f.path)
        return manifest, target

    def _fetch(self, url: str, path: Path, presigned: bool, progress: Callable[[str, int], None] | None,
               name: str) -> None:
        try:
            stream = httpx.stream("GET", url, timeout=300) if presigned else self._http.stream("GET", url)
            with stream as response:
                if response.status_code >= 300:
                    response.read()
                    if not presigned:
                        raise_for_error(response)
                    raise errors.StorageUnavailable(f"storage refused {name}: HTTP {response.status_code}")
                done = 0
                with path.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(name, done)
        except httpx.TransportError as exc:
            raise errors.ServiceUnavailable(f"download of {name} failed: {exc}") from exc

    def models_for_dataset(self, dataset: str) -> list[DatasetModelPublic]:
        return models(DatasetModelPublic, self.request("GET", "/api/v1/dataset-models", params={"dataset": dataset}))

    def job_runs(self, job_id: str) -> list[RunPublic]:
        return models(RunPublic, self.request("GET", f"/api/v1/jobs/{seg(job_id)}/run"))

    def job_metrics(self, job_id: str, keys: list[str] | None = None) -> list[RunMetricsPublic]:
        params = {"key": keys} if keys else None
        return models(RunMetricsPublic, self.request("GET", f"/api/v1/jobs/{seg(job_id)}/metrics", params=params))
