"""Image references in skopeo's transport syntax, "oci:DIR[:TAG]"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vmlaunch.errors import ImageError

SUPPORTED_TRANSPORTS = ("oci",)

# Transports that skopeo knows and we do not read (yet): named so that the error can say how to
# turn such an image into one we read.
_OTHER_TRANSPORTS = (
    "containers-storage",
    "dir",
    "docker",
    "docker-archive",
    "docker-daemon",
    "oci-archive",
    "sif",
    "tarball",
)

# The grammar of org.opencontainers.image.ref.name in the OCI image layout spec.
_ALPHANUM = r"[A-Za-z0-9]+"
_COMPONENT = rf"{_ALPHANUM}(?:(?:[-._:@+]|--){_ALPHANUM})*"
_TAG = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")


@dataclass(frozen=True)
class ImageReference:
    """An image in a local OCI layout: the layout's directory and, optionally, a tag in it."""

    transport: str
    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        text = f"{self.transport}:{self.path}"
        return f"{text}:{self.tag}" if self.tag else text


def parse_reference(text: str) -> ImageReference:
    """Parse "oci:DIR[:TAG]"; a bare "DIR[:TAG]" holding an index.json is taken as oci: too."""
    if not text:
        raise ImageError("empty image reference", "give one as oci:DIR[:TAG]")

    transport, sep, rest = text.partition(":")
    if sep and transport in SUPPORTED_TRANSPORTS:
        return _parse_oci(text, rest)

    bare = _parse_bare_layout(text)
    if bare is not None:
        return bare

    if sep and (transport in _OTHER_TRANSPORTS or re.fullmatch(r"[a-z][a-z0-9-]*", transport)):
        raise ImageError(
            f"unsupported transport {transport!r} in image reference {text!r}; "
            f"supported: {', '.join(SUPPORTED_TRANSPORTS)}",
            f"copy the image into an OCI layout first: skopeo copy {text} oci:DIR:TAG",
        )
    raise ImageError(
        f"no OCI image layout at {text!r} (no index.json there)",
        "give the image as oci:DIR[:TAG], DIR being an OCI image layout",
    )


def _parse_oci(text: str, rest: str) -> ImageReference:
    # Like skopeo: the first colon ends the directory, so directories cannot contain colons.
    directory, sep, tag = rest.partition(":")
    if not directory:
        raise ImageError(f"image reference {text!r} names no directory", "write oci:DIR[:TAG]")
    if sep and not _TAG.match(tag):
        raise ImageError(
            f"invalid tag {tag!r} in image reference {text!r}",
            "tags are letters and digits joined by one of - . _ : @ + / (or --)",
        )
    return ImageReference("oci", Path(directory), tag or None)


def _parse_bare_layout(text: str) -> ImageReference | None:
    if (Path(text) / "index.json").is_file():
        return ImageReference("oci", Path(text))

    directory, sep, tag = text.partition(":")
    if sep and _TAG.match(tag) and (Path(directory) / "index.json").is_file():
        return ImageReference("oci", Path(directory), tag)
    return None
