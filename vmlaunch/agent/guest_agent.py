#!/usr/bin/python3 -IS
"""vmlaunch's agent inside the guest: runs the container as the run's user with rootless crun.

Installed in guest images as /usr/lib/vmlaunch/vmlaunch-agent and started by sshd as
`vmlaunch-agent PROTOCOL VERB`. It reads one request from standard input (the line
`VMLAUNCH-REQUEST LENGTH`, then LENGTH bytes of JSON); the rest of standard input belongs to the
container. Standard library only and Python 3.9-compatible: it must run in guest images of
every epoch. User values arrive as JSON and reach crun as argv and as the runtime spec, never
through a shell.
"""

from __future__ import annotations

import json
import os
import stat
import sys

# Importing typing costs a tenth of a second in a TCG guest: its names are for the checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Request = dict[str, Any]

PROTOCOLS = (1,)
ROOTFS = "/run/vmlaunch/rootfs"
BINDS = "/run/vmlaunch/binds"
SEED_BINDS = "/run/vmlaunch/seed/binds"
CRUN = "/usr/bin/crun"
EXIT_FAILURE = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
MAX_REQUEST = 1 << 20
SYMLINK_HOPS = 40


class AgentError(Exception):
    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        Exception.__init__(self, message)
        self.status = status


def read_request() -> Request:
    """Read the request header byte by byte, so no byte of the container's stdin is consumed."""
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte or len(line) > 64:
            raise AgentError("no request on standard input")
        line += byte
    word, _, length = line.decode().strip().partition(" ")
    if word != "VMLAUNCH-REQUEST" or not length.isdigit() or int(length) > MAX_REQUEST:
        raise AgentError(f"malformed request header {line[:64]!r}")
    body = b""
    while len(body) < int(length):
        chunk = os.read(0, int(length) - len(body))
        if not chunk:
            raise AgentError("request ended early")
        body += chunk
    request: Request = json.loads(body.decode())
    return request


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _in_guest(parts: list[str], mounts: dict[str, str]) -> str:
    """The guest path of container path parts: below the longest mount that holds it."""
    for n in range(len(parts), -1, -1):
        prefix = "/" + "/".join(parts[:n])
        if prefix in mounts:
            return os.path.join(mounts[prefix], *parts[n:])
    raise AgentError("no mount holds /" + "/".join(parts))


def resolve(path: str, mounts: dict[str, str], create: bool = False) -> str | None:
    """Resolve a container path as the container's kernel would, in the guest's tree.

    mounts maps container paths to guest directories ("/" to the container root, each bind's
    destination to its share); symlinks resolve against the container's root and cross into
    binds, never out of the container. Returns the guest path of the last component, or None
    when a component does not exist; with create, missing components become directories
    (mount points for binds).
    """
    parts = _components(path)
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = _in_guest([*resolved, part], mounts)
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(candidate, 0o755)
            mode = os.lstat(candidate).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            hops += 1
            if hops > SYMLINK_HOPS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = _components(target) + parts
            continue
        resolved.append(part)
    return _in_guest(resolved, mounts)


def container_mounts(binds: list[Request]) -> dict[str, str]:
    mounts = {"/": ROOTFS}
    for bind in binds:
        destination = "/" + "/".join(_components(bind["destination"]))
        mounts[destination] = os.path.join(BINDS, str(bind["index"]))
    return mounts


def find_command(argv0: str, env: list[str], cwd: str, binds: list[Request]) -> None:
    """Apply the shell's rules for 127 (not found) and 126 (cannot run) before crun starts."""
    if "/" in argv0:
        candidates = [argv0 if argv0.startswith("/") else cwd + "/" + argv0]
    else:
        path = dict(e.split("=", 1) for e in env if "=" in e).get("PATH", "/usr/bin:/bin")
        # An empty entry is the working directory, as in every shell.
        candidates = [(d or cwd) + "/" + argv0 for d in path.split(":")]
    mounts = container_mounts(binds)
    for candidate in candidates:
        found = resolve(candidate, mounts)
        if found is None or not os.path.exists(found):
            continue
        if os.path.isdir(found) or not os.access(found, os.X_OK):
            raise AgentError(f"{argv0}: permission denied or not a program", EXIT_CANNOT_RUN)
        return
    raise AgentError(f"{argv0}: command not found", EXIT_NOT_FOUND)


def runtime_spec(request: Request) -> Request:
    uid, gid = os.getuid(), os.getgid()
    groups = sorted(g for g in set(os.getgroups()) if g != gid)
    mounts = [
        # No PID namespace: the command is no namespace init, so it gets signals as it would
        # on a login node; /proc is therefore the guest's, bound rather than mounted anew.
        {
            "destination": "/proc",
            "type": "none",
            "source": "/proc",
            "options": ["rbind", "nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "none",
            "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        },
    ]
    for bind in request.get("binds", []):
        mounts.append(
            {
                "destination": bind["destination"],
                "type": "none",
                "source": os.path.join(BINDS, str(bind["index"])),
                "options": ["rbind", "nosuid", "nodev", "ro" if bind["readonly"] else "rw"],
            }
        )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": bool(request.get("tty")),
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": request["args"],
            "env": request["env"],
            "cwd": request.get("cwd") or "/",
            "noNewPrivileges": True,
            "capabilities": {"bounding": [], "effective": [], "permitted": [], "ambient": []},
        },
        "root": {"path": ROOTFS, "readonly": False},
        "hostname": "vmlaunch",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("ipc", "uts", "mount", "user")],
            "uidMappings": [{"containerID": uid, "hostID": uid, "size": 1}],
            "gidMappings": [{"containerID": g, "hostID": g, "size": 1} for g in [gid, *groups]],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
        },
    }


def state_root() -> str:
    return f"/run/user/{os.getuid()}/crun"


def container_id(request: Request) -> str:
    run_id = str(request.get("id", ""))
    if not run_id.isalnum():
        raise AgentError(f"malformed run id {run_id!r}")
    return "vmlaunch-" + run_id


def verb_run(request: Request) -> None:
    args = request.get("args") or []
    if not args:
        raise AgentError("no command given and the image has no Entrypoint or Cmd")
    find_command(args[0], request["env"], request.get("cwd") or "/", request.get("binds", []))
    cid = container_id(request)
    bundle = os.path.join(f"/run/user/{os.getuid()}/bundles", cid)
    os.makedirs(bundle, mode=0o700, exist_ok=True)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(runtime_spec(request), f)
    argv = [
        CRUN,
        "--cgroup-manager=disabled",
        "--root",
        state_root(),
        "run",
        "--no-new-keyring",
        "--bundle",
        bundle,
        cid,
    ]
    os.execv(CRUN, argv)


def verb_kill(request: Request) -> None:
    signal = str(request.get("signal", "TERM"))
    if not signal.isalnum():
        raise AgentError(f"malformed signal {signal!r}")
    cid = container_id(request)
    # The container's main process only, as a terminal's Ctrl-C reaches the foreground job:
    # without a cgroup (the guest runs none) crun cannot enumerate "all" processes anyway.
    os.execv(CRUN, [CRUN, "--root", state_root(), "kill", cid, signal])


def verb_prepare(_request: Request) -> None:
    """As the guest's root, before any run: make the binds' mount points in the container root.

    The runtime runs as the user and cannot create directories in a root-owned image.
    """
    if os.getuid() != 0:
        raise AgentError("prepare is the guest's root's step")
    with open(SEED_BINDS) as binds:
        for line in binds:
            fields = line.rstrip("\n").split(" ", 3)
            if len(fields) != 4 or not fields[3].startswith("/"):
                raise AgentError(f"malformed bind line {line!r} in the seed")
            target = resolve(fields[3], {"/": ROOTFS}, create=True)
            if target is None or not os.path.isdir(target):
                raise AgentError(f"bind destination {fields[3]} is not a directory in the image")


VERBS = {"run": verb_run, "kill": verb_kill, "prepare": verb_prepare}
NO_REQUEST = ("prepare",)


def main(argv: list[str]) -> int:
    try:
        if len(argv) != 3 or not argv[1].isdigit() or argv[2] not in VERBS:
            raise AgentError(f"usage: vmlaunch-agent PROTOCOL {{{','.join(VERBS)}}}")
        if int(argv[1]) not in PROTOCOLS:
            spoken = ", ".join(map(str, PROTOCOLS))
            raise AgentError(f"protocol {argv[1]} is not spoken here (this agent speaks {spoken})")
        VERBS[argv[2]]({} if argv[2] in NO_REQUEST else read_request())
    except AgentError as e:
        sys.stderr.write(f"vmlaunch-agent: {e}\n")
        return e.status
    except (OSError, ValueError, KeyError) as e:
        sys.stderr.write(f"vmlaunch-agent: {e}\n")
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
