"""A tiny threaded HTTP server base for fake providers (real sockets, real wire formats).

Why not mocks: the adapters' retry, timeout, header and concurrency behaviour only shows on a real
socket. Each fake is a context manager exposing `.url` (http://127.0.0.1:<port>).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Reply:
    """One scripted HTTP answer."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None, delay: float = 0.0):
        self.status, self.body, self.headers, self.delay = status, body, headers or {}, delay


class FakeServer:
    """Runs `handle(method, path, params, headers) -> Reply` for every request on a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[dict[str, Any]] = []  # every request: path, raw query, params, headers
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                headers = dict(self.headers.items())
                with fake._lock:
                    fake.received.append(
                        {
                            "path": parts.path,
                            "query": parts.query,
                            "params": params,
                            "headers": headers,
                            "raw_path": self.path,
                        }
                    )
                reply = fake.handle(parts.path, params, headers)
                if reply.delay:
                    threading.Event().wait(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):  # client timed out and left
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # silence stderr
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:  # pragma: no cover
        raise NotImplementedError

    def start(self) -> FakeServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, path: str | None = None, where: Callable[[dict[str, Any]], bool] | None = None) -> int:
        with self._lock:
            return sum(
                1
                for r in self.received
                if (path is None or r["path"] == path) and (where is None or where(r))
            )
