"""In-sandbox forwarder: ``127.0.0.1:PORT`` inside the sandbox -> the egress proxy's Unix socket.

The sandbox has its own network namespace with nothing but loopback, and HTTP
clients want a TCP proxy address, so each sandboxed command starts this script
first (with the system ``python3 -I -S``: standard library only, no site
packages, nothing from the workspace). It binds and listens, then forks: the
parent exits 0 as soon as the port accepts connections, which is the readiness
signal the command's shell waits for (no polling, no sleeps), and the child
relays bytes until the sandbox's pid namespace ends with the command.

The child is not a job of the command's shell, so a ``wait`` in the command
never waits for it. It is single-threaded (``selectors``), so it costs one
process against the command's process limit whatever the number of connections.

Every command pays for the parent's run, so it imports only what binding
needs (the C ``_socket`` module: ``socket`` alone would double the start-up
time); the child imports the rest once the command is already running.
"""

from __future__ import annotations

import _socket
import os
import sys

TYPE_CHECKING = False  # ``typing`` itself takes longer to import than everything else here
if TYPE_CHECKING:
    import selectors
    import socket

BUFFER = 256 * 1024
"""Bytes buffered per direction before reading from the sender pauses."""


class _Pair:
    """One relayed connection: the client's TCP socket and its Unix socket to the proxy."""

    def __init__(self, selector: selectors.BaseSelector, client: socket.socket, proxy: socket.socket) -> None:
        self.selector = selector
        self.sockets = (client, proxy)
        self.pending = {client: bytearray(), proxy: bytearray()}  # bytes read from the key, not yet sent on
        self.ended: set[socket.socket] = set()  # sockets whose read side reached EOF
        self.shut: set[socket.socket] = set()  # sockets whose write side was shut down
        self.registered: set[socket.socket] = set()
        self.closed = False
        self.update()

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.sockets[1] if sock is self.sockets[0] else self.sockets[0]

    def update(self) -> None:
        if self.closed:
            return
        if all(s in self.shut for s in self.sockets) or (
            all(s in self.ended for s in self.sockets) and not any(self.pending.values())
        ):
            self.close()
            return
        for sock in self.sockets:
            events = 0
            if sock not in self.ended and len(self.pending[sock]) < BUFFER:
                events |= selectors.EVENT_READ
            if self.pending[self.peer(sock)]:
                events |= selectors.EVENT_WRITE
            if events and sock in self.registered:
                self.selector.modify(sock, events, self)
            elif events:
                self.selector.register(sock, events, self)
                self.registered.add(sock)
            elif sock in self.registered:
                self.selector.unregister(sock)
                self.registered.discard(sock)

    def handle(self, sock: socket.socket, events: int) -> None:
        if self.closed:
            return  # closed by an earlier event of the same batch
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(65536)
                if data:
                    self.pending[sock] += data
                else:
                    self.ended.add(sock)
            if events & selectors.EVENT_WRITE:
                out = self.pending[self.peer(sock)]
                sent = sock.send(out)
                del out[:sent]
            for source in self.sockets:
                target = self.peer(source)
                if source in self.ended and not self.pending[source] and target not in self.shut:
                    self.shut.add(target)
                    target.shutdown(socket.SHUT_WR)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.close()
            return
        self.update()

    def close(self) -> None:
        self.closed = True
        for sock in self.sockets:
            if sock in self.registered:
                self.selector.unregister(sock)
            sock.close()
        self.registered.clear()


def _accept(selector: selectors.BaseSelector, listener: socket.socket, proxy_path: str) -> None:
    try:
        client, _ = listener.accept()
    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
        return
    proxy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proxy.connect(proxy_path)
    except OSError:
        proxy.close()
        client.close()
        return
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.setblocking(False)
    proxy.setblocking(False)
    _Pair(selector, client, proxy)


def serve(listener: socket.socket, proxy_path: str) -> None:
    selector = selectors.DefaultSelector()
    listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, events in selector.select():
            if key.data is None:
                _accept(selector, listener, proxy_path)
            else:
                key.data.handle(key.fileobj, events)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: forwarder.py LISTEN_HOST LISTEN_PORT PROXY_SOCKET", file=sys.stderr)
        return 2
    host, port, proxy_path = argv[1], int(argv[2]), argv[3]
    raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        raw.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        raw.bind((host, port))
        raw.listen(128)
    except OSError as exc:
        print(f"tether: egress forwarder cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    if os.fork():
        os._exit(0)  # the port is listening: the command may start (now, without interpreter teardown)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # hold none of the command's pipes open
    keep = raw.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)
    global selectors, socket  # _Pair, _accept and serve use them as module globals
    import selectors
    import socket

    serve(socket.socket(fileno=raw.detach()), proxy_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
