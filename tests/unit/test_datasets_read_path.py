"""The bulk read path every reader shares: ``read_into`` (readinto when a stream has it, else read1/read),
``store.body_readinto`` (straight into the buffer only for an un-encoded body), ``fill`` and ``drain``."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from haihe.datasets.hashing import READ_CHUNK, IntegrityError, download_verified, drain, fill, read_into
from haihe.datasets.store import body_readinto


class Read1Only:
    """A stream with read1 and read but no readinto, handing out at most ``step`` bytes a call."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step, self.closed = data, 0, step, False

    def read1(self, n: int, /) -> bytes:
        block = self.data[self.pos : self.pos + min(n, self.step)]
        self.pos += len(block)
        return block

    def read(self, n: int = -1, /) -> bytes:
        return self.read1(len(self.data) if n < 0 else n)

    def close(self) -> None:
        self.closed = True


class RawBody:
    """Stands in for http.client's response under urllib3's: it records that readinto was used."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)
        self.readintos = 0

    def readinto(self, view: memoryview) -> int:
        self.readintos += 1
        return self.stream.readinto(view)


class Urllib3Like:
    """The parts of an urllib3 response that ``body_readinto`` looks at."""

    def __init__(self, data: bytes, encoding: str | None) -> None:
        self._fp = RawBody(data)
        self.headers = {"Content-Encoding": encoding} if encoding else {}
        self.read1s = 0

    def read1(self, n: int) -> bytes:
        self.read1s += 1
        return self._fp.stream.read(n)


@pytest.mark.parametrize("step", [1, 7, 4096, 3 * READ_CHUNK])
def test_fill_and_hash_through_read1_match_the_bytes(step: int) -> None:
    data = bytes(range(256)) * 5000
    view = memoryview(bytearray(len(data)))
    digest = hashlib.sha256()
    assert fill(Read1Only(data, step), view, digest) == len(data)
    assert bytes(view) == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_fill_stops_short_at_the_end_and_drain_counts_what_is_left() -> None:
    data = b"x" * 1000 + b"y" * 3000
    stream = io.BytesIO(data)
    view = memoryview(bytearray(1000))
    assert fill(stream, view) == 1000 and bytes(view) == b"x" * 1000
    assert drain(stream) == 3000
    assert fill(io.BytesIO(b"abc"), memoryview(bytearray(10))) == 3


def test_read_into_prefers_readinto_and_falls_back_to_read1() -> None:
    raw = Read1Only(b"abcdef", step=4)
    view = memoryview(bytearray(10))
    assert read_into(raw, view) == 4 and bytes(view[:4]) == b"abcd"
    assert read_into(raw, view) == 2 and bytes(view[:2]) == b"ef"
    assert read_into(raw, view) == 0


def test_body_readinto_receives_an_unencoded_body_straight_into_the_buffer() -> None:
    response = Urllib3Like(b"0123456789", encoding=None)
    view = memoryview(bytearray(4))
    assert body_readinto(response, view) == 4 and bytes(view) == b"0123"
    assert response._fp.readintos == 1 and response.read1s == 0


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_body_readinto_leaves_an_encoded_body_to_urllib3(encoding: str) -> None:
    response = Urllib3Like(b"0123456789", encoding=encoding)
    view = memoryview(bytearray(4))
    assert body_readinto(response, view) == 4 and bytes(view) == b"0123"
    assert response._fp.readintos == 0 and response.read1s == 1


def test_download_verified_through_read1_writes_only_matching_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000
    good = hashlib.sha256(data).hexdigest()
    stream = Read1Only(data, step=65536)
    download_verified(stream, tmp_path / "ok", name="a.bin", size=len(data), sha256=good)
    assert (tmp_path / "ok").read_bytes() == data and stream.closed
    with pytest.raises(IntegrityError, match=r"b\.bin"):
        download_verified(Read1Only(data, 999), tmp_path / "bad", name="b.bin", size=len(data), sha256="0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
