"""Hosts that fail at the socket level: one that accepts and never answers, and a refused port.

Why raw sockets: these are the failures that HTTP fakes cannot show - a TCP connection that is
accepted and read but never answered (a hung proxy or provider), and a port nothing listens on
(connection refused). The adapters must tell them apart from slow but working servers.
"""

from __future__ import annotations

import socket
import threading
import time


class SilentServer:
    """Accepts every TCP connection, reads the request and never answers (until closed).

    `.url` is http://127.0.0.1:<port>; `.requests` counts connections whose request bytes arrived.
    """

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.append(conn)
        try:
            if conn.recv(65536):
                with self._arrived:
                    self.requests += 1
                    self._arrived.notify_all()
        except OSError:
            pass

    def wait_for_requests(self, n: int, timeout: float) -> None:
        """Block until `n` requests arrived (AssertionError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while self.requests < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {self.requests} of {n} request(s) arrived within {timeout}s")
                self._arrived.wait(left)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            for c in self._conns:
                c.close()


def refused_url() -> str:
    """http://127.0.0.1:<port> of a port that was just bound and released: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


UNRESOLVABLE_URL = "http://no-such-host.invalid"  # RFC 2606: `.invalid` never resolves
