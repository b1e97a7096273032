from __future__ import annotations

import tarfile
from pathlib import Path

from vmlaunch.broker.seed import GuestUser, SeedBind, write_seed


def test_seed_is_a_sector_padded_tar_with_the_contract_members(tmp_path: Path) -> None:
    path = tmp_path / "seed.img"
    write_seed(
        path,
        GuestUser("alice", 1234, 100, (27, 44)),
        [SeedBind(0, "vmlbind0", False, "/data"), SeedBind(1, "vmlbind1", True, "/in put")],
        "-----BEGIN EC PRIVATE KEY-----\nx\n-----END EC PRIVATE KEY-----\n",
        "ecdsa-sha2-nistp256 AAAA vmlaunch-run",
    )
    assert path.stat().st_size % 512 == 0
    assert path.stat().st_mode & 0o777 == 0o600
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert members["user"] == "alice 1234 100 27,44\n"
    assert members["binds"] == "0 vmlbind0 rw /data\n1 vmlbind1 ro /in put\n"
    assert members["authorized_keys"] == "ecdsa-sha2-nistp256 AAAA vmlaunch-run\n"
    assert members["ssh_host_key"].startswith("-----BEGIN EC PRIVATE KEY-----")


def test_a_user_without_groups_is_written_with_a_dash(tmp_path: Path) -> None:
    path = tmp_path / "seed.img"
    write_seed(path, GuestUser("bob", 1000, 1000, ()), [], "k", "p")
    with tarfile.open(path) as tar:
        user = tar.extractfile("user").read().decode()  # type: ignore[union-attr]
        binds = tar.extractfile("binds").read().decode()  # type: ignore[union-attr]
    assert user == "bob 1000 1000 -\n"
    assert binds == ""
