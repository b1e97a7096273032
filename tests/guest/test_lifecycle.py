"""ps, stop and logs: a user sees and controls their own runs, and no one else's."""

from __future__ import annotations

import json
import subprocess

import pytest

from .support import IMAGE, User, settled_leftovers

pytestmark = pytest.mark.guest


def _runs(user: User) -> list[dict[str, object]]:
    result = user.run("ps", "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_runs_are_private_and_their_owner_can_read_and_stop_them(
    user: User, other_user: User
) -> None:
    proc = subprocess.Popen(user.argv("run", IMAGE, "--", "sh", "-c", "echo started; sleep 600"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.readline() == b"started\n"
        (mine,) = _runs(user)
        run_id = str(mine["run"])
        assert mine["image"] == IMAGE and mine["uid"] == user.uid
        assert _runs(other_user) == []

        for verb in ("logs", "stop"):
            refused = other_user.run(verb, run_id)
            assert refused.returncode == 125
            assert f"no run {run_id} of yours is running" in refused.stderr

        console = user.run("logs", run_id)
        assert console.returncode == 0, console.stderr
        assert "Linux version" in console.stdout

        stopped = user.run("stop", run_id)
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(timeout=120) == 125
        assert "the guest ended before the command reported its exit status" in (
            proc.stderr.read().decode()
        )
    finally:
        proc.kill()
    assert _runs(user) == []
    assert settled_leftovers() == []
