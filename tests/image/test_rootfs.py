"""prepare_rootfs: an erofs of the unpacked layers, built once per chain of layers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmlaunch.errors import VmlaunchError
from vmlaunch.image import rootfs
from vmlaunch.image.oci import Image, open_image
from vmlaunch.image.reference import ImageReference, parse_reference
from vmlaunch.image.unpack import UnpackReport, unpack_layers
from vmlaunch.proc import run

from .layout import Layout, directory, file, snapshot, symlink, tar, whiteout

REPO = Path(__file__).resolve().parents[2]
BULLSEYE = REPO / "images" / "bullseye-mpich"

needs_erofs = pytest.mark.skipif(
    not (shutil.which("mkfs.erofs") and shutil.which("fsck.erofs")),
    reason="needs erofs-utils (mkfs.erofs, fsck.erofs)",
)


def make_image(tmp_path: Path, *layers: bytes, name: str = "img") -> Image:
    layout = Layout(tmp_path / name)
    layout.tag(layout.image(list(layers)), "latest")
    return open_image(ImageReference("oci", layout.path, "latest"))


def extract(erofs: Path, into: Path) -> dict[str, str]:
    subprocess.run(["fsck.erofs", f"--extract={into}", str(erofs)], check=True)
    return snapshot(into)


class Counter:
    """Wraps unpack_layers and run, counting calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.unpacks = 0
        self.commands: list[str] = []

        def counting_unpack(image: Image, target: Path) -> UnpackReport:
            self.unpacks += 1
            return unpack_layers(image, target)

        def counting_run(argv: list[str | Path]) -> subprocess.CompletedProcess[bytes]:
            self.commands.append(str(argv[0]))
            return run(argv)

        monkeypatch.setattr("vmlaunch.image.rootfs.unpack_layers", counting_unpack)
        monkeypatch.setattr("vmlaunch.image.rootfs.run", counting_run)


@pytest.mark.subprocess
@needs_erofs
def test_erofs_holds_the_unpacked_tree(tmp_path: Path) -> None:
    image = make_image(
        tmp_path,
        tar(directory("etc"), file("etc/os-release", b"ID=test\n"), file("gone", b"x")),
        tar(file("bin/sh", b"#!", mode=0o4755), symlink("sh", "bin/sh"), whiteout("gone")),
    )

    path = rootfs.prepare_rootfs(image, tmp_path / "cache")

    assert path.parent == tmp_path / "cache"
    assert path.name == f"{rootfs.rootfs_key(image)}.erofs"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert extract(path, tmp_path / "out") == {
        "bin": "dir 755",
        "bin/sh": "file 755 #!",
        "etc": "dir 755",
        "etc/os-release": "file 644 ID=test\n",
        "sh": "link -> bin/sh",
    }


@pytest.mark.subprocess
@needs_erofs
def test_second_call_is_a_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image(tmp_path, tar(file("a", b"1")))
    counter = Counter(monkeypatch)

    first = rootfs.prepare_rootfs(image, tmp_path / "cache")
    built = first.stat()
    second = rootfs.prepare_rootfs(image, tmp_path / "cache")

    assert second == first
    assert (counter.unpacks, counter.commands) == (1, ["mkfs.erofs"])
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.name]


def test_key_is_the_ordered_chain_of_layers(tmp_path: Path) -> None:
    a, b = tar(file("a")), tar(file("b"))
    ab = make_image(tmp_path, a, b, name="ab")
    ba = make_image(tmp_path, b, a, name="ba")
    ab_again = make_image(tmp_path, a, b, name="ab-again")

    assert rootfs.rootfs_key(ab) == rootfs.rootfs_key(ab_again)
    assert rootfs.rootfs_key(ab) != rootfs.rootfs_key(ba)


def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path, tar(file("a", b"1")))

    def failing_mkfs(argv: list[str | Path]) -> subprocess.CompletedProcess[bytes]:
        Path(argv[-2]).write_bytes(b"half an erofs")
        raise VmlaunchError("mkfs.erofs failed")

    monkeypatch.setattr("vmlaunch.image.rootfs.run", failing_mkfs)

    with pytest.raises(VmlaunchError, match=r"mkfs\.erofs failed"):
        rootfs.prepare_rootfs(image, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.build
@pytest.mark.skipif(not BULLSEYE.is_dir(), reason="run images/build for bullseye-mpich first")
@needs_erofs
def test_bullseye_mpich_rootfs(tmp_path: Path) -> None:
    image = open_image(parse_reference(f"oci:{BULLSEYE}:latest"))

    path = rootfs.prepare_rootfs(image, tmp_path / "cache")
    subprocess.run(["fsck.erofs", f"--extract={tmp_path / 'root'}", str(path)], check=True)

    assert image.config.labels["org.supercontainers.mpi"] == "mpich"
    assert image.config.cmd == ("ldd", "--version")
    root = tmp_path / "root"
    assert (root / "lib").readlink() == Path("usr/lib")  # merged /usr
    for wanted in ("lib/x86_64-linux-gnu/libc.so.6", "usr/lib/x86_64-linux-gnu/libmpich.so.12"):
        assert (root / wanted).resolve().is_file(), f"{wanted} missing from {path}"
        assert (root / wanted).resolve().is_relative_to(root)
