"""Content digests of OCI blobs: parsing them, and checking a blob against its digest."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

from vmlaunch.errors import ImageError

# The algorithms the OCI image spec registers, with the length of their hex encoding. A strict
# pattern also keeps a digest from ever naming a path outside blobs/.
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^(?P<algorithm>[a-z0-9]+):(?P<hex>[a-f0-9]+)$")


def parse_digest(text: str) -> tuple[str, str]:
    """Split "sha256:HEX" into its algorithm and hex; ImageError for anything else."""
    match = _DIGEST.match(text)
    if not match or len(match["hex"]) != _ALGORITHMS.get(match["algorithm"], -1):
        raise ImageError(
            f"not a valid blob digest: {text!r}",
            "expected sha256:<64 hex digits> (or sha512:<128 hex digits>)",
        )
    return match["algorithm"], match["hex"]


def blob_path(layout: Path, digest: str) -> Path:
    """Where an OCI layout keeps the blob with this digest."""
    algorithm, hex_digest = parse_digest(digest)
    return layout / "blobs" / algorithm / hex_digest


class DigestingReader(io.RawIOBase):
    """Reads a blob through, hashing and counting what passes, to check it once read to the end.

    Wrap it in io.BufferedReader to hand it to gzip, zstandard or tarfile.
    """

    def __init__(self, stream: io.BufferedReader, digest: str) -> None:
        super().__init__()
        algorithm, _ = parse_digest(digest)
        self.digest = digest
        self.size = 0
        self._stream = stream
        self._hash = hashlib.new(algorithm)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        count = self._stream.readinto(view)
        self._hash.update(view[:count])
        self.size += count
        return count

    def drain(self) -> None:
        """Read what is left, so that the digest covers the whole blob."""
        chunk = bytearray(1 << 20)
        while self.readinto(chunk):
            pass

    def computed(self) -> str:
        """The digest of what was read so far, in the same "algorithm:hex" form."""
        return f"{self._hash.name}:{self._hash.hexdigest()}"

    def matches(self) -> bool:
        return self.computed() == self.digest
