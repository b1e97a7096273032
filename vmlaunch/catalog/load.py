"""Read the catalog directory: one YAML file per epoch, each pairing with its revisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vmlaunch.catalog.model import Catalog, Epoch, GuestImage, Initramfs, Kernel, Pairing, Status
from vmlaunch.errors import CatalogError

SCHEMA = 1


def load_catalog(directory: Path) -> Catalog:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CatalogError(
            f"no catalog files (*.yaml) in {directory}",
            "build a pairing with guest-images/build or set catalog_dir",
        )
    return Catalog(tuple(load_epoch(f) for f in files))


def load_epoch(path: Path) -> Epoch:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CatalogError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CatalogError(f"{path}: expected a mapping with 'schema: {SCHEMA}'")
    name = _field(data, "epoch", str, str(path))
    entries = _field(data, "pairings", list, str(path))
    pairings = tuple(_pairing(name, p, str(path)) for p in entries)
    return Epoch(
        name, str(data.get("suite", "")), str(data.get("description", "")), str(path), pairings
    )


def _pairing(epoch: str, data: Any, where: str) -> Pairing:
    if not isinstance(data, dict):
        raise CatalogError(f"{where}: each pairing must be a mapping")
    where = f"{where} ({data.get('name', '?')}@{data.get('revision', '?')})"
    kernel = _field(data, "kernel", dict, where)
    initramfs = _field(data, "initramfs", dict, where)
    guest = _field(data, "guest_image", dict, where)
    status = _field(data, "status", str, where)
    if status not in set(Status):
        raise CatalogError(f"{where}: unknown status {status!r}", f"use one of {', '.join(Status)}")
    return Pairing(
        epoch=epoch,
        name=_field(data, "name", str, where),
        revision=_field(data, "revision", int, where),
        status=Status(status),
        added=str(data.get("added", "")),
        kernel=Kernel(
            **{
                k: str(_field(kernel, k, str, where))
                for k in ("package", "version", "release", "flavour", "sha256", "cmdline")
            }
        ),
        initramfs=Initramfs(
            _field(initramfs, "sha256", str, where), tuple(initramfs.get("modules") or ())
        ),
        guest_image=GuestImage(
            _field(guest, "sha256", str, where),
            str(guest.get("format")),
            tuple(sorted((guest.get("packages") or {}).items())),
        ),
        glibc=str(_field(data, "glibc", str, where)),
        agent_protocol=_field(data, "agent_protocol", int, where),
        cpu_baseline=str(data.get("cpu_baseline", "x86_64")),
        source=where,
    )


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise CatalogError(f"{where}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind):
        raise CatalogError(f"{where}: field {key!r} must be {kind.__name__}, not {value!r}")
    return value
