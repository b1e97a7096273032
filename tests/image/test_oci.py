"""open_image: choosing the manifest, verifying blobs, reading the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmlaunch.errors import ImageError
from vmlaunch.image.oci import ImageConfig, Layer, open_image
from vmlaunch.image.reference import ImageReference

from .layout import Layout, file, tar

CONFIG = {
    "Entrypoint": ["/entry.sh"],
    "Cmd": ["ldd", "--version"],
    "Env": ["PATH=/usr/bin:/bin", "EMPTY=", "BARE"],
    "WorkingDir": "/work",
    "User": "1000:1000",
    "Labels": {"org.supercontainers.mpi": "mpich", "org.supercontainers.glibc": "2.31"},
}


def oci(layout: Layout, tag: str | None = "latest") -> ImageReference:
    return ImageReference("oci", layout.path, tag)


def test_reads_config_and_layers(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layers = [tar(file("a", b"1")), tar(file("b", b"2"))]
    manifest = layout.image(layers, config=CONFIG)
    layout.tag(manifest, "latest")

    image = open_image(oci(layout))

    assert image.manifest_digest == manifest["digest"]
    assert image.layout == layout.path
    assert image.config == ImageConfig(
        entrypoint=("/entry.sh",),
        cmd=("ldd", "--version"),
        env=(("PATH", "/usr/bin:/bin"), ("EMPTY", ""), ("BARE", "")),
        workdir="/work",
        user="1000:1000",
        labels={"org.supercontainers.mpi": "mpich", "org.supercontainers.glibc": "2.31"},
    )
    assert [layer.media_type for layer in image.layers] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 2
    assert image.layers[0] == Layer(
        image.layers[0].digest,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        image.blob_path(image.layers[0].digest).stat().st_size,
    )
    assert image.blob_path(image.config_digest).is_file()


def test_empty_config_gives_empty_defaults(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image([tar(file("a"))]), "latest")

    assert open_image(oci(layout)).config == ImageConfig()


def test_picks_the_tag(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    one = layout.image([tar(file("one"))])
    two = layout.image([tar(file("two"))])
    layout.tag(one, "v1")
    layout.tag(two, "v2")

    assert open_image(oci(layout, "v2")).manifest_digest == two["digest"]
    assert open_image(oci(layout, "v1")).manifest_digest == one["digest"]


def test_no_tag_and_one_manifest_takes_it(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    manifest = layout.image([tar(file("a"))])
    layout.tag(manifest, None)

    assert open_image(oci(layout, None)).manifest_digest == manifest["digest"]


def test_missing_tag_lists_the_tags(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image([tar(file("a"))]), "v1")
    layout.tag(layout.image([tar(file("b"))]), "v2")

    with pytest.raises(ImageError) as caught:
        open_image(oci(layout, "v3"))

    assert caught.value.message == (
        f"image oci:{layout.path}:v3: no tag 'v3' in {layout.path}; tags there: v1, v2"
    )


def test_no_tag_and_several_manifests_lists_the_tags(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image([tar(file("a"))]), "v1")
    layout.tag(layout.image([tar(file("b"))]), "v2")

    with pytest.raises(ImageError, match=r"holds 2 manifests .* tags there: v1, v2"):
        open_image(oci(layout, None))


def test_missing_directory_names_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        open_image(ImageReference("oci", tmp_path / "gone", "latest"))

    assert caught.value.message == (
        f"image oci:{tmp_path / 'gone'}:latest: no OCI image layout at {tmp_path / 'gone'} "
        "(no such directory)"
    )


def test_directory_without_index_is_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not an OCI image layout"):
        open_image(ImageReference("oci", tmp_path, None))


def test_manifest_digest_mismatch_names_the_blob(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    manifest = layout.image([tar(file("a"))])
    layout.tag(manifest, "latest")
    path = layout.blob_path(manifest["digest"])
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))

    with pytest.raises(ImageError) as caught:
        open_image(oci(layout))

    assert f"manifest blob {manifest['digest']} does not match its digest" in str(caught.value)


def test_config_digest_mismatch_names_the_blob(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image([tar(file("a"))], config={"Cmd": ["true"]}), "latest")
    config_digest = open_image(oci(layout)).config_digest
    path = layout.blob_path(config_digest)
    path.write_bytes(path.read_bytes().replace(b"true", b"evil"))

    with pytest.raises(ImageError) as caught:
        open_image(oci(layout))

    assert f"config blob {config_digest} does not match its digest" in str(caught.value)


def test_missing_manifest_blob(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    manifest = layout.image([tar(file("a"))])
    layout.tag(manifest, "latest")
    layout.blob_path(manifest["digest"]).unlink()

    with pytest.raises(ImageError, match=f"manifest blob {manifest['digest']} is missing"):
        open_image(oci(layout))


def test_digest_cannot_name_a_path_outside_blobs(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.tag(
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:../../../etc/passwd",
            "size": 1,
        },
        "latest",
    )

    with pytest.raises(ImageError, match="not a valid blob digest"):
        open_image(oci(layout))


def test_nested_index_picks_the_platform(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    arm = layout.image([tar(file("arm"))], platform=("linux", "arm64"))
    amd = layout.image([tar(file("amd"))], platform=("linux", "amd64"))
    layout.tag(layout.index([arm, amd]), "latest")

    assert open_image(oci(layout)).manifest_digest == amd["digest"]
    assert open_image(oci(layout), platform="linux/arm64").manifest_digest == arm["digest"]


def test_nested_index_without_the_platform(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    arm = layout.image([tar(file("arm"))], platform=("linux", "arm64"))
    layout.tag(layout.index([arm]), "latest")

    with pytest.raises(
        ImageError, match="no manifest for platform linux/amd64; it offers linux/arm64"
    ):
        open_image(oci(layout))


def test_config_for_another_architecture_is_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    layout.tag(layout.image([tar(file("a"))], platform=("linux", "riscv64")), "latest")

    with pytest.raises(ImageError, match="is built for linux/riscv64, not linux/amd64"):
        open_image(oci(layout))


def test_malformed_manifest_is_an_image_error(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "img")
    manifest = layout.blob(
        json.dumps({"schemaVersion": 2, "layers": []}).encode(),
        "application/vnd.oci.image.manifest.v1+json",
    )
    layout.tag(manifest, "latest")

    with pytest.raises(ImageError, match="manifest has no valid 'config'"):
        open_image(oci(layout))
