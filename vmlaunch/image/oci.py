"""Reading an image from an OCI image layout: index, manifest, config, layer descriptors.

Every manifest, index and config blob is checked against its digest before it is parsed; layer
blobs are checked while they are unpacked (see unpack.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from vmlaunch.errors import ImageError
from vmlaunch.image.digest import blob_path, parse_digest
from vmlaunch.image.reference import ImageReference

log = logging.getLogger(__name__)
T = TypeVar("T")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
REF_NAME = "org.opencontainers.image.ref.name"

# Manifests and configs are small; a multi-megabyte one is a broken or hostile layout.
_MAX_JSON_BLOB = 4 << 20
# An index may point at an index; real layouts nest once at most.
_MAX_INDEX_DEPTH = 4
_REFETCH = "copy the image into the layout again (skopeo copy SRC oci:DIR:TAG)"


@dataclass(frozen=True)
class ImageConfig:
    """The runtime defaults of an image's config; "" and () mean the image sets none."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


@dataclass(frozen=True)
class Layer:
    """One layer blob of a manifest, in the order it applies (base first)."""

    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Image:
    """An image found in an OCI layout, its manifest and config blobs verified."""

    reference: ImageReference
    manifest_digest: str
    config_digest: str
    config: ImageConfig
    layers: tuple[Layer, ...]
    layout: Path

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.layout, digest)


@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int
    ref_name: str | None
    platform: str | None


def open_image(ref: ImageReference, platform: str = "linux/amd64") -> Image:
    """Find the image ref names in its layout, for platform ("os/architecture[/variant]")."""
    if ref.transport != "oci":
        raise ImageError(f"cannot open {ref}: only oci: layouts are read", "use oci:DIR[:TAG]")
    layout = ref.path
    index = _read_index_json(ref)

    chosen = _select_tagged(ref, _descriptors(ref, index, "index.json"), platform)
    manifest_desc = _follow_indexes(ref, chosen, platform)
    manifest = _read_json_blob(ref, manifest_desc, "manifest")

    config_desc = _descriptor(ref, _require(ref, manifest, "config", dict, "manifest"), "manifest")
    config = _read_json_blob(ref, config_desc, "config")
    _check_platform(ref, config, platform)

    layers = tuple(
        Layer(d.digest, d.media_type, d.size)
        for d in _descriptors(ref, manifest, "manifest", key="layers")
    )
    log.debug("opened %s: manifest %s, %d layers", ref, manifest_desc.digest, len(layers))
    return Image(
        reference=ref,
        manifest_digest=manifest_desc.digest,
        config_digest=config_desc.digest,
        config=_parse_config(ref, config),
        layers=layers,
        layout=layout,
    )


def _read_index_json(ref: ImageReference) -> dict[str, Any]:
    path = ref.path / "index.json"
    if not ref.path.is_dir():
        raise ImageError(
            f"image {ref}: no OCI image layout at {ref.path} (no such directory)",
            "build it (images/build) or copy it there (skopeo copy SRC oci:DIR:TAG)",
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(
            f"image {ref}: {ref.path} is not an OCI image layout (it has no index.json)",
            "give the directory that holds index.json, oci-layout and blobs/",
        ) from None
    return _parse_json(ref, data, "index.json")


def _select_tagged(
    ref: ImageReference, manifests: Sequence[_Descriptor], platform: str
) -> _Descriptor:
    tags = sorted({d.ref_name for d in manifests if d.ref_name})
    listing = f"tags there: {', '.join(tags)}" if tags else "it has no tagged manifests"

    if ref.tag is None:
        if len(manifests) == 1:
            return manifests[0]
        raise ImageError(
            f"image {ref} holds {len(manifests)} manifests and the reference names no tag; "
            f"{listing}",
            f"name one: oci:{ref.path}:TAG",
        )

    tagged = [d for d in manifests if d.ref_name == ref.tag]
    if not tagged:
        raise ImageError(
            f"image {ref}: no tag {ref.tag!r} in {ref.path}; {listing}",
            "use one of the tags there, or build or copy the image under this tag",
        )
    if len(tagged) == 1:
        return tagged[0]
    return _pick_platform(ref, tagged, platform)


def _follow_indexes(ref: ImageReference, desc: _Descriptor, platform: str) -> _Descriptor:
    for _ in range(_MAX_INDEX_DEPTH):
        if desc.media_type in MANIFEST_TYPES:
            return desc
        if desc.media_type not in INDEX_TYPES:
            raise ImageError(
                f"image {ref}: blob {desc.digest} has media type {desc.media_type!r}, "
                "neither an image manifest nor an image index",
                _REFETCH,
            )
        index = _read_json_blob(ref, desc, "image index")
        desc = _pick_platform(ref, _descriptors(ref, index, f"image index {desc.digest}"), platform)
    raise ImageError(f"image {ref}: image indexes nest deeper than {_MAX_INDEX_DEPTH}", _REFETCH)


def _pick_platform(
    ref: ImageReference, candidates: Sequence[_Descriptor], platform: str
) -> _Descriptor:
    for desc in candidates:
        if desc.platform and _platform_matches(desc.platform, platform):
            return desc
    offered = sorted({d.platform or "unspecified" for d in candidates})
    raise ImageError(
        f"image {ref} has no manifest for platform {platform}; it offers {', '.join(offered)}",
        "pick an image built for this platform",
    )


def _platform_matches(offered: str, wanted: str) -> bool:
    # "linux/arm64" matches any variant; "linux/arm64/v8" needs that variant.
    offered_parts, wanted_parts = offered.split("/"), wanted.split("/")
    return offered_parts[: len(wanted_parts)] == wanted_parts


def _check_platform(ref: ImageReference, config: Mapping[str, Any], platform: str) -> None:
    built_for = _platform_text(config)
    if built_for and "/" in built_for and not _platform_matches(built_for, platform):
        raise ImageError(
            f"image {ref} is built for {built_for}, not {platform}",
            "pick an image built for this platform",
        )


def _read_json_blob(ref: ImageReference, desc: _Descriptor, what: str) -> dict[str, Any]:
    path = blob_path(ref.path, desc.digest)
    if desc.size > _MAX_JSON_BLOB:
        raise ImageError(
            f"image {ref}: {what} blob {desc.digest} claims {desc.size} bytes, "
            f"more than the {_MAX_JSON_BLOB} a {what} may have",
            _REFETCH,
        )
    try:
        with path.open("rb") as blob:
            data = blob.read(_MAX_JSON_BLOB + 1)
    except FileNotFoundError:
        raise ImageError(
            f"image {ref}: {what} blob {desc.digest} is missing from {ref.path}", _REFETCH
        ) from None

    _verify(ref, desc, data, what)
    return _parse_json(ref, data, f"{what} blob {desc.digest}")


def _verify(ref: ImageReference, desc: _Descriptor, data: bytes, what: str) -> None:
    algorithm, expected = parse_digest(desc.digest)
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ImageError(
            f"image {ref}: {what} blob {desc.digest} does not match its digest "
            f"(its content hashes to {algorithm}:{actual})",
            f"the layout is corrupt or was modified; {_REFETCH}",
        )
    if len(data) != desc.size:
        raise ImageError(
            f"image {ref}: {what} blob {desc.digest} is {len(data)} bytes, "
            f"its descriptor says {desc.size}",
            _REFETCH,
        )


def _parse_json(ref: ImageReference, data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImageError(f"image {ref}: {what} is not valid JSON: {e}", _REFETCH) from None
    if not isinstance(parsed, dict):
        raise ImageError(f"image {ref}: {what} is not a JSON object", _REFETCH)
    return parsed


def _descriptors(
    ref: ImageReference, obj: Mapping[str, Any], where: str, key: str = "manifests"
) -> list[_Descriptor]:
    items = obj.get(key) or []
    if not isinstance(items, list):
        raise ImageError(f"image {ref}: {key!r} in {where} is not a list", _REFETCH)
    return [_descriptor(ref, item, where) for item in items]


def _descriptor(ref: ImageReference, obj: Any, where: str) -> _Descriptor:
    if not isinstance(obj, dict):
        raise ImageError(f"image {ref}: a descriptor in {where} is not a JSON object", _REFETCH)
    digest = _require(ref, obj, "digest", str, where)
    parse_digest(digest)
    size = _require(ref, obj, "size", int, where)
    annotations = obj.get("annotations") or {}
    ref_name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return _Descriptor(
        media_type=_require(ref, obj, "mediaType", str, where),
        digest=digest,
        size=size,
        ref_name=ref_name if isinstance(ref_name, str) else None,
        platform=_platform_text(obj.get("platform")),
    )


def _platform_text(platform: Any) -> str | None:
    if not isinstance(platform, dict):
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(p for p in parts if isinstance(p, str) and p) or None


def _require(ref: ImageReference, obj: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ImageError(
            f"image {ref}: {where} has no valid {key!r} (expected a {kind.__name__})", _REFETCH
        )
    return value


def _parse_config(ref: ImageReference, config: Mapping[str, Any]) -> ImageConfig:
    runtime = config.get("config") or {}
    where = f"the config of {ref}"
    if not isinstance(runtime, dict):
        raise ImageError(f"{where}: 'config' is not a JSON object", _REFETCH)
    return ImageConfig(
        entrypoint=_strings(runtime.get("Entrypoint"), f"{where}: Entrypoint"),
        cmd=_strings(runtime.get("Cmd"), f"{where}: Cmd"),
        env=tuple(_env_pair(item) for item in _strings(runtime.get("Env"), f"{where}: Env")),
        workdir=_string(runtime.get("WorkingDir"), f"{where}: WorkingDir"),
        user=_string(runtime.get("User"), f"{where}: User"),
        labels=MappingProxyType(_labels(runtime.get("Labels"), f"{where}: Labels")),
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{where} is not a list of strings", _REFETCH)
    return tuple(value)


def _string(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ImageError(f"{where} is not a string", _REFETCH)
    return value


def _labels(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ImageError(f"{where} is not an object of strings", _REFETCH)
    return dict(value)


def _env_pair(item: str) -> tuple[str, str]:
    # "NAME" without "=" is kept with an empty value rather than dropped.
    name, _, value = item.partition("=")
    return name, value
