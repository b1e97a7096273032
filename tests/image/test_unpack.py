"""unpack_layers: one test per layer rule, each checking the exact tree it leaves."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmlaunch.errors import ImageError
from vmlaunch.image.oci import Image, ImageConfig, Layer, open_image
from vmlaunch.image.reference import ImageReference
from vmlaunch.image.unpack import Action, UnpackReport, unpack_layers

from .layout import (
    Layout,
    device,
    directory,
    fifo,
    file,
    hardlink,
    opaque,
    snapshot,
    symlink,
    tar,
    whiteout,
)


def make_image(tmp_path: Path, *layers: bytes, compression: str = "gzip") -> Image:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image(list(layers), compression=compression), "latest")
    return open_image(ImageReference("oci", layout.path, "latest"))


def unpack(tmp_path: Path, *layers: bytes, compression: str = "gzip") -> tuple[Path, UnpackReport]:
    target = tmp_path / "target"
    return target, unpack_layers(make_image(tmp_path, *layers, compression=compression), target)


def notes(report: UnpackReport) -> list[tuple[str, Action, str]]:
    return [(entry.name, entry.action, entry.reason) for entry in report.entries]


@pytest.mark.parametrize("compression", ["tar", "gzip", "zstd"])
def test_files_directories_and_modes(tmp_path: Path, compression: str) -> None:
    layer = tar(
        directory("etc"),
        file("etc/hosts", b"127.0.0.1 localhost\n"),
        file("./usr/bin/tool", b"#!/bin/sh\n", mode=0o755),
        file("etc/shadow", b"root:*:", mode=0o000),
        directory("ro", mode=0o555),
        file("ro/inside", b"x", mode=0o444),
    )

    image = make_image(tmp_path, layer, compression=compression)
    target = tmp_path / "target"
    report = unpack_layers(image, target)

    assert snapshot(target) == {
        "etc": "dir 755",
        "etc/hosts": "file 644 127.0.0.1 localhost\n",
        "etc/shadow": "file 400 root:*:",  # owner-readable, so an unprivileged mkfs reads it
        "usr": "dir 755",  # implied by usr/bin/tool
        "usr/bin": "dir 755",
        "usr/bin/tool": "file 755 #!/bin/sh\n",
        "ro": "dir 755",  # owner-writable, so later layers and cleanup can change it
        "ro/inside": "file 444 x",
    }
    assert report.entries == ()
    assert report.layers == (image.layers[0].digest,)
    assert report.target == target


def test_mtimes_are_kept(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(directory("d"), file("d/f", b"x"), symlink("d/l", "f")))

    assert (target / "d").stat().st_mtime == 1_600_000_000
    assert (target / "d/f").stat().st_mtime == 1_600_000_000
    assert (target / "d/l").lstat().st_mtime == 1_600_000_000


def test_later_layer_replaces_a_file(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(file("f", b"old")), tar(file("f", b"new", mode=0o600)))

    assert snapshot(target) == {"f": "file 600 new"}


def test_whiteout_removes_a_file_and_a_directory(tmp_path: Path) -> None:
    lower = tar(file("a/f", b"1"), file("a/g", b"2"), file("b/c/d", b"3"))
    upper = tar(whiteout("a/f"), whiteout("b"), whiteout("never/existed"))

    target, report = unpack(tmp_path, lower, upper)

    assert snapshot(target) == {"a": "dir 755", "a/g": "file 644 2"}
    assert report.entries == ()


def test_opaque_directory_hides_lower_content_only(tmp_path: Path) -> None:
    lower = tar(file("d/old", b"1"), file("d/sub/x", b"2"), file("keep", b"3"))
    # The marker comes after this layer's own entries, which it must not hide.
    upper = tar(directory("d"), file("d/new", b"4"), file("d/sub/y", b"5"), opaque("d"))

    target, _ = unpack(tmp_path, lower, upper)

    assert snapshot(target) == {
        "d": "dir 755",
        "d/new": "file 644 4",
        "d/sub": "dir 755",
        "d/sub/y": "file 644 5",
        "keep": "file 644 3",
    }


def test_whiteout_hides_lower_layers_only(tmp_path: Path) -> None:
    lower = tar(file("d/f", b"lower"), file("d/g", b"lower"))
    upper = tar(file("d/f", b"upper"), whiteout("d/f"), whiteout("d/g"))

    target, _ = unpack(tmp_path, lower, upper)

    assert snapshot(target) == {"d": "dir 755", "d/f": "file 644 upper"}


def test_hardlink_within_a_layer(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(file("bin/a", b"data"), hardlink("bin/b", "bin/a")))

    assert os.path.samefile(target / "bin/a", target / "bin/b")
    assert snapshot(target) == {
        "bin": "dir 755",
        "bin/a": "file 644 data",
        "bin/b": "file 644 data",
    }


def test_hardlink_to_a_file_of_an_earlier_layer(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(file("a", b"data")), tar(hardlink("b", "./a")))

    assert os.path.samefile(target / "a", target / "b")


def test_replacing_a_hardlinked_file_leaves_the_other_link(tmp_path: Path) -> None:
    lower = tar(file("a", b"old"), hardlink("b", "a"))

    target, _ = unpack(tmp_path, lower, tar(file("a", b"new")))

    assert snapshot(target) == {"a": "file 644 new", "b": "file 644 old"}


def test_symlinks_are_stored_as_they_are(tmp_path: Path) -> None:
    layer = tar(
        symlink("abs", "/etc/hosts"),
        symlink("rel", "../../x"),
        symlink("dangling", "nowhere"),
    )

    target, _ = unpack(tmp_path, layer)

    assert snapshot(target) == {
        "abs": "link -> /etc/hosts",
        "rel": "link -> ../../x",
        "dangling": "link -> nowhere",
    }


def test_directory_replaces_a_file(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(file("p", b"file")), tar(directory("p"), file("p/q", b"x")))

    assert snapshot(target) == {"p": "dir 755", "p/q": "file 644 x"}


def test_file_replaces_a_directory(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(file("p/q/r", b"x")), tar(file("p", b"file")))

    assert snapshot(target) == {"p": "file 644 file"}


def test_symlink_replaces_a_directory(tmp_path: Path) -> None:
    target, _ = unpack(tmp_path, tar(file("lib/x", b"x")), tar(symlink("lib", "usr/lib")))

    assert snapshot(target) == {"lib": "link -> usr/lib"}


def test_directory_replaces_a_symlink(tmp_path: Path) -> None:
    lower = tar(file("usr/lib/x", b"x"), symlink("lib", "usr/lib"))

    target, _ = unpack(tmp_path, lower, tar(directory("lib"), file("lib/y", b"y")))

    assert snapshot(target) == {
        "lib": "dir 755",
        "lib/y": "file 644 y",
        "usr": "dir 755",
        "usr/lib": "dir 755",
        "usr/lib/x": "file 644 x",
    }


def test_parent_symlink_resolves_inside_the_target(tmp_path: Path) -> None:
    # A merged-/usr base: lib -> usr/lib; a later layer writes through lib/.
    lower = tar(directory("usr/lib"), symlink("lib", "usr/lib"))

    target, _ = unpack(tmp_path, lower, tar(file("lib/libfoo.so", b"elf")))

    assert snapshot(target) == {
        "lib": "link -> usr/lib",
        "usr": "dir 755",
        "usr/lib": "dir 755",
        "usr/lib/libfoo.so": "file 644 elf",
    }


def test_special_mode_bits_are_dropped_and_reported(tmp_path: Path) -> None:
    layer = tar(
        file("su", b"x", mode=0o4755), file("wall", b"y", mode=0o2755), directory("tmp", 0o1777)
    )

    target, report = unpack(tmp_path, layer)

    assert snapshot(target) == {"su": "file 755 x", "wall": "file 755 y", "tmp": "dir 777"}
    assert notes(report) == [
        ("su", Action.CHANGED, "setuid/setgid/sticky bits dropped (mode 4755)"),
        ("wall", Action.CHANGED, "setuid/setgid/sticky bits dropped (mode 2755)"),
        ("tmp", Action.CHANGED, "setuid/setgid/sticky bits dropped (mode 1777)"),
    ]
    assert report.changed == report.entries


def test_device_nodes_and_fifos_are_skipped_and_reported(tmp_path: Path) -> None:
    target, report = unpack(tmp_path, tar(directory("dev"), device("dev/null"), fifo("dev/fifo")))

    assert snapshot(target) == {"dev": "dir 755"}
    assert notes(report) == [
        ("dev/null", Action.SKIPPED, "a device node needs privilege to create"),
        ("dev/fifo", Action.SKIPPED, "a fifo needs privilege to create"),
    ]
    assert report.skipped == report.entries


def test_layer_digest_mismatch_names_the_layer(tmp_path: Path) -> None:
    image = make_image(tmp_path, tar(file("a", b"good")))
    layer = image.layers[0]
    other = make_image(tmp_path / "other", tar(file("a", b"evil")))
    evil = other.blob_path(other.layers[0].digest).read_bytes()
    image.blob_path(layer.digest).write_bytes(evil)

    with pytest.raises(ImageError) as caught:
        unpack_layers(image, tmp_path / "target")

    assert caught.value.message.startswith(
        f"image oci:{tmp_path / 'img'}:latest: layer {layer.digest} does not match its digest "
        "(its content hashes to sha256:"
    )


def test_truncated_layer_is_reported_by_its_digest(tmp_path: Path) -> None:
    image = make_image(tmp_path, tar(file("a", os.urandom(4096))))
    layer = image.layers[0]
    blob = image.blob_path(layer.digest)
    blob.write_bytes(blob.read_bytes()[:100])

    with pytest.raises(ImageError, match=f"layer {layer.digest} does not match its digest"):
        unpack_layers(image, tmp_path / "target")


def test_unknown_layer_media_type_is_refused_before_writing(tmp_path: Path) -> None:
    image = make_image(tmp_path, tar(file("a")))
    odd = Layer(image.layers[0].digest, "application/vnd.oci.image.layer.v1.tar+bzip2", 1)
    image = Image(image.reference, "", "", ImageConfig(), (image.layers[0], odd), image.layout)

    with pytest.raises(ImageError, match=r"media type '.*tar\+bzip2', which vmlaunch cannot"):
        unpack_layers(image, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_broken_stream_with_a_good_digest_is_an_image_error(tmp_path: Path) -> None:
    image = make_image(tmp_path, b"this is not a tar stream", compression="tar")

    with pytest.raises(ImageError, match=r"is not a valid application/vnd\.oci\.image\.layer"):
        unpack_layers(image, tmp_path / "target")


def test_hardlink_to_a_directory_is_refused(tmp_path: Path) -> None:
    target, report = unpack(tmp_path, tar(directory("usr/bin"), hardlink("bin", "usr/bin")))

    assert snapshot(target) == {"usr": "dir 755", "usr/bin": "dir 755"}
    assert notes(report) == [("bin", Action.REFUSED, "bad link target: usr/bin is a directory")]
