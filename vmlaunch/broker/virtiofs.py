"""virtiofsd for a user's bind, confined to that user's rights on the host.

libvirt would start virtiofsd as root, and a hostile guest root could then write anywhere in
the shared tree, create root-owned setuid files or device nodes. Instead the broker starts each
virtiofsd itself, in a user namespace where only the invoking user's uid and gids are mapped
(to themselves) and namespace root is the host's `nobody`:

- files the guest's user writes belong to that user on the host;
- files the guest's root writes belong to `nobody`, never to root;
- capabilities inside the namespace reach only inodes the user owns, which they could change
  anyway, and device nodes cannot be created from a user namespace at all;
- a read-only bind is a read-only bind mount in virtiofsd's own mount namespace, enforced by
  the host's kernel, whatever the guest does.

QEMU reaches virtiofsd through a listening socket the broker creates and hands over (`--fd`),
so that the socket's owner is the broker's choice, not the namespace's.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

VIRTIOFSD = Path("/usr/lib/qemu/virtiofsd")
NOBODY = 65534
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
SETUP = (
    "set -e; mount --make-rprivate /; "
    'if [ "$1" = ro ]; then mount --bind "$2" "$2"; mount -o remount,bind,ro "$2" "$2"; fi; '
    'shift 2; exec "$@"'
)


@dataclass(frozen=True)
class Virtiofsd:
    pid: int
    socket: Path


def start_virtiofsd(
    source: Path,
    socket_path: Path,
    uid: int,
    gids: Sequence[int],
    readonly: bool,
    qemu_uid: int,
    qemu_gid: int,
) -> Virtiofsd:
    """Start virtiofsd serving source on socket_path, with only uid and gids mapped.

    Its messages go to socket_path with the suffix .log.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    os.chown(socket_path, qemu_uid, qemu_gid)
    os.chmod(socket_path, 0o600)
    listener.listen(1)
    argv = [
        "/bin/sh",
        "-c",
        SETUP,
        "virtiofsd-setup",
        "ro" if readonly else "rw",
        str(source),
        str(VIRTIOFSD),
        f"--fd={listener.fileno()}",
        "-o",
        f"source={source}",
        "-o",
        "cache=auto",
        "-o",
        "sandbox=chroot",
        "-o",
        "no_xattr",
        "-o",
        "modcaps=-mknod:-setfcap",
    ]
    log_fd = os.open(
        socket_path.with_suffix(".log"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
        0o600,
    )
    try:
        pid = _spawn_in_user_namespace(argv, listener.fileno(), log_fd, uid, gids)
    finally:
        listener.close()
        os.close(log_fd)
    log.debug(
        "virtiofsd %d serves %s (%s) for uid %d", pid, source, "ro" if readonly else "rw", uid
    )
    return Virtiofsd(pid, socket_path)


def _spawn_in_user_namespace(
    argv: list[str], keep_fd: int, log_fd: int, uid: int, gids: Sequence[int]
) -> int:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only makes system calls, then execs
        _child(argv, keep_fd, log_fd, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("virtiofsd's namespace could not be created")
        _write_maps(pid, uid, gids)
        os.write(go_w, b"1")
    except OSError:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_r)
        os.close(go_w)
    return pid


def _child(argv: list[str], keep_fd: int, log_fd: int, ready_w: int, go_r: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        os.setsid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            os.write(ready_w, b"0")
            os._exit(125)
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            os._exit(125)
        os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        os.set_inheritable(keep_fd, True)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.execv(argv[0], argv)
    finally:
        os._exit(127)


def _write_maps(pid: int, uid: int, gids: Sequence[int]) -> None:
    uid_map = f"0 {NOBODY} 1\n" + (f"{uid} {uid} 1\n" if uid not in (0, NOBODY) else "")
    gid_map = f"0 {NOBODY} 1\n"
    for gid in sorted(set(gids) - {0, NOBODY}):
        gid_map += f"{gid} {gid} 1\n"
    Path(f"/proc/{pid}/uid_map").write_text(uid_map)
    Path(f"/proc/{pid}/gid_map").write_text(gid_map)
