"""The local directory backend against the storage interface, on real files."""

import os

import pytest
from ansible_collections.tradingbot.ops.plugins.module_utils.errors import StorageError
from ansible_collections.tradingbot.ops.plugins.module_utils.storage.base import Storage
from ansible_collections.tradingbot.ops.plugins.module_utils.storage.local import LocalStorage


@pytest.fixture
def storage(tmp_path):
    root = tmp_path / "backups"
    root.mkdir()
    return LocalStorage(root)


def test_put_get_list_stat_delete_round_trip(storage, tmp_path):
    assert isinstance(storage, Storage)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)

    info = storage.put("sqlite_backup_20250101_020000.db.gz", str(outside))
    storage.get("sqlite_backup_20250101_020000.db.gz", str(tmp_path / "copy.bin"))

    assert (info.key, info.size) == ("sqlite_backup_20250101_020000.db.gz", 1000)
    assert outside.exists()  # a file from elsewhere is copied, not moved
    assert (tmp_path / "copy.bin").read_bytes() == b"x" * 1000
    assert [i.key for i in storage.list("sqlite_")] == ["sqlite_backup_20250101_020000.db.gz"]
    assert storage.stat("sqlite_backup_20250101_020000.db.gz").size == 1000
    storage.delete("sqlite_backup_20250101_020000.db.gz")
    storage.delete("sqlite_backup_20250101_020000.db.gz")  # a missing key is not an error
    assert storage.stat("sqlite_backup_20250101_020000.db.gz") is None
    assert storage.list() == []


def test_a_file_inside_the_directory_is_renamed_into_place(storage):
    tmp = os.path.join(storage.root, ".upload.tmp")
    with open(tmp, "wb") as handle:
        handle.write(b"abc")
    storage.put("postgres_backup_20250101_020000.sql.gz", tmp)
    assert not os.path.exists(tmp)
    assert [i.key for i in storage.list()] == ["postgres_backup_20250101_020000.sql.gz"]


def test_symlinks_and_subdirectories_are_not_objects(storage, tmp_path):
    (tmp_path / "target").write_bytes(b"secret")
    os.symlink(tmp_path / "target", os.path.join(storage.root, "sqlite_backup_20250101_020000.db.gz"))
    os.mkdir(os.path.join(storage.root, "sub"))
    assert storage.list() == []
    assert storage.stat("sqlite_backup_20250101_020000.db.gz") is None


@pytest.mark.parametrize("key", ["", "..", "a/b", "../escape"])
def test_keys_never_leave_the_directory(storage, key):
    with pytest.raises(StorageError):
        storage.path(key)


def test_describe_names_the_directory_without_secrets(storage):
    assert storage.describe() == f"local directory {storage.root}"
