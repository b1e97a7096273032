"""The launcher's side of the broker connection. A run lives as long as this connection."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from vmlaunch.broker import protocol
from vmlaunch.errors import HostError, VmlaunchError


class BrokerClient:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            self.sock.close()
            raise HostError(
                f"cannot reach the vmlaunch broker at {path}: {e.strerror}",
                "ask the administrator to start vmlaunch-broker (README.md, set-up)",
            ) from e
        reply, _ = self.call({"op": "hello", "version": protocol.VERSION})
        if reply.get("version") != protocol.VERSION:
            raise HostError(
                f"the broker at {path} speaks protocol {reply.get('version')}, "
                f"this vmlaunch speaks {protocol.VERSION}"
            )

    def call(
        self, message: dict[str, Any], fds: list[int] | None = None
    ) -> tuple[dict[str, Any], list[int]]:
        try:
            protocol.send_message(self.sock, message, fds)
            reply, reply_fds = protocol.recv_message(self.sock)
        except (OSError, protocol.ProtocolError) as e:
            raise HostError(
                f"the broker at {self.path} hung up: {e}", "see the broker's log"
            ) from e
        if not reply.get("ok"):
            raise VmlaunchError(str(reply.get("error")), reply.get("hint"))
        return reply, reply_fds

    def close(self) -> None:
        self.sock.close()
