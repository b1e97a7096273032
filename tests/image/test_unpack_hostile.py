"""unpack_layers against hostile layers: nothing outside the target changes, and all is reported."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmlaunch.image.oci import open_image
from vmlaunch.image.reference import ImageReference
from vmlaunch.image.unpack import Action, UnpackReport, unpack_layers

from .layout import Layout, device, file, hardlink, snapshot, symlink, tar, whiteout

SENTINELS = {"passwd": "file 644 root:x:0:0", "dir": "dir 755", "dir/keep": "file 644 keep"}


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory beside the target whose content must not change."""
    path = tmp_path / "outside"
    (path / "dir").mkdir(parents=True)
    (path / "passwd").write_text("root:x:0:0")
    (path / "dir/keep").write_text("keep")
    for name in ("passwd", "dir/keep"):
        (path / name).chmod(0o644)
    yield path
    assert snapshot(path) == SENTINELS
    assert os.stat(path / "passwd").st_nlink == 1


def unpack(tmp_path: Path, *layers: bytes) -> tuple[Path, UnpackReport]:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image(list(layers)), "latest")
    target = tmp_path / "target"
    image = open_image(ImageReference("oci", layout.path, "latest"))
    return target, unpack_layers(image, target)


def notes(report: UnpackReport) -> list[tuple[str, Action, str]]:
    return [(entry.name, entry.action, entry.reason) for entry in report.entries]


def inside(outside: Path) -> str:
    """Where an absolute path to outside lands when it is resolved inside the target."""
    return str(outside).lstrip("/")


def dirs_of(path: str) -> dict[str, str]:
    parts = path.split("/")
    return {"/".join(parts[: end + 1]): "dir 755" for end in range(len(parts))}


def test_dotdot_names_are_refused(tmp_path: Path, outside: Path) -> None:
    layer = tar(
        file("../outside/passwd", b"pwned"),
        file("a/../../outside/dir/new", b"pwned"),
        file("/../outside/passwd", b"pwned"),
        file("ok", b"fine"),
    )

    target, report = unpack(tmp_path, layer)

    assert snapshot(target) == {"ok": "file 644 fine"}
    assert notes(report) == [
        ("../outside/passwd", Action.REFUSED, "its name has a '..' component"),
        ("a/../../outside/dir/new", Action.REFUSED, "its name has a '..' component"),
        ("/../outside/passwd", Action.REFUSED, "its name has a '..' component"),
    ]


def test_absolute_names_land_inside_the_target(tmp_path: Path, outside: Path) -> None:
    target, report = unpack(tmp_path, tar(file(f"{outside}/passwd", b"pwned")))

    assert snapshot(target) == {
        **dirs_of(inside(outside)),
        f"{inside(outside)}/passwd": "file 644 pwned",
    }
    assert report.entries == ()


def test_write_through_an_absolute_symlink_stays_inside(tmp_path: Path, outside: Path) -> None:
    layer = tar(symlink("escape", str(outside)), file("escape/passwd", b"pwned"))

    target, _ = unpack(tmp_path, layer)

    assert snapshot(target) == {
        "escape": f"link -> {outside}",
        **dirs_of(inside(outside)),
        f"{inside(outside)}/passwd": "file 644 pwned",
    }


def test_write_through_a_relative_symlink_stops_at_the_root(tmp_path: Path, outside: Path) -> None:
    # The link comes in one layer and the write through it in the next.
    lower = tar(symlink("escape", "../../../../../../outside"))

    target, _ = unpack(tmp_path, lower, tar(file("escape/dir/keep", b"pwned")))

    assert snapshot(target) == {
        "escape": "link -> ../../../../../../outside",
        "outside": "dir 755",
        "outside/dir": "dir 755",
        "outside/dir/keep": "file 644 pwned",
    }


def test_writing_over_a_symlink_replaces_the_link(tmp_path: Path, outside: Path) -> None:
    lower = tar(symlink("passwd", str(outside / "passwd")))

    target, _ = unpack(tmp_path, lower, tar(file("passwd", b"pwned")))

    assert snapshot(target) == {"passwd": "file 644 pwned"}


def test_symlink_loops_are_refused(tmp_path: Path, outside: Path) -> None:
    target, report = unpack(tmp_path, tar(symlink("loop", "loop"), file("loop/x", b"x")))

    assert snapshot(target) == {"loop": "link -> loop"}
    assert notes(report) == [("loop/x", Action.REFUSED, "too many levels of symbolic links")]


def test_hardlinks_out_of_the_image_are_refused(tmp_path: Path, outside: Path) -> None:
    host_links = os.stat("/etc/passwd").st_nlink
    layer = tar(
        hardlink("stolen", "/etc/passwd"),
        hardlink("stolen2", "../outside/passwd"),
        symlink("hostdir", str(outside)),
        hardlink("stolen3", "hostdir/passwd"),
        hardlink("stolen4", str(outside / "passwd")),
    )

    target, report = unpack(tmp_path, layer)

    assert snapshot(target) == {"hostdir": f"link -> {outside}"}
    bad_target, top = "bad link target:", inside(outside).split("/")[0]
    assert notes(report) == [
        ("stolen", Action.REFUSED, f"{bad_target} etc does not exist"),
        ("stolen2", Action.REFUSED, "its link target has a '..' component"),
        ("stolen3", Action.REFUSED, f"{bad_target} {top} does not exist"),
        ("stolen4", Action.REFUSED, f"{bad_target} {top} does not exist"),
    ]
    assert os.stat("/etc/passwd").st_nlink == host_links


def test_hardlink_to_a_missing_file_is_refused(tmp_path: Path, outside: Path) -> None:
    target, report = unpack(tmp_path, tar(file("etc/hosts"), hardlink("stolen", "/etc/passwd")))

    assert snapshot(target) == {"etc": "dir 755", "etc/hosts": "file 644 "}
    assert notes(report) == [
        (
            "stolen",
            Action.REFUSED,
            "bad link target: etc/passwd does not exist",
        ),
    ]


def test_whiteout_through_a_symlink_stays_inside(tmp_path: Path, outside: Path) -> None:
    layer = tar(symlink("out", str(outside)), whiteout("out/passwd"), whiteout("out/dir"))

    target, report = unpack(tmp_path, layer)

    assert snapshot(target) == {"out": f"link -> {outside}"}
    assert report.entries == ()


def test_device_node_and_setuid_are_reported(tmp_path: Path, outside: Path) -> None:
    layer = tar(device("dev/sda"), file("bin/su", b"x", mode=0o4755))

    target, report = unpack(tmp_path, layer)

    assert snapshot(target) == {"bin": "dir 755", "bin/su": "file 755 x"}
    assert notes(report) == [
        ("dev/sda", Action.SKIPPED, "a device node needs privilege to create"),
        ("bin/su", Action.CHANGED, "setuid/setgid/sticky bits dropped (mode 4755)"),
    ]
