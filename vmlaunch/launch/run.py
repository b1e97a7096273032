"""One run, from the user's side: image -> root file system -> broker boots -> agent runs it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

from vmlaunch.agent import client as agent
from vmlaunch.broker.client import BrokerClient
from vmlaunch.config.settings import Config
from vmlaunch.errors import GuestError, Interrupted, VmlaunchError
from vmlaunch.image.oci import Image, open_image
from vmlaunch.image.reference import parse_reference
from vmlaunch.image.rootfs import prepare_rootfs

log = logging.getLogger(__name__)

SIGNAL_GRACE = 10.0
CONSOLE_TAIL = 20


@dataclass(frozen=True)
class Bind:
    source: Path
    destination: str
    readonly: bool


@dataclass(frozen=True)
class RunOptions:
    image: str
    command: tuple[str, ...]
    binds: tuple[Bind, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str | None = None
    timeout: float | None = None
    pairing: str | None = None


def parse_bind(text: str) -> Bind:
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[0]
        or not parts[1].startswith("/")
        or parts[1] == "/"
        or "\n" in text
    ):
        raise VmlaunchError(
            f"--bind {text!r} is not SRC:DST[:ro|rw]",
            "DST must be an absolute path in the container",
        )
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise VmlaunchError(f"--bind {text!r}: unknown mode {mode!r}", "use ro or rw")
    source = Path(parts[0]).expanduser().absolute()
    if not source.is_dir():
        what = "does not exist" if not source.exists() else "is not a directory"
        raise VmlaunchError(
            f"--bind source {source} {what}", "create it, or bind an existing directory"
        )
    return Bind(source, parts[1], mode == "ro")


def container_args(image: Image, command: tuple[str, ...]) -> list[str]:
    """The command as docker run would build it: Entrypoint + (the given command or Cmd)."""
    return [*image.config.entrypoint, *(command or image.config.cmd)]


def container_env(image: Image, extra: tuple[str, ...]) -> list[str]:
    env = dict(image.config.env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/tmp")
    for item in extra:
        key, sep, value = item.partition("=")
        if not key or not sep:
            raise VmlaunchError(f"environment entry {item!r} is not KEY=VALUE")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


class Phases:
    """How long each step of a run took; logged at debug level, read by bench/coldstart."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = now - self._last
        self._last = now

    def __str__(self) -> str:
        return " ".join(f"{name}={s * 1000:.0f}ms" for name, s in self.seconds.items())


def launch(options: RunOptions, config: Config, progress: bool = False) -> int:
    """Run options.image in a guest; returns the command's exit status."""
    phases = Phases()
    image = open_image(parse_reference(options.image))
    args = container_args(image, options.command)
    env = container_env(image, options.env)
    phases.mark("image")
    # Reach the broker before the slow steps: a missing broker is reported at once.
    broker = BrokerClient(config.path("broker_socket"))
    try:
        _say(progress, f"preparing the root file system of {options.image}")
        rootfs = prepare_rootfs(image, config.path("cache_dir"))
        phases.mark("rootfs")
        keys = agent.RunKeys.generate()
        phases.mark("keys")
        status = _run(broker, options, config, rootfs, keys, args, env, progress, phases)
        _report(broker, status)
        return status
    finally:
        broker.close()
        log.debug("phases %s", phases)


def _run(
    broker: BrokerClient,
    options: RunOptions,
    config: Config,
    rootfs: Path,
    keys: agent.RunKeys,
    args: list[str],
    env: list[str],
    progress: bool,
    phases: Phases,
) -> int:
    fds = [os.open(rootfs, os.O_RDONLY | os.O_CLOEXEC)]
    fds += [os.open(b.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for b in options.binds]
    try:
        _say(progress, "booting the guest")
        reply, (control_fd, console_fd) = broker.call(_start_request(options, config, keys), fds)
    finally:
        for fd in fds:
            os.close(fd)
    phases.mark("start")
    run_id = str(reply["run"])
    log.info("run %s on pairing %s", run_id, reply["pairing"])
    control = socket.socket(fileno=control_fd)
    with open(console_fd, "rb") as console, control:
        try:
            agent.wait_ready(control, config["boot_timeout"])
        except GuestError as e:
            raise GuestError(
                f"{e.message}\n{_keep_console(console, config, run_id)}", e.hint
            ) from e
        phases.mark("boot")
        transport = agent.connect(control, keys, str(reply["user"]))
        phases.mark("ssh")
        request = {
            "id": run_id,
            "args": args,
            "env": env,
            "cwd": options.workdir,
            "binds": [
                {"index": i, "destination": b.destination, "readonly": b.readonly}
                for i, b in enumerate(options.binds)
            ],
        }
        with _forward_signals(transport, run_id, options.timeout):
            try:
                status = agent.run_in_guest(
                    transport, request, _stdin(), _out(sys.stdout), _out(sys.stderr)
                )
            except GuestError as e:
                raise GuestError(
                    f"{e.message}\n{_keep_console(console, config, run_id)}", e.hint
                ) from e
        phases.mark("command")
        transport.close()
    return status


def _report(broker: BrokerClient, status: int) -> None:
    """Tell the broker the command's status, for its audit line; the run ends regardless."""
    try:
        broker.call({"op": "finished", "status": status})
    except VmlaunchError as e:
        log.debug("the broker did not take the exit status: %s", e)


def _start_request(options: RunOptions, config: Config, keys: agent.RunKeys) -> dict[str, Any]:
    return {
        "op": "start",
        "image": options.image,
        "pairing": options.pairing,
        "memory": config["memory"],
        "cpus": config["cpus"],
        "accel": config["accel"],
        "binds": [
            {"source": str(b.source), "destination": b.destination, "readonly": b.readonly}
            for b in options.binds
        ],
        "host_key": keys.host_private_pem(),
        "authorized_key": keys.client_public_line(),
    }


@contextlib.contextmanager
def _forward_signals(transport: Any, run_id: str, timeout: float | None) -> Iterator[None]:
    """First SIGINT/SIGTERM goes to the container; a second, or the grace period, ends the run."""
    received: list[int] = []

    def forward(name: str) -> None:
        try:
            agent.signal_container(transport, run_id, name)
        except Exception as e:  # the run may end while the signal travels
            log.warning("could not pass SIG%s to the command: %s", name, e)

    timers: list[threading.Timer] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1:
            raise Interrupted(signum)
        name = signal.Signals(signum).name.removeprefix("SIG")
        threading.Thread(target=forward, args=(name,), daemon=True).start()
        timers.append(threading.Timer(SIGNAL_GRACE, os.kill, (os.getpid(), signum)))
        timers[-1].daemon = True
        timers[-1].start()

    def on_timeout() -> None:
        print(
            f"vmlaunch: the command ran longer than --timeout {timeout:g} s; stopping it",
            file=sys.stderr,
        )
        os.kill(os.getpid(), signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if timeout:
        timers.append(threading.Timer(timeout, on_timeout))
        timers[-1].daemon = True
        timers[-1].start()
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _keep_console(console: BinaryIO, config: Config, run_id: str) -> str:
    """Save a failed run's whole console for the user; return its last lines and where it is.

    The broker removes the run's files when the run ends, so this copy is the user's record.
    """
    text = console.read()
    lines = text.decode(errors="replace").splitlines()[-CONSOLE_TAIL:]
    kept = config.path("cache_dir") / "logs" / f"{run_id}.console"
    try:
        kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(text)
        where = f"the whole console is in {kept}"
    except OSError as e:
        where = f"the console could not be kept in {kept}: {e.strerror}"
    shown = "\n".join(f"  {line}" for line in lines)
    return f"last lines of the guest's console ({where}):\n{shown}"


def _stdin() -> BinaryIO | None:
    if sys.stdin is None or sys.stdin.isatty():
        return None
    return sys.stdin.buffer


def _out(stream: Any) -> BinaryIO:
    return stream.buffer  # type: ignore[no-any-return]


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"vmlaunch: {text}…", file=sys.stderr)
