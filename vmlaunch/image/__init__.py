"""Container images: references, OCI layouts, safe layer unpacking, the root file system."""

from vmlaunch.image.oci import Image, ImageConfig, Layer, open_image
from vmlaunch.image.reference import ImageReference, parse_reference
from vmlaunch.image.rootfs import prepare_rootfs
from vmlaunch.image.unpack import UnpackReport, unpack_layers

__all__ = [
    "Image",
    "ImageConfig",
    "ImageReference",
    "Layer",
    "UnpackReport",
    "open_image",
    "parse_reference",
    "prepare_rootfs",
    "unpack_layers",
]
