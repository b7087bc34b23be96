"""A TCP relay in front of a service (a database, an object store emulator) that a test can cut and
restore on the same port: an outage of the service as its clients see it, while the service itself keeps
running (and keeps its state: moto's S3 lives in memory and would come back empty from a restart)."""

from __future__ import annotations

import contextlib
import socket
import threading


class Relay:
    """Forwards every connection to ``target``. ``cut`` closes the open connections and refuses new ones
    (accepted, then closed at once, as a failing service's load balancer does); ``restore`` forwards
    again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            if not self.up.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._forward, args=(client, server), daemon=True).start()

    def _forward(self, client: socket.socket, server: socket.socket) -> None:
        back = threading.Thread(target=self._pipe, args=(server, client), daemon=True)
        back.start()
        self._pipe(client, server)
        back.join()
        with self._lock:  # both directions ended: nothing uses the sockets any more
            self._open = [s for s in self._open if s is not client and s is not server]
        client.close()
        server.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            connections, self._open = self._open, []
        for s in connections:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()
