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


def _user_from(variable: str) -> User:
    name = os.environ.get(variable)
    if not name:
        pytest.skip(f"guest tests run through setup.sh test ({variable} unset)")
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


@pytest.fixture(scope="session")
def user() -> User:
    """The ordinary user, in no privileged group, who runs the images."""
    return _user_from("VMLAUNCH_TEST_USER")


@pytest.fixture(scope="session")
def other_user() -> User:
    """A second ordinary user, who must not see or touch the first one's runs."""
    return _user_from("VMLAUNCH_TEST_OTHER_USER")


@pytest.fixture
def user_dir(user: User) -> Iterator[Path]:
    """A directory the test user owns, outside pytest's root-only temporary tree."""
    directory = Path(tempfile.mkdtemp(prefix="vmlaunch-test-", dir="/tmp"))
    os.chown(directory, user.uid, user.gid)
    yield directory
    shutil.rmtree(directory)
