"""Messages between vmlaunch and its broker: length-prefixed JSON, descriptors by SCM_RIGHTS."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

VERSION = 1
MAX_MESSAGE = 1 << 20
MAX_FDS = 64
_HEADER = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol, or hung up."""


def send_message(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None
) -> None:
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    if fds:
        sent = socket.send_fds(sock, [data], fds)
        sock.sendall(data[sent:])
    else:
        sock.sendall(data)


def recv_message(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors that came with it; ProtocolError on hang-up."""
    head, fds, _flags, _addr = socket.recv_fds(sock, _HEADER.size, MAX_FDS)
    if not head:
        raise ProtocolError("the peer closed the connection")
    head += _recv_exactly(sock, _HEADER.size - len(head))
    (length,) = _HEADER.unpack(head)
    if length > MAX_MESSAGE:
        raise ProtocolError(f"message of {length} bytes is too long")
    body = _recv_exactly(sock, length)
    try:
        message = json.loads(body)
    except ValueError as e:
        raise ProtocolError(f"malformed message: {e}") from e
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message, list(fds)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProtocolError("the peer closed the connection mid-message")
        data += chunk
    return data
