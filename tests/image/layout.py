"""Small OCI image layouts for tests, made with tarfile, hashlib and json only."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
MTIME = 1_600_000_000

Descriptor = dict[str, Any]
Member = tuple[tarfile.TarInfo, bytes | None]


def file(name: str, data: bytes = b"", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, MTIME
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    return _special(name, tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return _special(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return _special(name, tarfile.LNKTYPE, linkname=target)


def whiteout(name: str) -> Member:
    head, _, base = name.rpartition("/")
    return file(f"{head}/.wh.{base}" if head else f".wh.{base}", mode=0o600)


def opaque(directory_name: str) -> Member:
    return file(f"{directory_name}/.wh..wh..opq", mode=0o600)


def device(name: str) -> Member:
    info, _ = _special(name, tarfile.CHRTYPE, mode=0o666)
    info.devmajor, info.devminor = 1, 3
    return info, None


def fifo(name: str) -> Member:
    return _special(name, tarfile.FIFOTYPE)


def _special(name: str, kind: bytes, linkname: str = "", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, linkname, mode, MTIME
    return info, None


def tar(*members: Member) -> bytes:
    """An uncompressed tar stream of members, in the order given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Layout:
    """An OCI image layout under construction in a directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.manifests: list[Descriptor] = []
        self.write_index()

    def blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = digest_of(data)
        self.blob_path(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def image(
        self,
        layers: Sequence[bytes],
        *,
        compression: str = "gzip",
        config: dict[str, Any] | None = None,
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> Descriptor:
        """Store a manifest for these uncompressed tar layers; return its descriptor."""
        layer_descriptors = [
            self.blob(compress(layer, compression), LAYER_TYPES[compression]) for layer in layers
        ]
        config_json = {
            "architecture": platform[1],
            "os": platform[0],
            "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
        }
        config_descriptor = self.blob(json.dumps(config_json).encode(), OCI_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": layer_descriptors,
        }
        descriptor = self.blob(json.dumps(manifest).encode(), OCI_MANIFEST)
        descriptor["platform"] = {"os": platform[0], "architecture": platform[1]}
        return descriptor

    def index(self, manifests: Sequence[Descriptor]) -> Descriptor:
        """Store an image index blob over manifests; return its descriptor."""
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(manifests)}
        return self.blob(json.dumps(index).encode(), OCI_INDEX)

    def tag(self, descriptor: Descriptor, name: str | None = "latest") -> None:
        """List descriptor in index.json, under tag name (untagged if None)."""
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        if name is not None:
            entry["annotations"] = {"org.opencontainers.image.ref.name": name}
        self.manifests.append(entry)
        self.write_index()

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.manifests}
        (self.path / "index.json").write_text(json.dumps(index))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (not root itself) with its type, mode and content or target."""
    tree: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            tree[str(path.relative_to(root))] = describe(path)
    return tree


def describe(path: Path) -> str:
    found = path.lstat()
    mode = stat.S_IMODE(found.st_mode)
    if stat.S_ISLNK(found.st_mode):
        return f"link -> {os.readlink(path)}"
    if stat.S_ISDIR(found.st_mode):
        return f"dir {mode:o}"
    if stat.S_ISREG(found.st_mode):
        return f"file {mode:o} {path.read_bytes().decode(errors='replace')}"
    return f"other {found.st_mode:o}"
