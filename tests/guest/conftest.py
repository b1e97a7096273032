"""Fixtures of the guest tests: the ordinary user setup.sh made, and a directory it owns."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import User


@pytest.fixture(scope="session")
def user() -> User:
    name = os.environ.get("VMLAUNCH_TEST_USER")
    if not name:
        pytest.skip("guest tests run through setup.sh test (VMLAUNCH_TEST_USER unset)")
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


@pytest.fixture
def user_dir(user: User) -> Iterator[Path]:
    """A directory the test user owns, outside pytest's root-only temporary tree."""
    directory = Path(tempfile.mkdtemp(prefix="vmlaunch-test-", dir="/tmp"))
    os.chown(directory, user.uid, user.gid)
    yield directory
    shutil.rmtree(directory)
