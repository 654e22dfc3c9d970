"""Dataset operations of the typed API client (mixed into ``HaiheClient``), and ``push``/``pull`` over the API.

The API hands out presigned URLs; the bytes go straight between this machine and S3 (``haihe.datasets.push``).
``HttpUploadBackend`` is the library's ``UploadBackend`` over the REST API, so ``push()`` begins, resumes and
finishes versions through the platform, which allocates version numbers and checks access.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haihe.client.http import model, seg
from haihe.platform.datasets.schemas import (
    DatasetDeleted,
    DatasetDetail,
    DatasetPage,
    DatasetPublic,
    DownloadPublic,
    GcPublic,
    UploadTicketPublic,
    VersionCommitted,
    VersionPublic,
)

if TYPE_CHECKING:
    from haihe.datasets.manifest import Manifest
    from haihe.datasets.presigned import Transport
    from haihe.datasets.push import UploadTicket
    from haihe.datasets.upload import FileSpec

Progress = Callable[[int, int], None]



def _ds(org: str, name: str) -> str:
    return f"/api/v1/orgs/{seg(org)}/datasets/{seg(name)}"


class DatasetsClientMixin:
    """Dataset methods; ``self.request(method, path, **kwargs)`` is provided by HaiheClient."""

    def request(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - HaiheClient's
        raise NotImplementedError

    # -- datasets ---------------------------------------------------------------------------------------------
    def create_dataset(self, org: str, name: str, *, description: str = "", licence: str = "",
                       visibility: str = "private") -> DatasetPublic:
        body = {"name": name, "description": description, "licence": licence, "visibility": visibility}
        return model(DatasetPublic, self.request("POST", f"/api/v1/orgs/{seg(org)}/datasets", json=body))

    def list_datasets(self, org: str | None = None, *, cursor: int | None = None, limit: int = 50) -> DatasetPage:
        params: dict[str, Any] = {"limit": limit}
        if org:
            params["org"] = org
        if cursor is not None:
            params["cursor"] = cursor
        return model(DatasetPage, self.request("GET", "/api/v1/datasets", params=params))

    def get_dataset(self, org: str, name: str, version: int | str | None = None) -> DatasetDetail:
        params = {"version": str(version)} if version is not None else None
        return model(DatasetDetail, self.request("GET", _ds(org, name), params=params))

    def share_dataset(self, org: str, name: str, target_org: str) -> DatasetDetail:
        return model(DatasetDetail, self.request("PUT", f"{_ds(org, name)}/shares/{seg(target_org)}"))

    def unshare_dataset(self, org: str, name: str, target_org: str) -> DatasetDetail:
        return model(DatasetDetail, self.request("DELETE", f"{_ds(org, name)}/shares/{seg(target_org)}"))

    def set_dataset_visibility(self, org: str, name: str, visibility: str) -> DatasetPublic:
        return model(DatasetPublic, self.request("PUT", f"{_ds(org, name)}/visibility",
                                                 json={"visibility": visibility}))

    def delete_dataset(self, org: str, name: str) -> DatasetDeleted:
        return model(DatasetDeleted, self.request("DELETE", _ds(org, name)))

    def datasets_gc(self) -> GcPublic:
        return model(GcPublic, self.request("POST", "/api/v1/admin/datasets/gc"))

    # -- versions ---------------------------------------------------------------------------------------------
    def start_dataset_version(self, org: str, name: str, files: Sequence[dict[str, Any]], *, note: str = "",
                              data_format: str = "") -> UploadTicketPublic:
        body = {"files": list(files), "note": note, "data_format": data_format}
        return model(UploadTicketPublic, self.request("POST", f"{_ds(org, name)}/versions", json=body))

    def resume_dataset_upload(self, org: str, name: str, upload_id: str) -> UploadTicketPublic:
        return model(UploadTicketPublic, self.request("GET", f"{_ds(org, name)}/uploads/{seg(upload_id)}"))

    def complete_dataset_upload(self, org: str, name: str, upload_id: str,
                                hashes: dict[str, str]) -> VersionCommitted:
        return model(VersionCommitted, self.request("POST", f"{_ds(org, name)}/uploads/{seg(upload_id)}/complete",
                                                    json={"hashes": hashes}))

    def abort_dataset_upload(self, org: str, name: str, upload_id: str) -> VersionPublic:
        return model(VersionPublic, self.request("DELETE", f"{_ds(org, name)}/uploads/{seg(upload_id)}"))

    def dataset_download(self, org: str, name: str, version: int | str = "latest") -> DownloadPublic:
        return model(DownloadPublic, self.request("GET", f"{_ds(org, name)}/versions/{seg(str(version))}/download"))

    # -- bytes ------------------------------------------------------------------------------------------------
    def push_dataset(self, org: str, name: str, root: Path, *, upload_id: str | None = None, note: str = "",
                     data_format: str = "", workers: int = 8, progress: Progress | None = None,
                     on_begin: Callable[[str, int], None] | None = None,
                     transport: Transport | None = None) -> Manifest:
        """Upload directory ``root`` as the next version of ``org/name`` (or finish upload ``upload_id``).

        ``on_begin(upload_id, version)`` is called once the platform has opened the upload, before any byte is
        sent: save the id there to resume after a crash. A storage failure raises StorageUnavailable."""
        from haihe.datasets.presigned import HttpTransport
        from haihe.datasets.push import push

        backend = HttpUploadBackend(self, org, name, note=note, data_format=data_format, on_begin=on_begin)
        return push(Path(root), backend, transport or HttpTransport(pool_size=max(workers, 8)),
                    session_id=upload_id, workers=workers, progress=progress)

    def pull_dataset(self, org: str, name: str, dest: Path, version: int | str = "latest", *, workers: int = 8,
                     progress: Progress | None = None, transport: Transport | None = None) -> Manifest:
        """Download a version into ``dest`` through presigned URLs, checking every file's size and sha256."""
        from haihe.datasets.manifest import Manifest
        from haihe.datasets.presigned import HttpTransport
        from haihe.datasets.push import pull

        found = self.dataset_download(org, name, version)
        manifest = Manifest.model_validate(found.manifest)
        pull(manifest, dict(found.urls), Path(dest), transport or HttpTransport(pool_size=max(workers, 8)),
             workers=workers, progress=progress)
        return manifest


def ticket_from_api(ticket: UploadTicketPublic) -> UploadTicket:
    """The API's upload ticket as the library's ``UploadTicket``."""
    from haihe.datasets.push import UploadTicket
    from haihe.datasets.upload import FileTargets, PartTarget

    files = [FileTargets(f.path, f.size, f.part_size, [PartTarget(p.number, p.offset, p.size, p.url) for p in f.parts])
             for f in ticket.files]
    return UploadTicket(ticket.upload_id, ticket.version, files)


@dataclass
class HttpUploadBackend:
    """The library's ``UploadBackend`` through the REST API: begin = start a version, resume = the missing parts,
    finish = complete (the platform checks the parts and commits)."""

    client: DatasetsClientMixin
    org: str
    name: str
    note: str = ""
    data_format: str = ""
    on_begin: Callable[[str, int], None] | None = None

    def begin(self, files: Sequence[FileSpec]) -> UploadTicket:
        body = [{"path": f.path, "size": f.size, **({"sha256": f.sha256} if f.sha256 else {})} for f in files]
        ticket = ticket_from_api(self.client.start_dataset_version(self.org, self.name, body, note=self.note,
                                                                    data_format=self.data_format))
        if self.on_begin is not None:
            self.on_begin(ticket.session_id, ticket.version)
        return ticket

    def resume(self, session_id: str) -> UploadTicket:
        return ticket_from_api(self.client.resume_dataset_upload(self.org, self.name, session_id))

    def finish(self, session_id: str, hashes: dict[str, str]) -> Manifest:
        from haihe.datasets.manifest import Manifest

        done = self.client.complete_dataset_upload(self.org, self.name, session_id, hashes)
        return Manifest.model_validate(done.manifest)
