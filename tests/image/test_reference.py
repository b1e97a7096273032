"""parse_reference: skopeo's oci: syntax, bare layout directories, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmlaunch.errors import ImageError
from vmlaunch.image.reference import ImageReference, parse_reference

from .layout import Layout


def test_oci_with_tag() -> None:
    ref = parse_reference("oci:images/bullseye-mpich:latest")

    assert ref == ImageReference("oci", Path("images/bullseye-mpich"), "latest")
    assert str(ref) == "oci:images/bullseye-mpich:latest"


def test_oci_without_tag() -> None:
    ref = parse_reference("oci:/srv/images/app")

    assert ref == ImageReference("oci", Path("/srv/images/app"), None)
    assert str(ref) == "oci:/srv/images/app"


def test_tag_may_hold_colons_and_slashes() -> None:
    # Like skopeo, the first colon ends the directory; the rest is the tag.
    assert parse_reference("oci:dir:v1.0:rc/2").tag == "v1.0:rc/2"


def test_bare_layout_directory_is_oci(tmp_path: Path) -> None:
    Layout(tmp_path / "app")

    assert parse_reference(str(tmp_path / "app")) == ImageReference("oci", tmp_path / "app")
    assert parse_reference(f"{tmp_path / 'app'}:v2") == ImageReference(
        "oci", tmp_path / "app", "v2"
    )


def test_unknown_transport_names_the_supported_ones() -> None:
    with pytest.raises(ImageError) as caught:
        parse_reference("docker://docker.io/library/debian:bullseye")

    assert "unsupported transport 'docker'" in caught.value.message
    assert "supported: oci" in caught.value.message
    assert caught.value.hint is not None and "skopeo copy" in caught.value.hint


def test_path_without_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no OCI image layout at"):
        parse_reference(str(tmp_path / "nothing/here"))


@pytest.mark.parametrize("text", ["", "oci:", "oci::latest", "oci:dir:bad tag", "oci:dir:-x"])
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(ImageError):
        parse_reference(text)
