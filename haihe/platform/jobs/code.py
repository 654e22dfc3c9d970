"""Job code bundles: the CLI packs a workdir (tar.gz), gets a presigned PUT URL, and uploads straight to S3.

Bundles live at ``s3://<code bucket>/code/<org>/<project>/<sha256>.tar.gz`` (content-addressed: the same workdir
uploaded twice is one object). The job runtime downloads and unpacks it on the node.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from haihe.datasets.store import MinioStore
from haihe.errors import InvalidInput, NotFound, PayloadTooLarge
from haihe.platform import access
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext

MAX_CODE_BYTES = 256 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    if not _SHA256.fullmatch(sha256):
        raise InvalidInput("sha256 must be 64 lowercase hex digits", field="sha256")
    key = f"code/{org}/{project}/{sha256}.tar.gz"
    url = _store(ctx).presign("PUT", key, expires=dt.timedelta(hours=1))  # StorageUnavailable when S3 is down
    return CodeUpload(code_uri=f"s3://{s.code_bucket}/{key}", url=url, max_bytes=MAX_CODE_BYTES)


def check_bundle(ctx: PlatformContext, code_uri: str, org: str, project: str) -> None:
    """A job may name only a bundle uploaded for its own project that is really there and within the limit, so a
    job is never accepted that would fail on the node for want of its code."""
    s = ctx.settings
    prefix = f"s3://{s.code_bucket}/code/{org}/{project}/"
    if not code_uri.startswith(prefix) or not _SHA256.fullmatch(code_uri[len(prefix):].removesuffix(".tar.gz")):
        raise InvalidInput(f"code_uri must be an upload made for {org}/{project} ({prefix}<sha256>.tar.gz)",
                           field="code_uri")
    if not s.s3_endpoint:
        raise InvalidInput("this platform has no S3 storage configured for code bundles", field="code_uri")
    try:  # StorageUnavailable passes through: S3 down is a 503, not the user's mistake
        size = _store(ctx).stat(code_uri.split("/", 3)[3]).size
    except NotFound:
        raise InvalidInput("the code bundle was never uploaded (or has expired); upload it again",
                           field="code_uri") from None
    if size > MAX_CODE_BYTES:
        raise PayloadTooLarge(f"the code bundle is {size} bytes; the limit is {MAX_CODE_BYTES}", field="code_uri")


def _store(ctx: PlatformContext) -> MinioStore:
    s = ctx.settings
    return MinioStore(s.s3_endpoint, s.s3_access_key, s.s3_secret_key, s.code_bucket, region=s.s3_region)
