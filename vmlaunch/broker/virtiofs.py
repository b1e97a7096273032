"""virtiofsd for a user's bind, confined to that user's rights on the host.

libvirt would start virtiofsd as root, and a hostile guest root could then write anywhere in
the shared tree, create root-owned setuid files or device nodes. Instead the broker starts each
virtiofsd itself, in a user namespace where only the invoking user's uid and gids are mapped
(to themselves) and the namespace's root is an otherwise unused host uid of that user's own
(SHADOW_BASE + uid):

- files the guest's user writes belong to that user on the host;
- files the guest's root writes belong to that unused uid: never to root, never to `nobody`
  (whom other users' processes run as), never to another user's shadow uid;
- capabilities inside the namespace reach only inodes the user owns, which they could change
  anyway, and device nodes cannot be created from a user namespace at all;
- the shared directory is the one the caller opened and handed over (never looked up again by
  name), bound onto a fixed mount point in the run's directory inside virtiofsd's own mount
  namespace; a read-only bind is a read-only bind mount there, enforced by the host's kernel.

QEMU reaches virtiofsd through a listening socket the broker creates and hands over (`--fd`),
so that the socket's owner is the broker's choice, not the namespace's.

What is missing: the guest's root can still leave files with the setuid bit owned by the
user's shadow uid; running one gains the user nothing but that uid, which owns nothing else.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import select
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
SHADOW_BASE = 2_000_000_000
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CHILD_WAIT = 10.0
# Loaded before any fork: the child of a threaded process must not dlopen.
_LIBC = ctypes.CDLL(None, use_errno=True)
SETUP = (
    "set -e; mount --make-rprivate /; "
    'mount --bind "/proc/self/fd/$2" "$3"; '
    'if [ "$1" = ro ]; then mount -o remount,bind,ro "$3" "$3"; fi; '
    'exec 4<&-; shift 3; exec "$@"'
)
LISTENER_FD = 3
SOURCE_FD = 4


@dataclass(frozen=True)
class Virtiofsd:
    pid: int
    socket: Path


def shadow_uid(uid: int) -> int:
    """The host uid that the guest's root becomes in this user's shares."""
    return SHADOW_BASE + uid


def start_virtiofsd(
    source_fd: int,
    mount_point: Path,
    socket_path: Path,
    ids: tuple[int, int, Sequence[int]],
    readonly: bool,
    qemu_ids: tuple[int, int],
) -> Virtiofsd:
    """Start virtiofsd serving the directory source_fd refers to on socket_path.

    ids are the caller's uid, gid and groups: the only ones mapped. mount_point is an empty
    directory the broker owns; virtiofsd's messages go to socket_path with the suffix .log.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chown(socket_path, *qemu_ids)
    os.chmod(socket_path, 0o600)
    listener.listen(1)
    argv = [
        "/bin/sh", "-c", SETUP, "virtiofsd-setup", "ro" if readonly else "rw",
        str(SOURCE_FD), str(mount_point),
        str(VIRTIOFSD), f"--fd={LISTENER_FD}", "-o", f"source={mount_point}",
        "-o", "cache=auto", "-o", "sandbox=chroot", "-o", "no_xattr",
        "-o", "modcaps=-mknod:-setfcap",
    ]  # fmt: skip
    log_fd = os.open(
        socket_path.with_suffix(".log"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
        0o600,
    )
    try:
        pid = _spawn_in_user_namespace(argv, (listener.fileno(), source_fd), log_fd, ids)
    finally:
        listener.close()
        os.close(log_fd)
    log.debug("virtiofsd %d serves %s for uid %d", pid, "ro" if readonly else "rw", ids[0])
    return Virtiofsd(pid, socket_path)


def _spawn_in_user_namespace(
    argv: list[str], fds: tuple[int, int], log_fd: int, ids: tuple[int, int, Sequence[int]]
) -> int:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only makes system calls, then execs
        _child(argv, fds, log_fd, ready_w, go_r, ids[2])
    os.close(ready_w)
    os.close(go_r)
    try:
        readable, _, _ = select.select([ready_r], [], [], CHILD_WAIT)
        if not readable or os.read(ready_r, 1) != b"1":
            raise OSError("virtiofsd's user namespace could not be created")
        _write_maps(pid, *ids)
        os.write(go_w, b"1")
    except OSError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
    return pid


def _child(
    argv: list[str], fds: tuple[int, int], log_fd: int, ready_w: int, go_r: int,
    groups: Sequence[int],
) -> None:  # fmt: skip
    try:
        os.setsid()
        if _LIBC.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            os.write(ready_w, b"0")
            os._exit(125)
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            os._exit(125)
        os.setresgid(0, 0, 0)
        os.setgroups(list(groups))
        os.setresuid(0, 0, 0)
        # Out of the way first: either descriptor may already sit at 3 or 4.
        listener, source = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds)
        os.dup2(listener, LISTENER_FD)
        os.dup2(source, SOURCE_FD)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)


def _write_maps(pid: int, uid: int, gid: int, groups: Sequence[int]) -> None:
    uid_map = f"0 {shadow_uid(uid)} 1\n" + (f"{uid} {uid} 1\n" if uid != 0 else "")
    gid_map = f"0 {shadow_uid(uid)} 1\n"
    for g in sorted({gid, *groups} - {0}):
        gid_map += f"{g} {g} 1\n"
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(uid_map)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(gid_map)
