"""Test set-up shared by all tests.

Unit tests may not start processes: an accidental call into the host (virsh, mkfs, ssh) fails
loudly. Tests that need real processes say so with a marker: `guest` (boots guests through the
broker), `build` (reads the artifacts setup.sh built) or `subprocess` (runs a local tool).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

ALLOWING_MARKERS = ("guest", "build", "subprocess")


@pytest.fixture(autouse=True)
def _no_stray_processes(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    if any(request.node.get_closest_marker(m) for m in ALLOWING_MARKERS):
        yield
        return

    def refuse(self: object, args: object, *a: object, **k: object) -> None:
        raise AssertionError(f"unit test started a process: {args!r}; mark it to allow that")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield
