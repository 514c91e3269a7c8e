"""RAM copies of mapped cache arrays are shared only between maps of the very same file: a rebuilt cache is read
again."""

from __future__ import annotations

import os

import numpy as np

from datasets import ram_copies


def no_check(nbytes):
    return None


def test_the_key_of_a_mapped_array_is_every_field_of_its_file_and_array(tmp_path):
    # Each field tells one way a cache rebuilt under the same name can differ from the one a copy was read from.
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((2, 3), np.float16))
    mapped = ram_copies.open_mapped(path)
    st = os.stat(path)
    header = 128  # np.save pads the .npy header (magic, version, dict) to a multiple of 64 bytes
    assert ram_copies.file_key(mapped) == (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, header,
                                           (2, 3), "<f2")


def test_a_cache_renamed_into_place_within_one_clock_tick_is_read_again(tmp_path):
    # A file's mtime advances in kernel clock ticks: a rebuild that renames a file of the same size over the old one
    # within a tick differs from it by its inode alone.
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(4, np.float32))
    old = ram_copies.open_mapped(path)  # held, so the new file cannot get its inode back
    ram_copies.clear()
    assert ram_copies.load({"a": old}, no_check)["a"].tolist() == [0, 0, 0, 0]
    np.save(tmp_path / "partial.npy", np.ones(4, np.float32))
    stamp = os.stat(path).st_mtime_ns
    os.utime(tmp_path / "partial.npy", ns=(stamp, stamp))
    os.replace(tmp_path / "partial.npy", path)
    new = ram_copies.open_mapped(path)
    assert not ram_copies.held({"a": new})
    assert ram_copies.load({"a": new}, no_check)["a"].tolist() == [1, 1, 1, 1]
    ram_copies.clear()


def test_a_cache_rewritten_in_place_with_the_same_size_is_read_again(tmp_path):
    # Same path, device, inode and size: only the modification time tells the rewritten file from the copied one.
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(4, np.float32))
    ram_copies.clear()
    assert ram_copies.load({"a": ram_copies.open_mapped(path)}, no_check)["a"].tolist() == [0, 0, 0, 0]
    inode, stamp = os.stat(path).st_ino, os.stat(path).st_mtime_ns
    np.save(path, np.full(4, 2, np.float32))
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert os.stat(path).st_ino == inode
    new = ram_copies.open_mapped(path)
    assert not ram_copies.held({"a": new})
    assert ram_copies.load({"a": new}, no_check)["a"].tolist() == [2, 2, 2, 2]
    ram_copies.clear()
