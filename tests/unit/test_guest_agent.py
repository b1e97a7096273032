"""The guest agent's pure parts, against small root trees laid out like a container's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vmlaunch.agent import guest_agent as agent


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    tool = root / "usr/bin/tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    plain = root / "usr/bin/plain"
    plain.write_text("data")
    plain.chmod(0o644)
    (root / "usr/bin/abs").symlink_to("/usr/bin/tool")
    (root / "usr/bin/escape").symlink_to("../../../../../../etc/hostname")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("container\n")
    monkeypatch.setattr(agent, "ROOTFS", str(root))
    monkeypatch.setattr(agent, "BINDS", str(tmp_path / "binds"))
    return root


def test_absolute_links_resolve_inside_the_root(root: Path) -> None:
    assert agent.resolve("/bin/abs", {"/": str(root)}) == str(root / "usr/bin/tool")


def test_dotdot_cannot_leave_the_root(root: Path) -> None:
    assert agent.resolve("/usr/bin/escape", {"/": str(root)}) == str(root / "etc/hostname")


def test_links_cross_into_and_out_of_binds(root: Path, tmp_path: Path) -> None:
    share = tmp_path / "binds/0"
    (share / "bin").mkdir(parents=True)
    (share / "bin/solver").write_text("#!/bin/sh\n")
    (share / "bin/solver").chmod(0o755)
    (share / "bin/sh").symlink_to("/usr/bin/tool")
    (root / "opt").mkdir()
    (root / "opt/bin").symlink_to("/data/bin")
    binds = [{"index": 0, "destination": "/data", "readonly": False}]
    agent.find_command("solver", ["PATH=/opt/bin"], "/", binds)
    mounts = agent.container_mounts(binds)
    assert agent.resolve("/data/bin/sh", mounts) == str(root / "usr/bin/tool")


def test_dotdot_is_resolved_after_links_not_before(root: Path) -> None:
    (root / "a/b").mkdir(parents=True)
    (root / "link").symlink_to("/a/b")
    (root / "a/tool2").write_text("#!/bin/sh\n")
    (root / "a/tool2").chmod(0o755)
    agent.find_command("/link/../tool2", [], "/", [])


def test_an_empty_path_entry_is_the_working_directory(root: Path) -> None:
    agent.find_command("tool", ["PATH=:/nowhere"], "/usr/bin", [])
    with pytest.raises(agent.AgentError):
        agent.find_command("tool", ["PATH=:/nowhere"], "/", [])


def test_found_command_passes(root: Path) -> None:
    agent.find_command("tool", ["PATH=/bin"], "/", [])


def test_missing_command_is_127(root: Path) -> None:
    with pytest.raises(agent.AgentError) as e:
        agent.find_command("nope", ["PATH=/usr/bin:/bin"], "/", [])
    assert e.value.status == 127


def test_a_file_that_is_no_program_is_126(root: Path) -> None:
    with pytest.raises(agent.AgentError) as e:
        agent.find_command("/usr/bin/plain", [], "/", [])
    assert e.value.status == 126


def test_commands_inside_binds_are_found(root: Path, tmp_path: Path) -> None:
    (tmp_path / "binds/0").mkdir(parents=True)
    script = tmp_path / "binds/0/run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    binds = [{"index": 0, "destination": "/data", "readonly": True}]
    agent.find_command("./run.sh", [], "/data", binds)
    agent.find_command("/data/run.sh", [], "/", binds)


def test_spec_maps_only_the_users_own_ids() -> None:
    spec = agent.runtime_spec(
        {
            "args": ["true"],
            "env": ["A=1"],
            "cwd": "/w",
            "binds": [{"index": 0, "destination": "/d", "readonly": True}],
        }
    )
    uid, gid = os.getuid(), os.getgid()
    assert spec["linux"]["uidMappings"] == [{"containerID": uid, "hostID": uid, "size": 1}]
    assert spec["linux"]["gidMappings"][0] == {"containerID": gid, "hostID": gid, "size": 1}
    assert spec["process"]["user"]["uid"] == uid
    assert spec["process"]["noNewPrivileges"] is True
    assert spec["process"]["capabilities"]["bounding"] == []
    bind = next(m for m in spec["mounts"] if m["destination"] == "/d")
    assert bind["source"].endswith("/binds/0") and "ro" in bind["options"]


def test_request_framing_leaves_the_rest_of_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    body = json.dumps({"id": "abc", "args": ["cat"]}).encode()
    os.write(write_end, b"VMLAUNCH-REQUEST %d\n" % len(body) + body + b"container input")
    os.close(write_end)
    saved = os.dup(0)
    os.dup2(read_end, 0)
    try:
        request = agent.read_request()
        rest = os.read(0, 100)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(read_end)
    assert request == {"id": "abc", "args": ["cat"]}
    assert rest == b"container input"


@pytest.mark.parametrize("argv", [["a"], ["a", "x", "run"], ["a", "1", "explode"]])
def test_bad_invocations_fail_with_125(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.main(argv) == 125
    assert capsys.readouterr().err.startswith("vmlaunch-agent: ")


def test_an_unknown_protocol_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent.main(["a", "99", "run"]) == 125
    assert "protocol 99 is not spoken here" in capsys.readouterr().err


@pytest.mark.parametrize("run_id", ["--all", "", "a/b", "x y"])
def test_run_ids_are_plain_words(run_id: str) -> None:
    with pytest.raises(agent.AgentError):
        agent.container_id({"id": run_id})


def test_prepare_makes_mount_points_inside_the_root_only(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to("/usr")
    (root / "up").symlink_to("../../outside")
    binds = tmp_path / "binds-seed"
    binds.write_text("0 vmlbind0 rw /data/deep\n1 vmlbind1 ro /link/new\n2 vmlbind2 rw /up/x\n")
    monkeypatch.setattr(agent, "SEED_BINDS", str(binds))
    monkeypatch.setattr(agent.os, "getuid", lambda: 0)
    agent.verb_prepare({})
    assert (root / "data/deep").is_dir()
    assert (root / "usr/new").is_dir()
    assert (root / "outside/x").is_dir()
    assert list(outside.iterdir()) == []


def test_prepare_refuses_a_destination_that_is_a_file(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binds = tmp_path / "binds-seed"
    binds.write_text("0 vmlbind0 rw /usr/bin/tool\n")
    monkeypatch.setattr(agent, "SEED_BINDS", str(binds))
    monkeypatch.setattr(agent.os, "getuid", lambda: 0)
    with pytest.raises(agent.AgentError, match="not a directory"):
        agent.verb_prepare({})
