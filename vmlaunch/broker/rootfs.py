"""The container root file system a run boots: the caller's image, staged where QEMU reads it.

QEMU must not read a file the caller controls (they could change it under a running guest, or
hand over something else entirely), so the broker keeps its own copy. Copies are cached per
user under the sha256 the broker computed over its own copy: a later run of the same image
hashes the caller's file (cheaper than copying it) and hard-links the cached copy into the run.
A user's cache holds only what that user handed over; the newest `keep` entries stay.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import stat
from pathlib import Path

from vmlaunch.errors import VmlaunchError

log = logging.getLogger(__name__)

CHUNK = 8 << 20


def stage_rootfs(
    fd: int, target: Path, cache: Path, limit_mib: int, keep: int, qemu_gid: int
) -> Path:
    """Put the image fd refers to at target (readable by QEMU's group); returns target."""
    size = _check(fd, limit_mib)
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    entry = cache / f"{_digest(fd, size, cache)}.img"
    if not entry.is_file():
        # Named by the copy's own digest, which differs if the caller changed the file meanwhile.
        entry = _add(fd, size, entry, qemu_gid)
    try:
        os.link(entry, target)
    except OSError:  # another file system: pay for a copy
        shutil.copyfile(entry, target)
        os.chown(target, 0, qemu_gid)
        os.chmod(target, 0o640)
    os.utime(entry)
    _evict(cache, keep)
    return target


def _check(fd: int, limit_mib: int) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise VmlaunchError("the container root file system passed to the broker is not a file")
    if st.st_size > limit_mib << 20:
        raise VmlaunchError(
            f"the image's root file system is {st.st_size >> 20} MiB, more than the "
            f"{limit_mib} MiB this host allows",
            "use a smaller image, or ask the administrator (max_rootfs_mib)",
        )
    return st.st_size


# The digest of a caller's file, remembered while the file's identity and ctime stay the same:
# the kernel sets ctime on every change and no user can set it back. A stale answer could only
# hand a user their own earlier image, from their own cache.
_digests: dict[tuple[str, int, int, int, int, int], str] = {}
_REMEMBERED = 4096


def _digest(fd: int, size: int, cache: Path) -> str:
    st = os.fstat(fd)
    key = (str(cache), st.st_dev, st.st_ino, size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _digests:
        if len(_digests) >= _REMEMBERED:
            _digests.clear()
        _digests[key] = _hash_fd(fd, size)
    return _digests[key]


def _hash_fd(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size and (chunk := os.pread(fd, min(CHUNK, size - offset), offset)):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def _add(fd: int, size: int, entry: Path, qemu_gid: int) -> Path:
    """Copy, then hash the copy (the caller may change its file meanwhile), then name it."""
    partial = entry.with_name(f".{secrets.token_hex(8)}.partial")
    out = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while offset < size and (sent := os.sendfile(out, fd, offset, min(CHUNK, size - offset))):
            offset += sent
        os.fchown(out, 0, qemu_gid)
        os.fchmod(out, 0o640)
    except BaseException:
        os.close(out)
        partial.unlink(missing_ok=True)
        raise
    os.close(out)
    with partial.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    named = entry.with_name(f"{digest}.img")
    os.replace(partial, named)
    log.debug("cached a root file system as %s", digest)
    return named


def _evict(cache: Path, keep: int) -> None:
    entries = sorted(cache.glob("*.img"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)  # runs that use it hold their own link
