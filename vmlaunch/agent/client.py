"""The host side of the control channel: wait for readiness, then SSH (paramiko) to the agent."""

from __future__ import annotations

import io
import json
import logging
import select
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import paramiko

from vmlaunch.errors import GuestError

log = logging.getLogger(__name__)

PROTOCOL = 1
AGENT = "/usr/lib/vmlaunch/vmlaunch-agent"
READY = b"VMLAUNCH-READY "
CHUNK = 1 << 16
EXEC_TIMEOUT = 60.0
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


@dataclass(frozen=True)
class RunKeys:
    """Per-run keys: the guest's host key and the launcher's client key, made fresh each run."""

    host: paramiko.ECDSAKey
    client: paramiko.ECDSAKey

    @classmethod
    def generate(cls) -> RunKeys:
        return cls(paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate())

    def host_private_pem(self) -> str:
        buffer = io.StringIO()
        self.host.write_private_key(buffer)
        return buffer.getvalue()

    def client_public_line(self) -> str:
        return f"{self.client.get_name()} {self.client.get_base64()} vmlaunch-run"


def wait_ready(sock: socket.socket, timeout: float) -> int:
    """Read the guest's readiness line; returns the agent protocol it announces."""
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise GuestError(
                f"the guest was not ready within {timeout:.0f} s",
                "raise --boot-timeout, or see the console lines above",
            )
        readable, _, _ = select.select([sock], [], [], min(left, 0.5))
        if not readable:
            continue
        byte = sock.recv(1)
        if not byte:
            raise GuestError("the guest stopped before it was ready")
        line += byte
        if len(line) > 64:
            raise GuestError(f"the guest sent {line!r} instead of its readiness line")
    if not line.startswith(READY) or not line[len(READY) :].strip().isdigit():
        raise GuestError(f"the guest sent {line!r} instead of its readiness line")
    return int(line[len(READY) :])


def connect(sock: socket.socket, keys: RunKeys, user: str) -> paramiko.Transport:
    """SSH over the control socket, accepting only this run's host key."""
    transport = paramiko.Transport(sock)
    transport.set_keepalive(0)
    try:
        transport.start_client(timeout=30)
        offered = transport.get_remote_server_key()
        if offered.asbytes() != keys.host.asbytes():
            raise GuestError("the guest offered a host key that is not this run's; refusing it")
        transport.auth_publickey(user, keys.client)
    except paramiko.SSHException as e:
        transport.close()
        raise GuestError(f"cannot open SSH to the guest's agent: {e}") from e
    return transport


def agent_command(verb: str) -> str:
    return shlex.join([AGENT, str(PROTOCOL), verb])


def request_bytes(request: dict[str, Any]) -> bytes:
    body = json.dumps(request).encode()
    return b"VMLAUNCH-REQUEST %d\n" % len(body) + body


def run_in_guest(
    transport: paramiko.Transport,
    request: dict[str, Any],
    stdin: BinaryIO | None,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> int:
    """Run the request's container; stream its output as it comes; return its exit status.

    stdout and stderr are drained by their own threads: reading one while the other fills
    the SSH window would stall the guest (the classic 10 MiB deadlock).
    """
    channel = transport.open_session()
    _exec(channel, agent_command("run"))
    channel.sendall(request_bytes(request))
    broken = threading.Event()
    pumps = [
        threading.Thread(target=_pump, args=(channel.recv, stdout, broken, channel), daemon=True),
        threading.Thread(
            target=_pump, args=(channel.recv_stderr, stderr, broken, channel), daemon=True
        ),
    ]
    for pump in pumps:
        pump.start()
    if stdin is not None:
        threading.Thread(target=_feed, args=(stdin, channel), daemon=True).start()
    else:
        channel.shutdown_write()
    status = channel.recv_exit_status()
    for pump in pumps:
        pump.join()
    channel.close()
    if broken.is_set():
        return EXIT_BROKEN_PIPE
    if status < 0:
        raise GuestError(
            "the guest ended before the command reported its exit status",
            "it was stopped (`vmlaunch stop`), or it crashed: see its console above",
        )
    return status


def signal_container(transport: paramiko.Transport, run_id: str, signal_name: str) -> None:
    channel = transport.open_session()
    _exec(channel, agent_command("kill"))
    channel.sendall(request_bytes({"id": run_id, "signal": signal_name}))
    channel.shutdown_write()
    status = channel.recv_exit_status()
    errors = channel.makefile_stderr().read().decode(errors="replace").strip()
    channel.close()
    if status != 0:
        raise GuestError(f"the agent could not signal the container: {errors or status}")


def _exec(channel: paramiko.Channel, command: str) -> None:
    """Start command on channel; paramiko would wait for the guest's answer forever."""
    timer = threading.Timer(EXEC_TIMEOUT, channel.close)
    timer.daemon = True
    timer.start()
    try:
        channel.exec_command(command)
    except paramiko.SSHException as e:
        raise GuestError(
            f"the guest did not start the agent within {EXEC_TIMEOUT:.0f} s ({e})",
            "run again; if it recurs, report it with the console lines above",
        ) from e
    finally:
        timer.cancel()


def _pump(recv: Callable[[int], bytes], out: BinaryIO, broken: threading.Event,
          channel: paramiko.Channel) -> None:  # fmt: skip
    """Copy a stream until it ends. When out is a closed pipe (`| head`), end the run the way
    SIGPIPE ends a local command: close the channel, and say so through broken."""
    while data := recv(CHUNK):
        try:
            out.write(data)
            out.flush()
        except BrokenPipeError:
            broken.set()
            channel.close()
            return


def _feed(stdin: BinaryIO, channel: paramiko.Channel) -> None:
    try:
        while data := stdin.read1(CHUNK) if hasattr(stdin, "read1") else stdin.read(CHUNK):
            channel.sendall(data)
        channel.shutdown_write()
    except (OSError, EOFError):
        pass
