"""Taking connections off a listener (accept_batch), both implementations, over real sockets."""

import errno
import socket

import pytest

from fastfog.server import open_listener


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_each_waiting_connection_is_handed_over_non_blocking_with_its_address(impl, host):
    with open_listener(host, 0) as listener:
        clients = [socket.create_connection(listener.getsockname()[:2], timeout=5) for _ in range(3)]
        for client in clients:
            client.sendall(b"x")  # (the listener hands a connection over once its first bytes are in)
        taken = []
        count, error = impl.accept_batch(listener, 2, lambda sock, address: taken.append((sock, address)))
        assert (count, error) == (2, None)  # the limit
        count, error = impl.accept_batch(listener, 64, lambda sock, address: taken.append((sock, address)))
        assert (count, error) == (1, None)  # the queue ran dry
        assert impl.accept_batch(listener, 64, lambda sock, address: taken.append((sock, address))) == (0, None)
        assert sorted(address for _, address in taken) == sorted(client.getsockname() for client in clients)
        for sock, _ in taken:
            assert sock.family == listener.family and not sock.getblocking()
            assert sock.recv(10) == b"x"
            with pytest.raises(BlockingIOError):
                sock.recv(10)
            sock.close()
        for client in clients:
            client.close()


def test_an_accept_error_stops_the_batch_and_is_returned(impl):
    with socket.socket() as not_listening:
        not_listening.bind(("127.0.0.1", 0))
        count, error = impl.accept_batch(not_listening, 64, lambda sock, address: None)
    assert count == 0 and isinstance(error, OSError) and error.errno == errno.EINVAL


def test_a_unix_listener_is_taken_the_plain_way(impl, tmp_path):
    path = str(tmp_path / "listener.sock")
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as client:
        listener.bind(path)
        listener.listen()
        listener.setblocking(False)
        client.connect(path)
        taken = []
        assert impl.accept_batch(listener, 64, lambda sock, address: taken.append(sock)) == (1, None)
        assert taken[0].family == socket.AF_UNIX and not taken[0].getblocking()
        taken[0].close()
