"""Where an upload's bytes go (shared/uploads.py): appended to a file, or the parts of an S3
multipart upload (moto server) cut and carried over whatever the chunk sizes, with what a cut
request delivered kept."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from shared.models import Upload
from shared.storage import S3Storage, Storage, open_storage, upload_key
from shared.uploads import S3_MIN_PART, UploadStore, UploadTooLong, bounded, upload_store

MIB = 1024 * 1024


def new_upload(store: UploadStore, length: int) -> Upload:
    upload_id = uuid.uuid4()
    upload = Upload(
        id=upload_id, length=length, received=0, key=upload_key(upload_id), parts=[], tail_bytes=0
    )
    store.begin(upload)
    return upload


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def read_back(store: UploadStore, upload: Upload) -> bytes:
    with store.reader(upload) as file:
        return file.read()


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return open_storage(str(tmp_path / "storage"))
    return open_storage(request.getfixturevalue("s3_url"))


def test_patches_of_any_size_store_the_bytes_in_order(storage: Storage) -> None:
    # 5 MiB parts: PATCHes of 3, 3, 7 and 1.5 MiB make S3 parts of 5, 5 and a last of 4.5 MiB,
    # what falls short of a part carried to the next PATCH in a tail object.
    store = upload_store(storage, part_bytes=5 * MIB)
    data = os.urandom(int(14.5 * MIB))
    upload = new_upload(store, len(data))
    offset = 0
    for size in (3 * MIB, 3 * MIB, 7 * MIB, int(1.5 * MIB)):
        store.append(upload, pieces(data[offset : offset + size], 256 * 1024))
        offset += size
        assert upload.received == offset
    assert read_back(store, upload) == data
    if isinstance(storage, S3Storage):
        sizes = [part["Size"] for part in upload.parts]
        assert all(size >= S3_MIN_PART for size in sizes[:-1]) and sum(sizes) == len(data)
        assert max(sizes) <= 5 * MIB and upload.tail_bytes == 0
        listed = storage.client.list_objects_v2(Bucket=storage.bucket)
        assert [item["Key"] for item in listed["Contents"]] == [storage.object_key(upload.key)]


def test_a_body_cut_midway_keeps_what_came(storage: Storage) -> None:
    store = upload_store(storage, part_bytes=5 * MIB)
    data = os.urandom(12 * MIB)
    upload = new_upload(store, len(data))

    def dropped() -> Iterator[bytes]:
        yield from pieces(data[: 6 * MIB + 123], 64 * 1024)
        raise ConnectionResetError("client gone")

    with pytest.raises(ConnectionResetError):
        store.append(upload, dropped())
    assert upload.received == 6 * MIB + 123
    store.append(upload, pieces(data[upload.received :], MIB))
    assert upload.received == len(data) and read_back(store, upload) == data


def test_more_than_the_length_is_refused_after_what_fits(tmp_path: Path) -> None:
    store = upload_store(open_storage(str(tmp_path)), part_bytes=5 * MIB)
    upload = new_upload(store, 10)
    with pytest.raises(UploadTooLong):
        store.append(upload, bounded(iter([b"12345678", b"90abc"]), 10))
    assert upload.received == 10 and read_back(store, upload) == b"1234567890"


def test_discarding_an_unfinished_s3_upload_aborts_it(s3_url: str) -> None:
    storage = open_storage(s3_url)
    assert isinstance(storage, S3Storage)
    store = upload_store(storage, part_bytes=5 * MIB)
    upload = new_upload(store, 20 * MIB)
    store.append(upload, pieces(os.urandom(5 * MIB), MIB))
    assert upload.tail_bytes == 0 and len(upload.parts) == 1
    store.append(upload, pieces(os.urandom(MIB), MIB))  # short of a part: the tail object
    assert upload.tail_bytes == MIB
    store.discard(upload)
    s3 = boto3.client("s3")
    assert not s3.list_multipart_uploads(Bucket=storage.bucket).get("Uploads")
    assert not s3.list_objects_v2(Bucket=storage.bucket).get("Contents")
