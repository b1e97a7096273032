"""The one way vmlaunch runs host commands: logged at debug, failures carry what ran."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmlaunch.errors import VmlaunchError

log = logging.getLogger(__name__)


class CommandError(VmlaunchError):
    """A command exited non-zero; carries the command, its exit code and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output on stderr"
        super().__init__(f"`{shlex.join(self.argv)}` failed with exit code {returncode}: {last}")


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv to completion, capturing output; raise CommandError when it fails."""
    args = [str(a) for a in argv]
    log.debug("running %s", shlex.join(args))
    try:
        result = subprocess.run(
            args, input=input, env=env, cwd=cwd, capture_output=True, check=False
        )
    except FileNotFoundError as e:
        raise VmlaunchError(
            f"command not found: {args[0]}", "install it (see README.md, set-up)"
        ) from e
    if result.returncode != 0:
        raise CommandError(args, result.returncode, result.stderr.decode(errors="replace"))
    return result
