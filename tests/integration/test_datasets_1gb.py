"""Done-when of the datasets issue: a 1 GiB directory pushed with the real CLI through a real API process to the
real S3 server, pulled back with the CLI, byte-identical (sha256 of every file).

The data is 8 files of 128 MiB, every MiB of it a shared random block behind a header naming its file and offset,
so no two 16 MiB upload parts (nor any two MiB) are equal and neither the store nor the client can dedup its way
through; it is written in a few seconds and hashed as it is written (no extra pass over the disk).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haihe.cluster.s3 import S3Server
from haihe.datasets.store import MinioStore
from tests.fixtures.live_platform import PASSWORD, Cli, LivePlatform, start_live_platform
from tests.fixtures.platform import unique

pytestmark = [pytest.mark.s3, pytest.mark.slow]

MiB = 1024 * 1024
FILES = 8
FILE_SIZE = 128 * MiB
BUCKET = "haihe-datasets"


def write_tree(root: Path) -> dict[str, str]:
    """``FILES`` files of ``FILE_SIZE`` bytes (one in a subdirectory); returns path → sha256."""
    block = os.urandom(MiB)
    want: dict[str, str] = {}
    for f in range(FILES):
        rel = f"part-{f:02d}.bin" if f else "nested/dir/part-00.bin"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            for offset in range(0, FILE_SIZE, MiB):
                chunk = struct.pack(">QQ", f, offset) + block[16:]
                digest.update(chunk)
                out.write(chunk)
        want[rel] = digest.hexdigest()
    return want


def hash_tree(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                while block := fh.read(8 * MiB):
                    digest.update(block)
            found[path.relative_to(root).as_posix()] = digest.hexdigest()
    return found


def json_line(output: str) -> Any:
    """The ``--json`` result among the output (the progress bar goes to stderr, captured alongside)."""
    found = [line for line in output.splitlines() if line.startswith("{")]
    assert len(found) == 1, output[-2000:]
    return json.loads(found[0])


@pytest.fixture
def platform(s3_server: S3Server, tmp_path: Path) -> Iterator[LivePlatform]:
    home = tmp_path / "api"
    home.mkdir()
    yield from start_live_platform(home, schedulers={}, default="", s3=s3_server)


def test_cli_push_1gib_then_pull_byte_identical(platform: LivePlatform, s3_server: S3Server,
                                                tmp_path: Path) -> None:
    cli = Cli(platform.url, tmp_path / "cli", {"XDG_CACHE_HOME": str(tmp_path / "cli" / "cache")})
    org, user, name = unique("bigorg"), unique("bigu"), unique("onegig")
    cli.run("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    cli.run("admin", "orgs", "create", org)
    cli.run("admin", "users", "create", org, user, "--password-stdin", stdin=PASSWORD + "\n")
    cli.login(user)
    src, dest = tmp_path / "src", tmp_path / "pulled"
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, BUCKET)
    try:
        want = write_tree(src)
        assert len(set(want.values())) == FILES
        pushed = json_line(cli.run("datasets", "push", str(src), "--name", f"{org}/{name}", "--workers", "8",
                                   "--json", as_user=user, timeout=600))
        assert pushed["version"] == 1 and pushed["files"] == FILES
        assert pushed["total_size"] == FILES * FILE_SIZE
        assert pushed["parts_sent"] == FILES * FILE_SIZE // (16 * MiB)  # every part crossed the wire once
        assert pushed["resumed"] is False
        # the objects really are in S3 under the version's prefix, with the sizes pushed
        stored = {i.key: i.size for i in store.list(f"{org}/{name}/v1/")}
        assert {k: v for k, v in stored.items() if not k.endswith("manifest.json")} == {
            f"{org}/{name}/v1/{rel}": FILE_SIZE for rel in want}
        shown = cli.json("datasets", "show", f"{org}/{name}", as_user=user)
        assert {f["path"]: f["sha256"] for f in shown["manifest"]["files"]} == want
        pulled = json_line(cli.run("datasets", "pull", f"{org}/{name}@v1", str(dest), "--json", as_user=user,
                                   timeout=600))
        assert pulled["total_size"] == FILES * FILE_SIZE
        shutil.rmtree(src)  # disk: never hold more than two copies
        assert hash_tree(dest) == want
    finally:
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        store.delete([i.key for i in store.list(f"{org}/{name}/")])
