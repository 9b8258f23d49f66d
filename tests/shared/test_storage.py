"""The filesystem storage backend: atomic writes, keys kept inside the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.storage import (
    CHUNK_BYTES,
    FileStorage,
    ObjectNotFound,
    Storage,
    StorageError,
    open_storage,
)


@pytest.fixture(params=["file", "s3"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Each backend, through the one interface: a directory, and a real S3-compatible server."""
    if request.param == "s3":
        return open_storage(request.getfixturevalue("s3_url"))
    return open_storage(str(tmp_path))


def test_put_get_replace_delete(any_storage: Storage) -> None:
    storage = any_storage
    storage.put("results/a.png", b"first")
    storage.put("results/a.png", b"second")

    assert storage.get("results/a.png") == b"second"
    assert storage.exists("results/a.png")
    storage.delete("results/a.png")
    assert not storage.exists("results/a.png")
    with pytest.raises(ObjectNotFound):
        storage.get("results/a.png")


def test_a_failed_write_leaves_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    storage.put("k", b"old")

    def disk_full(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("shared.storage.os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        storage.put("k", b"new")

    assert storage.get("k") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


def test_file_writes_leave_no_temporary_behind(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.put("results/a.png", b"first")
    storage.put("results/a.png", b"second")
    # Written under a temporary name and renamed: no partial or temporary file stays behind.
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["a.png"]


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", ""])
def test_keys_cannot_leave_the_root(any_storage: Storage, key: str) -> None:
    with pytest.raises(StorageError):
        any_storage.put(key, b"x")


def test_unsupported_schemes_are_refused_naming_the_setting() -> None:
    with pytest.raises(StorageError, match="ONEIRO_STORAGE_URL"):
        open_storage("ftp://example/bucket")


def test_s3_objects_live_under_the_prefix(s3_url: str) -> None:
    import boto3

    storage = open_storage(s3_url)
    storage.put("inputs/x.png", b"data")

    bucket = s3_url.removeprefix("s3://").split("/")[0]
    listed = boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["renders/inputs/x.png"]


def test_a_prefix_is_deleted_whole_and_nothing_beside_it(any_storage: Storage) -> None:
    storage = any_storage
    inside = ["jobs/a/input.png", "jobs/a/attempt-1/result.png", "jobs/a/attempt-2/preview.jpg"]
    beside = ["jobs/ab/input.png", "jobs/b/input.png", "results/a.png"]
    for key in inside + beside:
        storage.put(key, b"x")

    storage.delete_prefix("jobs/a/")
    storage.delete_prefix("jobs/none/")  # nothing there: nothing to do

    assert [key for key in inside + beside if storage.exists(key)] == beside


def test_s3_deletes_a_prefix_of_more_than_one_listing_page(s3_url: str) -> None:
    storage = open_storage(s3_url)
    keys = [f"jobs/many/attempt-1/{n}.png" for n in range(1001)]  # a page holds 1,000
    for key in keys:
        storage.put(key, b"")

    storage.delete_prefix("jobs/many/")

    assert not any(storage.exists(key) for key in (keys[0], keys[999], keys[1000]))


def test_objects_are_read_in_chunks_of_bounded_size(any_storage: Storage) -> None:
    data = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)  # three chunks and a bit
    any_storage.put("results/big.png", data)

    stored = any_storage.open("results/big.png")
    chunks = list(stored)

    assert stored.size == len(data)
    assert b"".join(chunks) == data
    assert len(chunks) >= 4 and max(map(len, chunks)) <= CHUNK_BYTES
    with pytest.raises(ObjectNotFound):  # at once, before any chunk: the route can say 409
        any_storage.open("results/missing.png")
