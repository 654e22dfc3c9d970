"""The app the dataset-upload browser test runs under uvicorn: the browser app, with S3 wired and 5 MiB parts.

``uvicorn tests.browser.upload_app:create --factory`` — S3 comes from ``HAIHE_S3_*``. The part size is S3's minimum
(5 MiB) so that a file of a few MiB already goes up in several presigned parts.
"""

from __future__ import annotations

from fastapi import FastAPI

from haihe.datasets.store import MinioStore
from haihe.datasets.upload import MIN_PART_SIZE
from haihe.platform.datasets.service import DatasetStorage
from tests.browser import app_factory


def create() -> FastAPI:
    app = app_factory.create()
    s = app.state.ctx.settings
    store = MinioStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.datasets_bucket, region=s.s3_region)
    app.state.ctx.provide("datasets", DatasetStorage.for_store(store, part_size=MIN_PART_SIZE))
    return app
