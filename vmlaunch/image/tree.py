"""File operations confined to one directory tree, the target of an unpack.

Every path is walked one component at a time from a file descriptor of the tree's root, with
O_NOFOLLOW on each step. A symbolic link met on the way to a parent directory is resolved the way
the container will see it, inside the tree (an absolute link starts again at the tree's root,
".." stops at it), like containerd and umoci resolve them; the last component of a path is never
followed. So no name, link or hard link in a layer can make us write outside the tree.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The kernel's own limit on symbolic links in one path lookup.
_MAX_SYMLINKS = 40
_COPY_CHUNK = 1 << 20
# A time stamp the file system cannot store is not worth failing the unpack for.
_UTIME_ERRORS = (OverflowError, ValueError, OSError)


class EntryRefused(Exception):
    """A layer entry that cannot be written safely; the reason goes into the unpack report."""


@dataclass(frozen=True)
class Parent:
    """An open directory of the tree and its path from the root, free of symbolic links."""

    fd: int
    path: tuple[str, ...]

    def child(self, name: str) -> tuple[str, ...]:
        return (*self.path, name)


class Tree:
    """The directory tree an unpack writes into; use as a context manager."""

    def __init__(self, root: Path) -> None:
        self._root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._root_fd)

    @contextmanager
    def parent(self, parts: Sequence[str], *, create: bool) -> Iterator[Parent]:
        """Open the directory parts names, creating missing ones (mode 0755) if create."""
        fd, path = self._walk(parts, create)
        try:
            yield Parent(fd, path)
        finally:
            os.close(fd)

    def _walk(self, parts: Sequence[str], create: bool) -> tuple[int, tuple[str, ...]]:
        pending = list(parts)
        path: list[str] = []
        links = 0
        fd = os.dup(self._root_fd)
        try:
            while pending:
                name = pending.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":
                    path = path[:-1]
                    fd = _replace(fd, self._open_path(path))
                    continue

                mode = _lstat_mode(fd, name)
                if mode is not None and stat.S_ISLNK(mode):
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise EntryRefused("too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=fd)
                    if target.startswith("/"):
                        path = []
                        fd = _replace(fd, os.dup(self._root_fd))
                    pending[:0] = target.split("/")
                    continue

                fd = _replace(fd, _open_dir(fd, name, mode, create, "/".join([*path, name])))
                path.append(name)
        except BaseException:
            os.close(fd)
            raise
        return fd, tuple(path)

    def _open_path(self, path: Sequence[str]) -> int:
        """Open the directory at path, a path from the root that must hold no link."""
        fd = os.dup(self._root_fd)
        try:
            for name in path:
                fd = _replace(fd, os.open(name, _DIR_FLAGS, dir_fd=fd))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def set_dir_mtime(self, path: Sequence[str], mtime: int) -> None:
        """Set a directory's mtime if path still leads to a directory without links."""
        try:
            fd = self._open_path(path)
        except OSError:
            return
        try:
            _set_mtime(fd, mtime)
        finally:
            os.close(fd)


def lstat(parent: Parent, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove(parent: Parent, name: str) -> None:
    """Remove name, a whole tree if it is a directory; nothing if it does not exist."""
    found = lstat(parent, name)
    if found is None:
        return
    if stat.S_ISDIR(found.st_mode):
        shutil.rmtree(name, dir_fd=parent.fd)
    else:
        os.unlink(name, dir_fd=parent.fd)


@contextmanager
def child_dir(parent: Parent, name: str) -> Iterator[Parent]:
    """Open the directory name in parent, which must not be a link."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
    try:
        yield Parent(fd, parent.child(name))
    finally:
        os.close(fd)


def make_dir(parent: Parent, name: str, mode: int) -> None:
    """Make name a directory with mode, keeping its content if it is one already."""
    found = lstat(parent, name)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        os.unlink(name, dir_fd=parent.fd)
        found = None
    if found is None:
        _make_dir(parent.fd, name, mode)
    else:
        _chmod_dir(parent.fd, name, mode)


def write_file(parent: Parent, name: str, mode: int, data: IO[bytes], mtime: int) -> None:
    """Replace name by a new regular file (so other hard links to the old one keep it)."""
    remove(parent, name)
    fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=parent.fd)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(data, out, _COPY_CHUNK)
        out.flush()
        os.fchmod(fd, mode)
        _set_mtime(fd, mtime)


def make_symlink(parent: Parent, name: str, target: str, mtime: int) -> None:
    """Replace name by a symbolic link to target, stored as it is and never followed."""
    remove(parent, name)
    os.symlink(target, name, dir_fd=parent.fd)
    with suppress(*_UTIME_ERRORS):
        os.utime(name, (mtime, mtime), dir_fd=parent.fd, follow_symlinks=False)


def make_hardlink(source: Parent, source_name: str, parent: Parent, name: str) -> None:
    """Replace name by a hard link to source_name, which must be a file already in the tree."""
    found = lstat(source, source_name)
    if found is None:
        raise EntryRefused(f"{'/'.join(source.child(source_name))} does not exist")
    if stat.S_ISDIR(found.st_mode):
        raise EntryRefused(f"{'/'.join(source.child(source_name))} is a directory")

    existing = lstat(parent, name)
    if existing is not None and (existing.st_dev, existing.st_ino) == (found.st_dev, found.st_ino):
        return
    remove(parent, name)
    os.link(source_name, name, src_dir_fd=source.fd, dst_dir_fd=parent.fd, follow_symlinks=False)


def _open_dir(fd: int, name: str, mode: int | None, create: bool, shown: str) -> int:
    """Open the directory name in fd (of the given lstat mode, None if missing)."""
    if mode is None:
        if not create:
            raise EntryRefused(f"{shown} does not exist")
        _make_dir(fd, name, 0o755)
    elif not stat.S_ISDIR(mode):
        raise EntryRefused(f"{shown} is in the way: it is not a directory")
    return os.open(name, _DIR_FLAGS, dir_fd=fd)


def _replace(old_fd: int, new_fd: int) -> int:
    os.close(old_fd)
    return new_fd


def _lstat_mode(fd: int, name: str) -> int | None:
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None


def _make_dir(fd: int, name: str, mode: int) -> None:
    os.mkdir(name, 0o700, dir_fd=fd)
    _chmod_dir(fd, name, mode)


def _chmod_dir(fd: int, name: str, mode: int) -> None:
    # fchmodat cannot refuse to follow a link on every kernel; an O_NOFOLLOW fd can.
    dir_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
    try:
        os.fchmod(dir_fd, mode)
    finally:
        os.close(dir_fd)


def _set_mtime(fd: int, mtime: int) -> None:
    with suppress(*_UTIME_ERRORS):
        os.utime(fd, (mtime, mtime))
