"""The filesystem storage backend: atomic writes, keys kept inside the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.storage import FileStorage, ObjectNotFound, StorageError, open_storage


def test_put_get_replace_delete(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path))

    storage.put("results/a.png", b"first")
    storage.put("results/a.png", b"second")

    assert storage.get("results/a.png") == b"second"
    assert storage.exists("results/a.png")
    # Written under a temporary name and renamed: no partial or temporary file stays behind.
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["a.png"]
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


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", ""])
def test_keys_cannot_leave_the_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError):
        FileStorage(tmp_path / "root").put(key, b"x")


def test_unsupported_schemes_are_refused_naming_the_setting() -> None:
    with pytest.raises(StorageError, match="ONEIRO_STORAGE_URL"):
        open_storage("ftp://example/bucket")
