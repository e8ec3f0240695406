"""The API helper ExaBGP runs: relays its stdin/stdout to the agent's Unix socket.

ExaBGP talks to "processes" it starts itself, over their stdin and stdout.  The agent is
not such a process (it started ExaBGP, not the other way round), so ExaBGP runs this
relay, ``python -m bgp.bridge SOCKET``, which connects to the socket the driver listens on
and copies bytes both ways unchanged.  When either side closes, it exits; ExaBGP, told by
its environment to terminate when its helper dies, follows.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import time

CONNECT_TIMEOUT = 10.0


def _connect(path: str) -> socket.socket:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def relay(path: str, stdin: int = 0, stdout: int = 1) -> None:
    sock = _connect(path)
    sel = selectors.DefaultSelector()
    sel.register(stdin, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        while True:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(stdin, 65536)
                    if not data:
                        return
                    sock.sendall(data)
                else:
                    data = sock.recv(65536)
                    if not data:
                        return
                    _write_all(stdout, data)
    except (BrokenPipeError, ConnectionError):
        return
    finally:
        sock.close()


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bgp.bridge SOCKET")
    try:
        relay(sys.argv[1])
    except OSError as e:
        sys.exit(f"bgp.bridge: {sys.argv[1]}: {e.strerror or e}")


if __name__ == "__main__":
    main()
