"""Messages between vmlaunch and its broker: length-prefixed JSON, descriptors by SCM_RIGHTS."""

from __future__ import annotations

import array
import json
import os
import socket
import struct
from typing import Any

VERSION = 1
MAX_MESSAGE = 1 << 20
MAX_FDS = 64
_HEADER = struct.Struct("!I")
_FD = array.array("i")


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
    """One message and the descriptors that came with it; ProtocolError on hang-up.

    Received descriptors are close-on-exec (no other process the receiver starts inherits
    them) and closed again when the message around them is malformed.
    """
    head, fds = _recv_with_fds(sock, _HEADER.size)
    try:
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
    except (ProtocolError, OSError):
        for fd in fds:
            os.close(fd)
        raise
    return message, list(fds)


def _recv_with_fds(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    # socket.recv_fds drops its flags argument (CPython 3.11), so MSG_CMSG_CLOEXEC goes here.
    data, ancillary, _flags, _addr = sock.recvmsg(
        size, socket.CMSG_SPACE(MAX_FDS * _FD.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD.itemsize])
    return data, list(fds)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProtocolError("the peer closed the connection mid-message")
        data += chunk
    return data
