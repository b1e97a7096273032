from __future__ import annotations

import os
import socket

import pytest

from vmlaunch.broker.protocol import ProtocolError, recv_message, send_message


def test_messages_carry_descriptors_across() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    send_message(left, {"op": "start", "binds": ["x" * 5000]}, [read_end])
    message, fds = recv_message(right)
    assert message == {"op": "start", "binds": ["x" * 5000]}
    assert len(fds) == 1
    os.write(write_end, b"through")
    assert os.read(fds[0], 7) == b"through"
    for fd in (*fds, read_end, write_end):
        os.close(fd)


def test_a_hang_up_is_a_protocol_error() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.close()
    with pytest.raises(ProtocolError, match="closed"):
        recv_message(right)


def test_garbage_is_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left.sendall(b"\x00\x00\x00\x05[1,2]")
    with pytest.raises(ProtocolError, match="JSON object"):
        recv_message(right)


def test_descriptors_of_a_malformed_message_are_closed() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    socket.send_fds(left, [b"\x00\x00\x00\x02[]"], [read_end])
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(ProtocolError):
        recv_message(right)
    assert set(os.listdir("/proc/self/fd")) <= before
    for fd in (read_end, write_end):
        os.close(fd)


def test_received_descriptors_are_close_on_exec() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    send_message(left, {"op": "x"}, [read_end])
    _message, fds = recv_message(right)
    assert not os.get_inheritable(fds[0])
    for fd in (*fds, read_end, write_end):
        os.close(fd)
