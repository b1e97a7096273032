"""The per-run seed disk: a plain tar archive the guest's shell can read (CONTRACT.md)."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512


@dataclass(frozen=True)
class GuestUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True)
class SeedBind:
    index: int
    tag: str
    readonly: bool
    destination: str


def write_seed(
    path: Path, user: GuestUser, binds: Sequence[SeedBind], host_key: str, authorized_key: str
) -> None:
    groups = ",".join(str(g) for g in user.groups) or "-"
    members = {
        "user": f"{user.name} {user.uid} {user.gid} {groups}\n",
        "binds": "".join(
            f"{b.index} {b.tag} {'ro' if b.readonly else 'rw'} {b.destination}\n" for b in binds
        ),
        "ssh_host_key": host_key,
        "authorized_keys": authorized_key.strip() + "\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    # A block device has whole sectors: pad so the archive ends on one.
    data += b"\0" * (-len(data) % BLOCK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
