"""Guest tests' helpers: the real CLI run as an ordinary user, against setup.sh's broker.

They boot real guests (TCG here: setup.sh writes `accel: tcg` into the test user's config when
KVM is unusable) and check what a user sees and what the host keeps afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VMLAUNCH = Path(sys.executable).parent / "vmlaunch"
IMAGE = "oci:" + str(REPO / "images" / "bullseye-mpich") + ":latest"
RUNS_DIR = Path("/var/lib/vmlaunch/runs")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    def argv(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.name, "--", str(VMLAUNCH), *args]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )


def leftovers() -> list[str]:
    """Everything a finished run must not leave: domains, run state, virtiofsd processes."""
    found = []
    domains = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found += [f"domain {d}" for d in domains if d.startswith("vmlaunch-")]
    if RUNS_DIR.is_dir():
        found += [f"run state {p}" for p in RUNS_DIR.iterdir()]
    procs = subprocess.run(
        ["pgrep", "-a", "-f", "virtiofsd"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    found += [f"process {p}" for p in procs if "vmlaunch" in p or "/runs/" in p]
    return found


def settled_leftovers(timeout: float = 20.0) -> list[str]:
    """leftovers() once the broker has had time to clean up after a launcher that ended."""
    import time

    deadline = time.monotonic() + timeout
    while (found := leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found
