"""Applying an image's layers, in order, into a directory, as the invoking (unprivileged) user.

Follows the OCI image layer spec (changesets, whiteouts, opaque directories) with the limits of
an unprivileged user: ownership is not kept (every file belongs to whoever unpacks), device
nodes and fifos are skipped, setuid, setgid and sticky bits are dropped, and directories stay
owner-writable so that later layers and cleanup can change them. Each layer's blob is checked
against its digest while it is read. Nothing is ever written outside the target (see tree.py).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import zstandard

from vmlaunch.errors import ImageError
from vmlaunch.image import tree
from vmlaunch.image.digest import DigestingReader
from vmlaunch.image.oci import Image, Layer

log = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_RESERVED_PREFIX = ".wh..wh."
_SPECIAL_BITS = 0o7000
_CHUNK = 1 << 20
_REFETCH = "the layout is corrupt or was modified; copy the image again (skopeo copy)"

# Errors a broken compressed or tar stream raises while it is read.
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


class Action(StrEnum):
    REFUSED = "refused"  # unsafe (it would reach outside the target): not written
    SKIPPED = "skipped"  # not representable by an unprivileged user: not written
    CHANGED = "changed"  # written, but not exactly as the layer has it


@dataclass(frozen=True)
class ReportEntry:
    """One layer entry that was not written as the layer has it, and why."""

    layer: str
    name: str
    action: Action
    reason: str


@dataclass(frozen=True)
class UnpackReport:
    """What unpack_layers wrote where, and every entry it refused, skipped or changed."""

    target: Path
    layers: tuple[str, ...]
    entries: tuple[ReportEntry, ...] = ()

    def with_action(self, action: Action) -> tuple[ReportEntry, ...]:
        return tuple(entry for entry in self.entries if entry.action is action)

    @property
    def refused(self) -> tuple[ReportEntry, ...]:
        return self.with_action(Action.REFUSED)

    @property
    def skipped(self) -> tuple[ReportEntry, ...]:
        return self.with_action(Action.SKIPPED)

    @property
    def changed(self) -> tuple[ReportEntry, ...]:
        return self.with_action(Action.CHANGED)


# Turns a layer blob's stream into its tar stream.
_Decompress = Callable[[BinaryIO], BinaryIO | gzip.GzipFile]


def _gunzip(stream: BinaryIO) -> BinaryIO | gzip.GzipFile:
    return gzip.GzipFile(fileobj=stream, mode="rb")


def _unzstd(stream: BinaryIO) -> BinaryIO | gzip.GzipFile:
    decompressor = zstandard.ZstdDecompressor()
    return decompressor.stream_reader(stream, read_across_frames=True, closefd=False)


def _plain(stream: BinaryIO) -> BinaryIO | gzip.GzipFile:
    return stream


LAYER_MEDIA_TYPES: dict[str, _Decompress] = {
    "application/vnd.oci.image.layer.v1.tar": _plain,
    "application/vnd.oci.image.layer.v1.tar+gzip": _gunzip,
    "application/vnd.oci.image.layer.v1.tar+zstd": _unzstd,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": _plain,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": _gunzip,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": _unzstd,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": _gunzip,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": _gunzip,
}


def unpack_layers(image: Image, target: Path) -> UnpackReport:
    """Apply image's layers in order into target (created if missing, normally empty).

    On ImageError (a layer that does not match its digest, or a broken stream), target holds
    part of the tree, none of it outside target: discard it.
    """
    for layer in image.layers:
        _check_media_type(image, layer)
    target.mkdir(parents=True, exist_ok=True)

    entries: list[ReportEntry] = []
    dir_mtimes: dict[tuple[str, ...], int] = {}
    with tree.Tree(target) as root:
        for number, layer in enumerate(image.layers, start=1):
            log.info(
                "unpacking layer %d/%d %s (%d bytes)",
                number,
                len(image.layers),
                layer.digest,
                layer.size,
            )
            _apply_layer(image, layer, _LayerWriter(root, layer.digest, entries, dir_mtimes))

        # Entries written into a directory change its mtime; put the layers' mtimes back.
        for path, mtime in dir_mtimes.items():
            root.set_dir_mtime(path, mtime)

    report = UnpackReport(target, tuple(layer.digest for layer in image.layers), tuple(entries))
    for entry in report.entries:
        log.debug("%s %s in layer %s: %s", entry.action, entry.name, entry.layer, entry.reason)
    return report


def _check_media_type(image: Image, layer: Layer) -> None:
    if layer.media_type not in LAYER_MEDIA_TYPES:
        raise ImageError(
            f"image {image.reference}: layer {layer.digest} has media type "
            f"{layer.media_type!r}, which vmlaunch cannot unpack",
            f"supported layer types: {', '.join(sorted(LAYER_MEDIA_TYPES))}",
        )


def _apply_layer(image: Image, layer: Layer, writer: _LayerWriter) -> None:
    try:
        raw = image.blob_path(layer.digest).open("rb")
    except FileNotFoundError:
        raise ImageError(
            f"image {image.reference}: layer {layer.digest} is missing from {image.layout}",
            _REFETCH,
        ) from None

    with raw:
        reader = DigestingReader(raw, layer.digest)
        try:
            _read_tar(LAYER_MEDIA_TYPES[layer.media_type], reader, writer)
        except _STREAM_ERRORS as e:
            # A damaged blob usually breaks the stream first: say so by its digest if it is.
            reader.drain()
            _check_digest(image, layer, reader)
            raise ImageError(
                f"image {image.reference}: layer {layer.digest} is not a valid "
                f"{layer.media_type} stream: {e}",
                _REFETCH,
            ) from e
    _check_digest(image, layer, reader)


def _read_tar(
    decompress: _Decompress,
    reader: DigestingReader,
    writer: _LayerWriter,
) -> None:
    with decompress(io.BufferedReader(reader, _CHUNK)) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            writer.write_all(archive)
        while stream.read(_CHUNK):
            pass
    reader.drain()


def _check_digest(image: Image, layer: Layer, reader: DigestingReader) -> None:
    if not reader.matches():
        raise ImageError(
            f"image {image.reference}: layer {layer.digest} does not match its digest "
            f"(its content hashes to {reader.computed()})",
            _REFETCH,
        )
    if reader.size != layer.size:
        raise ImageError(
            f"image {image.reference}: layer {layer.digest} is {reader.size} bytes, "
            f"its descriptor says {layer.size}",
            _REFETCH,
        )


class _LayerWriter:
    """Writes the entries of one layer's tar stream into the tree."""

    def __init__(
        self,
        root: tree.Tree,
        layer: str,
        entries: list[ReportEntry],
        dir_mtimes: dict[tuple[str, ...], int],
    ) -> None:
        self._root = root
        self._layer = layer
        self._entries = entries
        self._dir_mtimes = dir_mtimes
        # Whiteouts hide lower layers only, so what this layer wrote, and the directories
        # holding it, must survive a whiteout that comes later in the same stream.
        self._written: set[tuple[str, ...]] = set()
        self._holding_written: set[tuple[str, ...]] = set()

    def write_all(self, archive: tarfile.TarFile) -> None:
        for member in archive:
            try:
                self._write(archive, member)
            except tree.EntryRefused as e:
                self._note(member.name, Action.REFUSED, str(e))
            except OSError as e:
                raise ImageError(
                    f"cannot unpack {member.name!r} of layer {self._layer}: {e}",
                    "check the free space and permissions where the image is unpacked",
                ) from e

    def _note(self, name: str, action: Action, reason: str) -> None:
        self._entries.append(ReportEntry(self._layer, name, action, reason))

    def _write(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _split_name(member.name, "its name")
        if not parts:
            if not member.isdir():
                raise tree.EntryRefused("it would replace the root directory")
            return
        *dirs, name = parts

        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, dirs, name)
            return
        if member.ischr() or member.isblk() or member.isfifo():
            kind = "a fifo" if member.isfifo() else "a device node"
            self._note(member.name, Action.SKIPPED, f"{kind} needs privilege to create")
            return
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            self._note(member.name, Action.SKIPPED, f"unknown tar entry type {member.type!r}")
            return

        with self._root.parent(dirs, create=True) as parent:
            self._write_entry(archive, member, parent, name)
            self._mark_written(parent.child(name))

        if (member.isreg() or member.isdir()) and member.mode & _SPECIAL_BITS:
            self._note(
                member.name,
                Action.CHANGED,
                f"setuid/setgid/sticky bits dropped (mode {member.mode:04o})",
            )

    def _write_entry(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo, parent: tree.Parent, name: str
    ) -> None:
        if member.isdir():
            # Owner-writable, so that later layers and cleanup can change what is inside.
            tree.make_dir(parent, name, (member.mode & 0o777) | 0o700)
            self._dir_mtimes[parent.child(name)] = int(member.mtime)
        elif member.issym():
            tree.make_symlink(parent, name, member.linkname, int(member.mtime))
        elif member.islnk():
            self._hardlink(member, parent, name)
        else:
            data = archive.extractfile(member)
            assert data is not None  # a regular file always has data, even if empty
            # Owner-readable, so that an unprivileged mkfs can read a mode 0000 file.
            mode = (member.mode & 0o777) | 0o400
            tree.write_file(parent, name, mode, data, int(member.mtime))

    def _hardlink(self, member: tarfile.TarInfo, parent: tree.Parent, name: str) -> None:
        # A hard link names its target as the archive does, relative to the image's root.
        source = _split_name(member.linkname, "its link target")
        if not source:
            raise tree.EntryRefused("its link target is the root directory")
        *source_dirs, source_name = source
        try:
            with self._root.parent(source_dirs, create=False) as source_parent:
                tree.make_hardlink(source_parent, source_name, parent, name)
        except tree.EntryRefused as e:
            raise tree.EntryRefused(f"bad link target: {e}") from None

    def _whiteout(self, member: tarfile.TarInfo, dirs: list[str], name: str) -> None:
        if name == OPAQUE_WHITEOUT:
            with self._root.parent(dirs, create=True) as directory:
                for child in os.listdir(directory.fd):
                    self._remove_lower(directory, child)
            return
        if name.startswith(_RESERVED_PREFIX):
            self._note(member.name, Action.SKIPPED, "reserved whiteout name")
            return

        hidden = name.removeprefix(WHITEOUT_PREFIX)
        if hidden in ("", ".", ".."):
            raise tree.EntryRefused(f"it whites out {hidden!r}")
        try:
            with self._root.parent(dirs, create=False) as directory:
                self._remove_lower(directory, hidden)
        except tree.EntryRefused:
            pass  # its directory does not exist below this layer: nothing to hide

    def _remove_lower(self, directory: tree.Parent, name: str) -> None:
        """Remove what lower layers put at name, keeping what this layer wrote there."""
        path = directory.child(name)
        if path not in self._written and path not in self._holding_written:
            tree.remove(directory, name)
            return

        found = tree.lstat(directory, name)
        if found is None or not stat.S_ISDIR(found.st_mode):
            return
        with tree.child_dir(directory, name) as child:
            for grandchild in os.listdir(child.fd):
                self._remove_lower(child, grandchild)

    def _mark_written(self, path: tuple[str, ...]) -> None:
        self._written.add(path)
        for end in range(len(path)):
            self._holding_written.add(path[:end])


def _split_name(name: str, what: str) -> list[str]:
    """The components of an archive path; absolute ones are taken relative to the root."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise tree.EntryRefused(f"{what} has a '..' component")
    return parts
