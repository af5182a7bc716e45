"""Outputs written whole or not at all (``mnist_vae.files``): the old version stays until the
new one is complete, and nothing is left beside it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mnist_vae import files
from mnist_vae.errors import WriteError


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path):
    target = files.write_bytes(tmp_path / "sub" / "a.bin", b"old")
    files.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert _names(target.parent) == ["a.bin"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not private


def test_a_folder_is_replaced_whole(tmp_path):
    with files.replaced_folder(tmp_path / "out") as staging:
        (staging / "old.txt").write_text("old")
    with files.replaced_folder(tmp_path / "out") as staging:
        assert _names(staging) == []  # staged apart from the old folder
        (staging / "new.txt").write_text("new")
        assert _names(tmp_path / "out") == ["old.txt"]  # the old one, until the block ends
    assert _names(tmp_path / "out") == ["new.txt"]
    assert _names(tmp_path) == ["out"]


def test_a_failure_in_the_block_leaves_the_old_folder_and_no_staging(tmp_path):
    with files.replaced_folder(tmp_path / "out") as staging:
        (staging / "old.txt").write_text("old")
    with pytest.raises(ValueError), files.replaced_folder(tmp_path / "out") as staging:
        (staging / "half.txt").write_text("half")
        raise ValueError("the writer failed")
    assert _names(tmp_path / "out") == ["old.txt"]
    assert _names(tmp_path) == ["out"]


def test_a_refused_write_is_a_write_error_naming_the_destination(tmp_path):
    (tmp_path / "data").write_text("a file where a folder should be")
    reason = r"\((File exists|Not a directory)\); it is left as it was"
    with pytest.raises(WriteError, match=rf"cannot write .*data/a\.bin {reason}"):
        files.write_bytes(tmp_path / "data" / "a.bin", b"x")
    refused = pytest.raises(WriteError, match=rf"cannot write .*data/model {reason}")
    with refused, files.replaced_folder(tmp_path / "data" / "model"):
        pass


def test_an_os_error_is_reported_with_its_reason_and_advice():
    error = WriteError.of(Path("d.mvae"), OSError(errno.ENOSPC, "No space left"))
    assert str(error) == (
        "cannot write d.mvae (No space left); it is left as it was: free some space on its "
        "disk (or write elsewhere) and run again"
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
