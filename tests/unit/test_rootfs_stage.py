"""The broker's staging of a caller's root file system: cached per user by its own hash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vmlaunch.broker.rootfs import stage_rootfs
from vmlaunch.errors import VmlaunchError


def stage(source: Path, target: Path, cache: Path, keep: int = 3, limit: int = 64) -> Path:
    fd = os.open(source, os.O_RDONLY)
    try:
        return stage_rootfs(fd, target, cache, limit, keep, os.getgid())
    finally:
        os.close(fd)


def test_a_second_run_links_the_cached_copy(tmp_path: Path) -> None:
    source = tmp_path / "mine.erofs"
    source.write_bytes(b"erofs" * 1000)
    first = stage(source, tmp_path / "run1.img", tmp_path / "cache")
    second = stage(source, tmp_path / "run2.img", tmp_path / "cache")
    assert first.read_bytes() == source.read_bytes()
    assert first.stat().st_ino == second.stat().st_ino != source.stat().st_ino
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest}.img"]
    assert first.stat().st_mode & 0o777 == 0o640


def test_changing_the_callers_file_changes_nothing_staged(tmp_path: Path) -> None:
    source = tmp_path / "mine.erofs"
    source.write_bytes(b"A" * 4096)
    staged = stage(source, tmp_path / "run1.img", tmp_path / "cache")
    source.write_bytes(b"B" * 4096)
    assert staged.read_bytes() == b"A" * 4096
    again = stage(source, tmp_path / "run2.img", tmp_path / "cache")
    assert again.read_bytes() == b"B" * 4096


def test_only_the_newest_entries_are_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for n in range(4):
        source = tmp_path / f"img{n}"
        source.write_bytes(bytes([n]) * 100)
        stage(source, tmp_path / f"run{n}.img", cache, keep=2)
        os.utime(next(cache.glob("*.img")), None)
    assert len(list(cache.glob("*.img"))) == 2
    assert (tmp_path / "run0.img").read_bytes() == b"\0" * 100  # a running guest keeps its link


def test_too_large_an_image_is_refused_with_the_limit(tmp_path: Path) -> None:
    source = tmp_path / "big"
    with source.open("wb") as f:
        f.truncate(65 << 20)
    with pytest.raises(VmlaunchError, match="more than the 64 MiB this host allows"):
        stage(source, tmp_path / "run.img", tmp_path / "cache", limit=64)
    assert not (tmp_path / "run.img").exists()


def test_a_changed_file_is_hashed_again_even_with_its_old_mtime(tmp_path: Path) -> None:
    source = tmp_path / "mine.erofs"
    source.write_bytes(b"A" * 4096)
    stage(source, tmp_path / "run1.img", tmp_path / "cache")
    before = source.stat()
    source.write_bytes(b"C" * 4096)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert stage(source, tmp_path / "run2.img", tmp_path / "cache").read_bytes() == b"C" * 4096


def test_a_file_changed_between_hash_and_copy_stages_what_was_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmlaunch.broker import rootfs

    source = tmp_path / "mine.erofs"
    source.write_bytes(b"D" * 4096)
    # The digest taken of the caller's file no longer matches what the broker then copies.
    monkeypatch.setattr(rootfs, "_hash_fd", lambda fd, size: "0" * 64)
    staged = stage(source, tmp_path / "run.img", tmp_path / "cache")
    assert staged.read_bytes() == b"D" * 4096
    digest = hashlib.sha256(b"D" * 4096).hexdigest()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest}.img"]
