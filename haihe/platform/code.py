"""Job code bundles: the CLI packs a workdir (tar.gz), gets a presigned PUT URL, and uploads straight to S3.

Bundles live at ``s3://<code bucket>/code/<org>/<project>/<sha256>.tar.gz`` (content-addressed: the same workdir
uploaded twice is one object). The job runtime downloads and unpacks it on the node.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session

from haihe.errors import InvalidInput, PayloadTooLarge, StorageUnavailable
from haihe.platform import access
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext

MAX_CODE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class CodeUpload:
    code_uri: str
    url: str
    max_bytes: int


def create_upload(ctx: PlatformContext, session: Session, principal: Principal, org: str, project: str,
                  size: int, sha256: str) -> CodeUpload:
    access.project_for_write(session, principal, org, project)
    if size > MAX_CODE_BYTES:
        raise PayloadTooLarge(f"workdir bundle is {size} bytes; the limit is {MAX_CODE_BYTES}", field="size")
    s = ctx.settings
    if not s.s3_endpoint:
        raise InvalidInput("this platform has no S3 storage configured for code bundles", field="workdir")
    key = f"code/{org}/{project}/{sha256}.tar.gz"
    try:
        from minio import Minio

        endpoint = s.s3_endpoint.split("://", 1)[-1].rstrip("/")
        client = Minio(endpoint, access_key=s.s3_access_key, secret_key=s.s3_secret_key,
                       secure=s.s3_endpoint.startswith("https"), region=s.s3_region)
        url = client.presigned_put_object(s.code_bucket, key, expires=dt.timedelta(hours=1))
    except Exception as exc:  # minio raises several types; all mean storage trouble here
        raise StorageUnavailable(f"cannot prepare the code upload: {type(exc).__name__}") from exc
    return CodeUpload(code_uri=f"s3://{s.code_bucket}/{key}", url=url, max_bytes=MAX_CODE_BYTES)
