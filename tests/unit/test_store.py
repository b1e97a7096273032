from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vmlaunch.catalog.store import VerifiedStore, artifact_path
from vmlaunch.errors import CatalogError


def put(store: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = artifact_path(store, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def test_an_intact_artifact_is_returned(tmp_path: Path) -> None:
    digest = put(tmp_path, b"kernel")
    assert VerifiedStore(tmp_path).get(digest, "kernel", "E/p@1") == artifact_path(tmp_path, digest)


def test_a_changed_artifact_is_named_with_both_digests(tmp_path: Path) -> None:
    digest = put(tmp_path, b"kernel")
    artifact_path(tmp_path, digest).write_bytes(b"tampered")
    actual = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(CatalogError) as e:
        VerifiedStore(tmp_path).get(digest, "kernel", "2023-bookworm/bookworm-cloud@1")
    assert f"has sha256:{actual[:12]}" in e.value.message
    assert f"the catalog says sha256:{digest[:12]}" in e.value.message
    assert "2023-bookworm/bookworm-cloud@1" in e.value.message


def test_a_change_after_a_good_check_is_still_caught(tmp_path: Path) -> None:
    digest = put(tmp_path, b"kernel")
    store = VerifiedStore(tmp_path)
    store.get(digest, "kernel", "p")
    artifact_path(tmp_path, digest).write_bytes(b"tampered, and longer")
    with pytest.raises(CatalogError, match="has sha256"):
        store.get(digest, "kernel", "p")


def test_a_missing_artifact_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as e:
        VerifiedStore(tmp_path).get("ab" * 32, "guest image", "p")
    assert "is not in the store" in e.value.message
    assert e.value.hint is not None and "guest-images/build" in e.value.hint
