"""DiskTree remembers directories' host paths; a directory replaced under the same name must not reuse them.

A host name is encrypted under the parent directory's random id, so a new directory at an old path gives
its children new host names. The remembered paths are forgotten on rmdir and on a directory rename.
"""
from __future__ import annotations

from pathlib import Path

from tailsfs.format.meta import KIND_BYTES
from tailsfs.store.engine import Store, StoreConfig
from tailsfs.store.tiers import MemoryTier

A_B, A_B_F = (b"a", b"b"), (b"a", b"b", b"f")


def _write(tree, path, data: bytes) -> None:
    tree.write_all(path, data, None, KIND_BYTES)


def _read(tree, path) -> bytes:
    return tree.read_all(path)[0]


def test_a_directory_replaced_under_its_name_gets_new_host_paths(tmp_path: Path) -> None:
    base = tmp_path / "store"
    store = Store(base, config=StoreConfig(overwrite_passes=0))
    try:
        t = store.tree("s", MemoryTier.PERSISTENT, create=True)
        t.makedirs(A_B)
        _write(t, A_B_F, b"first")
        assert _read(t, A_B_F) == b"first"  # a/ and a/b/ are remembered now
        t.rename((b"a",), (b"moved",))
        t.makedirs(A_B)
        _write(t, A_B_F, b"second")
        t.unlink(A_B_F)
        t.rmdir(A_B)
        t.makedirs(A_B)
        _write(t, A_B_F, b"third")
        assert _read(t, (b"moved", b"b", b"f")) == b"first"
        assert _read(t, A_B_F) == b"third"
    finally:
        store.close()
    store = Store(base, config=StoreConfig(overwrite_passes=0))  # nothing remembered: the disk agrees
    try:
        t = store.tree("s", MemoryTier.PERSISTENT)
        assert _read(t, (b"moved", b"b", b"f")) == b"first"
        assert _read(t, A_B_F) == b"third"
        assert sorted(name for name, _ in t.listdir((b"a",))) == [b"b"]
    finally:
        store.close()


def test_paths_remembered_below_a_removed_folder_are_forgotten(tmp_path: Path) -> None:
    """A lookup under a folder that does not exist yet remembers its would-be host path; once its
    parent is removed and made again (a new id), that path must not be used."""
    store = Store(tmp_path / "store", config=StoreConfig(overwrite_passes=0))
    try:
        t = store.tree("s", MemoryTier.PERSISTENT, create=True)
        t.makedirs(A_B)
        try:
            t.getattr(A_B + (b"c", b"f"))  # remembers a/b/c under b's first id
        except FileNotFoundError:
            pass
        t.rmdir(A_B)
        t.makedirs(A_B + (b"c",))
        _write(t, A_B + (b"c", b"f"), b"deep")
        assert _read(t, A_B + (b"c", b"f")) == b"deep"
    finally:
        store.close()
