"""The content-addressed artifact store: STORE/sha256/HEX, each file checked against its name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from vmlaunch.errors import CatalogError

CHUNK = 1 << 20


def artifact_path(store: Path, sha256: str) -> Path:
    return store / "sha256" / sha256


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class VerifiedStore:
    """Checks each artifact once per (size, mtime, inode) and remembers the answer.

    The store is root-owned; rehashing a guest image at every run would cost more than the
    guest's boot, so a file is hashed again only when it changed on disk.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checked: dict[str, tuple[int, int, int]] = {}

    def has(self, sha256: str) -> bool:
        return artifact_path(self.root, sha256).is_file()

    def get(self, sha256: str, what: str, owner: str) -> Path:
        path = artifact_path(self.root, sha256)
        try:
            st = os.stat(path)
        except FileNotFoundError as e:
            raise CatalogError(
                f"{what} of {owner} (sha256:{sha256[:12]}) is not in the store {self.root}",
                "build the pairing with guest-images/build",
            ) from e
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._checked.get(sha256) != key:
            actual = hash_file(path)
            if actual != sha256:
                raise CatalogError(
                    f"{what} of {owner} at {path} has sha256:{actual[:12]}, "
                    f"the catalog says sha256:{sha256[:12]}",
                    "the store is damaged: rebuild the pairing or run `vmlaunch catalog verify`",
                )
            self._checked[sha256] = key
        return path
