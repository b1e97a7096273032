"""The container's root file system as a read-only erofs image, cached by its chain of layers."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

from vmlaunch.image.oci import Image
from vmlaunch.image.unpack import UnpackReport, unpack_layers
from vmlaunch.proc import run

log = logging.getLogger(__name__)

# Part of the cache key: change it whenever the unpacking rules or the mkfs options change, so
# that no erofs made the old way is reused.
ROOTFS_FORMAT = "vmlaunch-rootfs-erofs-1"

# Ownership inside is meaningless (the guest maps the user), so every file is root's; modes
# and mtimes are kept. No xattrs: the unpacked tree has none of the image's, only what the
# host's file system may add (SELinux labels), which must not leak into the guest.
_MKFS_OPTIONS = ("--all-root", "-x-1", "--quiet")


def rootfs_key(image: Image) -> str:
    """The cache key: the ordered chain of layer digests, and how the erofs is made."""
    chain = "\n".join([ROOTFS_FORMAT, *(layer.digest for layer in image.layers)])
    return hashlib.sha256(chain.encode()).hexdigest()


def prepare_rootfs(image: Image, cache_dir: Path) -> Path:
    """Return an erofs image of image's root file system, built once and cached in cache_dir.

    The file appears under its final name only when complete (built in a temporary directory
    beside it and renamed), so a crashed build never leaves a file that a later call would use.
    """
    path = cache_dir / f"{rootfs_key(image)}.erofs"
    if path.is_file():
        log.info("root file system of %s: cached at %s", image.reference, path)
        return path

    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # A build killed outright leaves its .build-* directory behind; nothing reuses it, but
    # nothing removes it either until someone clears the cache.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache_dir) as work:
        tree = Path(work) / "rootfs"
        _log_report(image, unpack_layers(image, tree))

        partial = Path(work) / "rootfs.erofs"
        log.info("making the erofs image of %s", image.reference)
        run(["mkfs.erofs", *_MKFS_OPTIONS, partial, tree])
        partial.chmod(0o644)
        _fsync(partial)
        os.replace(partial, path)
        _fsync(cache_dir)

    log.info(
        "root file system of %s ready in %.1f s: %s (%d bytes)",
        image.reference,
        time.monotonic() - started,
        path,
        path.stat().st_size,
    )
    return path


def _log_report(image: Image, report: UnpackReport) -> None:
    if report.skipped or report.changed:
        log.info(
            "unpacked %s: skipped %d entries (device nodes, fifos), dropped special mode bits "
            "of %d",
            image.reference,
            len(report.skipped),
            len(report.changed),
        )
    if report.refused:
        first = report.refused[0]
        log.warning(
            "image %s: refused %d unsafe layer entries (first: %r in layer %s: %s); "
            "the image is broken or hostile",
            image.reference,
            len(report.refused),
            first.name,
            first.layer,
            first.reason,
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
