"""`vmlaunch run` end to end: a real guest booted through the broker runs a real image."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from .support import IMAGE, User, settled_leftovers

pytestmark = pytest.mark.guest

TEN_MIB = 10 * 1024 * 1024


def test_ldd_prints_the_images_own_glibc(user: User) -> None:
    result = user.run("run", IMAGE, "--", "ldd", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith(" 2.31"), result.stdout
    assert settled_leftovers() == []


def test_no_command_runs_the_images_cmd(user: User) -> None:
    result = user.run("run", IMAGE)
    assert result.returncode == 0, result.stderr
    assert "2.31" in result.stdout.splitlines()[0]


def test_exit_status_is_the_commands(user: User) -> None:
    result = user.run("run", IMAGE, "--", "sh", "-c", "exit 7")
    assert result.returncode == 7, result.stderr


def test_missing_command_is_127(user: User) -> None:
    result = user.run("run", IMAGE, "--", "no-such-command", "arg")
    assert result.returncode == 127
    assert "no-such-command: command not found" in result.stderr


def test_stdout_and_stderr_stay_apart(user: User) -> None:
    result = user.run("run", IMAGE, "--", "sh", "-c", "echo to-out; echo to-err >&2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "to-out\n"
    assert result.stderr == "to-err\n"


def test_ten_mib_on_both_streams_at_once_arrive_whole(user: User) -> None:
    script = f"yes a | head -c {TEN_MIB} & yes b | head -c {TEN_MIB} >&2; wait"
    result = subprocess.run(
        user.argv("run", IMAGE, "--", "sh", "-c", script),
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout) == TEN_MIB and set(result.stdout) == {ord("a"), ord("\n")}
    assert len(result.stderr) == TEN_MIB and set(result.stderr) == {ord("b"), ord("\n")}


def test_environment_and_workdir_reach_the_command(user: User, user_dir: Path) -> None:
    env_file = user_dir / "env"
    env_file.write_text("# comment\nFROM_FILE=file-value\n")
    env_file.chmod(0o644)
    result = user.run(
        "run",
        "-e",
        "GREETING=hello world",
        "--env-file",
        str(env_file),
        "--workdir",
        "/usr/share",
        IMAGE,
        "--",
        "sh",
        "-c",
        'echo "$GREETING|$FROM_FILE|$(pwd)"',
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello world|file-value|/usr/share\n"


def test_files_written_through_a_bind_belong_to_the_user(user: User, user_dir: Path) -> None:
    result = user.run(
        "run",
        "--bind",
        f"{user_dir}:/data",
        "--workdir",
        "/data",
        IMAGE,
        "--",
        "sh",
        "-c",
        "echo written > out.txt",
    )
    assert result.returncode == 0, result.stderr
    written = user_dir / "out.txt"
    assert written.read_text() == "written\n"
    assert (written.stat().st_uid, written.stat().st_gid) == (user.uid, user.gid)


def test_a_read_only_bind_refuses_writes(user: User, user_dir: Path) -> None:
    (user_dir / "existing").write_text("keep\n")
    result = user.run(
        "run",
        "--bind",
        f"{user_dir}:/data:ro",
        IMAGE,
        "--",
        "sh",
        "-c",
        "cat /data/existing; echo x > /data/new",
    )
    assert result.returncode != 0
    assert result.stdout == "keep\n"
    assert "Read-only file system" in result.stderr
    assert not (user_dir / "new").exists()


def test_the_container_runs_as_the_user_with_a_non_root_outer_uid(user: User) -> None:
    result = user.run("run", IMAGE, "--", "sh", "-c", "id -u; id -g; cat /proc/self/uid_map")
    assert result.returncode == 0, result.stderr
    uid, gid, uid_map = result.stdout.splitlines()
    assert (int(uid), int(gid)) == (user.uid, user.gid)
    inner, outer, count = (int(f) for f in uid_map.split())
    assert (inner, outer, count) == (user.uid, user.uid, 1)
    assert outer != 0


def test_a_guest_not_ready_in_time_is_destroyed_and_its_console_shown(user: User) -> None:
    result = user.run("run", "--boot-timeout", "1", IMAGE, "--", "true")
    assert result.returncode == 125
    assert "not ready within 1 s" in result.stderr
    assert "last lines of the guest's console" in result.stderr
    assert "Traceback" not in result.stderr
    kept_at = re.search(r"the whole console is in (\S+)\)", result.stderr)
    assert kept_at is not None, result.stderr
    kept = Path(kept_at.group(1))
    assert kept.parent.parent == user.home / ".cache" / "vmlaunch"
    assert (kept.stat().st_uid, kept.stat().st_mode & 0o777) == (user.uid, 0o600)
    assert settled_leftovers() == []


def _launcher_pid(user: User) -> int:
    """The vmlaunch process itself (runuser, its parent, is the test's child)."""
    found = subprocess.run(
        ["pgrep", "-u", str(user.uid), "-f", "bin/vmlaunch run"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(found) == 1, found
    return int(found[0])


def _start_and_wait_running(user: User, *command: str) -> subprocess.Popen[bytes]:
    """Start a run and return once its container prints 'started'."""
    proc = subprocess.Popen(
        user.argv("run", IMAGE, "--", *command), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"started\n", (line, proc.stderr.read() if proc.stderr else b"")
    return proc


def test_sigint_mid_run_reaches_the_command_and_leaves_nothing(user: User) -> None:
    proc = _start_and_wait_running(
        user,
        "sh",
        "-c",
        "trap 'echo got-int; exit 42' INT; echo started; while :; do sleep 0.2; done",
    )
    os.kill(_launcher_pid(user), signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert b"got-int" in out, err
    assert proc.returncode == 42
    assert settled_leftovers() == []


def test_kill_9_of_the_launcher_then_gc_leaves_nothing(user: User) -> None:
    proc = _start_and_wait_running(user, "sh", "-c", "echo started; sleep 600")
    os.kill(_launcher_pid(user), signal.SIGKILL)
    proc.wait(timeout=60)
    gc = subprocess.run([user.argv()[-1], "gc"], capture_output=True, text=True, check=False)
    assert gc.returncode == 0, gc.stderr
    assert settled_leftovers() == []


def test_a_command_killed_by_a_signal_ends_with_128_plus_n(user: User) -> None:
    result = user.run("run", IMAGE, "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL, result.stderr


def test_a_closed_pipe_ends_the_run_as_sigpipe_ends_a_command(user: User) -> None:
    script = f"set -o pipefail; {' '.join(user.argv('run', IMAGE, '--', 'yes'))} | head -c 4"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.stdout == "y\ny\n"
    assert result.returncode == 128 + signal.SIGPIPE, result.stderr
    assert settled_leftovers() == []


def test_a_bind_source_with_option_characters_is_served_as_itself(
    user: User, user_dir: Path
) -> None:
    odd = user_dir / "a,source=" / "x"
    odd.mkdir(parents=True)
    for path in (odd.parent, odd):
        os.chown(path, user.uid, user.gid)
    result = user.run("run", "--bind", f"{odd}:/data", IMAGE, "--", "sh", "-c",
                      "echo mine > /data/f; ls /data")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "f\n"
    assert (odd / "f").read_text() == "mine\n"


def test_limits_are_refused_with_the_allowed_range(user: User) -> None:
    result = user.run("run", "--memory", "9999999", IMAGE, "--", "true")
    assert result.returncode == 125
    assert "--memory 9999999 MiB is outside 128..16384" in result.stderr
    assert "hint: ask for less memory" in result.stderr
    assert settled_leftovers() == []
