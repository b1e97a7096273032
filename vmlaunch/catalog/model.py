"""Epochs and pairings as frozen dataclasses: the catalog as the core sees it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    ACTIVE = "active"
    DEPRECATED = "deprecated"
    ARCHIVAL = "archival"
    RETIRED = "retired"


@dataclass(frozen=True)
class Kernel:
    package: str
    version: str
    release: str
    flavour: str
    sha256: str
    cmdline: str


@dataclass(frozen=True)
class Initramfs:
    sha256: str
    modules: tuple[str, ...]


@dataclass(frozen=True)
class GuestImage:
    sha256: str
    format: str
    packages: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Pairing:
    epoch: str
    name: str
    revision: int
    status: Status
    added: str
    kernel: Kernel
    initramfs: Initramfs
    guest_image: GuestImage
    glibc: str
    agent_protocol: int
    cpu_baseline: str
    source: str
    """Where the pairing was read: FILE:LINE, for messages."""

    @property
    def id(self) -> str:
        return f"{self.epoch}/{self.name}@{self.revision}"

    def artifacts(self) -> dict[str, str]:
        return {
            "kernel": self.kernel.sha256,
            "initramfs": self.initramfs.sha256,
            "guest image": self.guest_image.sha256,
        }


@dataclass(frozen=True)
class Epoch:
    name: str
    suite: str
    description: str
    path: str
    pairings: tuple[Pairing, ...]


@dataclass(frozen=True)
class Catalog:
    epochs: tuple[Epoch, ...]

    def pairings(self) -> list[Pairing]:
        return [p for e in self.epochs for p in e.pairings]
