"""Outputs written whole or not at all.

A file or folder that a later stage, the command line or a resumed run reads is written
beside its destination under a hidden name, flushed to the disk, and renamed into place
only once complete. A kill, a full disk or any other failure while writing leaves the
previous version (or nothing) at the destination, never a truncated file, and no scraps
beside it. A write the system refuses (no space left, a quota, a read-only or
permission-denied folder) raises ``errors.WriteError`` naming the destination.
"""

from __future__ import annotations

import errno
import os
import resource
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import WriteError


@contextmanager
def _refused_as_write_error(dest: Path) -> Iterator[None]:
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise WriteError.of(dest, error) from error


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the old file, if any, stays until the new one
    is complete on the disk)."""
    path = Path(path)
    with _refused_as_write_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = _hidden(path)
        try:
            with open(partial, "xb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())  # a full disk can surface only here
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``write_bytes`` for UTF-8 text."""
    return write_bytes(path, text.encode())


@contextmanager
def replaced_folder(dest: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``dest``; when the block ends without an error,
    it replaces ``dest`` (whatever was there is removed). On any error the staging folder
    is removed and ``dest`` is left as it was."""
    dest = Path(dest)
    with _refused_as_write_error(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = _hidden(dest)
        staging.mkdir()
        try:
            yield staging
            for file in staging.rglob("*"):
                if file.is_file():
                    _fsync(file)
            _swap_in(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def refused_write(path: Path, error: BaseException) -> OSError | None:
    """The OSError behind a write to ``path`` that failed without one (torch's own file
    writer raises a bare RuntimeError): no space left on its file system, or the file at
    the size limit of this process (``RLIMIT_FSIZE``); None when it was neither."""
    if os.statvfs(path.parent).f_bavail == 0:
        code = errno.ENOSPC
    elif (limit := resource.getrlimit(resource.RLIMIT_FSIZE)[0]) != resource.RLIM_INFINITY and (
        not path.exists() or path.stat().st_size >= limit
    ):
        code = errno.EFBIG
    else:
        return None
    return OSError(code, os.strerror(code), str(path))


def _swap_in(staging: Path, dest: Path) -> None:
    """Rename ``staging`` to ``dest``; an old ``dest`` is moved aside first and removed after
    (renamed back if the new one cannot take its place)."""
    if not dest.exists():
        staging.rename(dest)
        return
    old = _hidden(dest)
    dest.rename(old)
    try:
        staging.rename(dest)
    except BaseException:
        old.rename(dest)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _hidden(dest: Path) -> Path:
    """A name beside ``dest`` that no other writer picks: ``.model.pt.3f9a01c2``."""
    return dest.with_name(f".{dest.name}.{secrets.token_hex(4)}")
