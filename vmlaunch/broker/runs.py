"""One run as the broker sees it: check the request, lay out its state, boot it, clean it up."""

from __future__ import annotations

import fcntl
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import syslog
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmlaunch.broker import domains
from vmlaunch.broker.rootfs import stage_rootfs
from vmlaunch.broker.seed import GuestUser, SeedBind, write_seed
from vmlaunch.broker.virtiofs import Virtiofsd, start_virtiofsd
from vmlaunch.catalog.model import Catalog, Pairing, Status
from vmlaunch.catalog.store import VerifiedStore
from vmlaunch.config.settings import Config
from vmlaunch.errors import GuestError, HostError, VmlaunchError
from vmlaunch.host.accel import probe_kvm
from vmlaunch.vm.domain import (
    GUEST_DISK_SERIAL,
    ROOTFS_DISK_SERIAL,
    SEED_DISK_SERIAL,
    Accel,
    Disk,
    DomainSpec,
    Share,
    render_domain,
)

log = logging.getLogger(__name__)

SOCKET_WAIT = 10.0


@dataclass(frozen=True)
class Peer:
    """The caller, as the kernel vouches for it (SO_PEERCRED), never as it claims."""

    pid: int
    uid: int
    gid: int
    name: str
    groups: tuple[int, ...]


@dataclass
class Run:
    id: str
    peer: Peer
    directory: Path
    pairing: Pairing
    image: str = ""
    started: float = 0.0
    status: int | None = None
    """The command's exit status, as the launcher reported it (None: never reported)."""
    connection: Any = None
    domain: Any = None
    virtiofsds: list[Virtiofsd] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "run": self.id, "user": self.peer.name, "uid": self.peer.uid,
            "pairing": self.pairing.id, "image": self.image, "started": self.started,
        }  # fmt: skip


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, uid, gid = (int.from_bytes(creds[i : i + 4], "little") for i in (0, 4, 8))
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = tuple(sorted(set(os.getgrouplist(name, gid)) - {gid}))
    except KeyError:
        name, groups = f"u{uid}", ()
    return Peer(pid, uid, gid, name, groups)


def choose_pairing(catalog: Catalog, wanted: str | None, store: VerifiedStore) -> Pairing:
    """The named pairing (id or name; newest revision), or the newest active one in the store.

    A catalog may list pairings this host has not built or fetched yet; they are skipped
    unless named, and then their missing artifact is the error.
    """
    pairings = catalog.pairings()
    if wanted:
        named = [p for p in pairings if wanted in (p.id, p.name, f"{p.epoch}/{p.name}")]
        if not named:
            known = ", ".join(sorted({p.id for p in pairings}))
            raise VmlaunchError(f"no pairing {wanted!r} in the catalog", f"known: {known}")
        return max(named, key=lambda p: p.revision)
    active = [p for p in pairings if p.status is Status.ACTIVE]
    if not active:
        raise VmlaunchError("the catalog has no active pairing", "ask the administrator")
    present = [p for p in active if all(store.has(d) for d in p.artifacts().values())]
    if not present:
        newest = max(active, key=lambda p: (p.epoch, p.revision))
        raise VmlaunchError(
            f"no active pairing has its artifacts in the store {store.root}",
            f"build one, e.g. {newest.id}, with guest-images/build",
        )
    return max(present, key=lambda p: (p.epoch, p.revision))


def resolve_accel(wanted: str, config: Config, conn: Any) -> Accel:
    if wanted not in config["allowed_accels"] and wanted != "auto":
        raise VmlaunchError(
            f"accelerator {wanted!r} is not allowed on this host",
            f"allowed: {', '.join(config['allowed_accels'])}",
        )
    if wanted == "tcg":
        return Accel.TCG
    reason = probe_kvm()
    if reason is None and not domains.has_domain_caps(conn, "kvm"):
        reason = "libvirt's domain capabilities do not list kvm"
    if reason is not None:
        raise HostError(
            f"KVM is unusable: {reason}",
            "run with --accel tcg (much slower) or fix KVM on this host",
        )
    return Accel.KVM


def check_limits(request: dict[str, Any], config: Config) -> tuple[int, int]:
    memory, cpus = int(request["memory"]), int(request["cpus"])
    if not 128 <= memory <= config["max_memory"]:
        raise VmlaunchError(
            f"--memory {memory} MiB is outside 128..{config['max_memory']}", "ask for less memory"
        )
    if not 1 <= cpus <= config["max_cpus"]:
        raise VmlaunchError(
            f"--cpus {cpus} is outside 1..{config['max_cpus']}", "ask for fewer CPUs"
        )
    return memory, cpus


def check_bind_source(path: str, fd: int) -> None:
    """The caller opened the directory (proving it may read it); the broker uses that fd only.

    The path is for messages: looking it up again as root would follow whatever a racing
    rename or symlink put there, and would tell the caller about paths it cannot search.
    """
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
        raise VmlaunchError(
            f"--bind source {path} was passed without read access",
            "open it with O_RDONLY | O_DIRECTORY",
        )
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        raise VmlaunchError(
            f"--bind source {path} is not a directory",
            "bind a directory (virtiofs shares directories)",
        )


def guest_login(uid: int) -> str:
    """The guest account's name: fixed by uid, so it never collides with the guest's own."""
    return "root" if uid == 0 else f"vml{uid}"


def check_destination(path: str) -> str:
    if not path.startswith("/") or "\n" in path or "\0" in path or path == "/":
        raise VmlaunchError(f"--bind destination {path!r} must be an absolute path below /")
    return path


def prepare_run(
    peer: Peer, request: dict[str, Any], config: Config, catalog: Catalog, store: VerifiedStore
) -> Run:
    pairing = choose_pairing(catalog, request.get("pairing"), store)
    run_id = secrets.token_hex(6)
    directory = Path(config.path("runs_dir")) / run_id
    directory.mkdir(mode=0o711, parents=True)
    directory.chmod(0o711)
    image = str(request.get("image", ""))[:1024]
    run = Run(run_id, peer, directory, pairing, image=image, started=time.time())
    log.info("run %s for %s (uid %d) on %s", run_id, peer.name, peer.uid, pairing.id)
    return run


def boot(
    run: Run, request: dict[str, Any], fds: list[int], config: Config, store: VerifiedStore
) -> tuple[socket.socket, int]:
    """Boot the run's guest; returns the connected control socket and the console log fd."""
    memory, cpus = check_limits(request, config)
    if len(fds) != 1 + len(request.get("binds", [])):
        raise VmlaunchError("the request's descriptors do not match its binds")
    run.connection = domains.open_connection()
    accel = resolve_accel(str(request.get("accel", "auto")), config, run.connection)
    artifacts = {
        what: store.get(digest, what, run.pairing.id)
        for what, digest in run.pairing.artifacts().items()
    }
    rootfs = stage_rootfs(
        fds[0], run.directory / "rootfs.img", config.path("rootfs_cache_dir") / str(run.peer.uid),
        config["max_rootfs_mib"], config["rootfs_cache_keep"], _qemu_ids()[1],
    )  # fmt: skip
    shares, seed_binds = _start_shares(run, request.get("binds", []), fds[1:])
    user = GuestUser(guest_login(run.peer.uid), run.peer.uid, run.peer.gid, run.peer.groups)
    write_seed(
        run.directory / "seed.img",
        user,
        seed_binds,
        str(request["host_key"]),
        str(request["authorized_key"]),
    )
    control = run.directory / "control.sock"
    console = run.directory / "console.log"
    spec = DomainSpec(
        name=domains.DOMAIN_PREFIX + run.id,
        uuid=str(uuid.uuid4()),
        accel=accel,
        memory_mib=memory,
        vcpus=cpus,
        kernel=artifacts["kernel"],
        initramfs=artifacts["initramfs"],
        cmdline=run.pairing.kernel.cmdline,
        disks=(
            Disk(artifacts["guest image"], GUEST_DISK_SERIAL, shared=True),
            Disk(rootfs, ROOTFS_DISK_SERIAL, shared=True),
            Disk(run.directory / "seed.img", SEED_DISK_SERIAL, shared=False),
        ),
        control_socket=control,
        console_log=console,
        shares=shares,
    )
    run.domain = domains.start_transient(run.connection, render_domain(spec))
    return _connect(control), os.open(console, os.O_RDONLY | os.O_CLOEXEC)


def _qemu_ids() -> tuple[int, int]:
    qemu = pwd.getpwnam("libvirt-qemu")
    return qemu.pw_uid, qemu.pw_gid


def _start_shares(
    run: Run, binds: list[dict[str, Any]], fds: list[int]
) -> tuple[tuple[Share, ...], list[SeedBind]]:
    shares, seed_binds = [], []
    for index, (bind, fd) in enumerate(zip(binds, fds, strict=True)):
        source = str(bind["source"])
        check_bind_source(source, fd)
        destination = check_destination(str(bind["destination"]))
        readonly = bool(bind["readonly"])
        tag = f"vmlbind{index}"
        mount_point = run.directory / f"{tag}.mnt"
        mount_point.mkdir(mode=0o755)
        daemon = start_virtiofsd(
            fd, mount_point, run.directory / f"{tag}.sock",
            (run.peer.uid, run.peer.gid, run.peer.groups), readonly,
            _qemu_ids(),
        )  # fmt: skip
        run.virtiofsds.append(daemon)
        shares.append(Share(tag, readonly, daemon.socket))
        seed_binds.append(SeedBind(index, tag, readonly, destination))
    return tuple(shares), seed_binds


def _connect(path: Path) -> socket.socket:
    deadline = time.monotonic() + SOCKET_WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() > deadline:
                raise GuestError(f"the guest's control channel {path} never appeared") from e
            time.sleep(0.05)


def audit(run: Run) -> None:
    """One line per run in the system log, for the administrator."""
    status = "unreported" if run.status is None else str(run.status)
    line = (
        f"vmlaunch: run {run.id} user={run.peer.name} uid={run.peer.uid} "
        f"image={run.image!r} pairing={run.pairing.id} devices=none status={status} "
        f"seconds={time.time() - run.started:.0f}"
    )
    syslog.syslog(syslog.LOG_INFO | syslog.LOG_DAEMON, line)
    log.info("%s", line)


def stop(run: Run) -> None:
    """End another connection's guest at once; its launcher sees the guest end, and its
    connection's end removes the rest."""
    if run.domain is not None:
        domains.destroy(run.domain)


def finish(run: Run) -> None:
    """Destroy the guest, stop its virtiofsds and remove every file of the run."""
    if run.domain is not None:
        domains.destroy(run.domain)
    if run.connection is not None:
        run.connection.close()
    for daemon in run.virtiofsds:
        _stop(daemon.pid)
    shutil.rmtree(run.directory, ignore_errors=True)
    log.info("run %s finished", run.id)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        pass


def gc_runs(runs_dir: Path, live: set[str]) -> list[str]:
    """Remove state of runs no connection owns (a broker that died); returns their ids."""
    removed = []
    conn = domains.open_connection()
    try:
        for domain in domains.list_vmlaunch_domains(conn):
            if domain.name().removeprefix(domains.DOMAIN_PREFIX) not in live:
                domains.destroy(domain)
                removed.append(domain.name().removeprefix(domains.DOMAIN_PREFIX))
    finally:
        conn.close()
    if runs_dir.is_dir():
        for entry in runs_dir.iterdir():
            if entry.name not in live:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    return sorted(set(removed))
