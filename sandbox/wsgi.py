"""A small WSGI server for the local stack's stubs: start, stop, reopen the port."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

logger = logging.getLogger(__name__)


class QuietRequestHandler(WSGIRequestHandler):
    """Log each request at DEBUG through this module's logger instead of stderr."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %r %s", self.address_string(), self.requestline, code)

    def log(self, type: str, message: str, *args: Any) -> None:
        level = logging.WARNING if type == "error" else logging.DEBUG
        logger.log(level, "%s %s", self.address_string(), message % args)


class _TrackingServer(ThreadedWSGIServer):
    """A threaded WSGI server that can drop its open connections, like a killed pod."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def log(self, type: str, message: str, *args: Any) -> None:
        # Werkzeug reports an app's unhandled exception here, traceback included.
        level = logging.ERROR if type == "error" else logging.DEBUG
        logger.log(level, message, *args)

    def drop_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class WsgiServer:
    """Serve a WSGI app from daemon threads; stop and start again on the same port."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        name: str,
        handler: type[WSGIRequestHandler] = QuietRequestHandler,
    ) -> None:
        self._app = app
        self._name = name
        self._handler = handler
        self._server: _TrackingServer | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    @property
    def running(self) -> bool:
        """Return whether the port is open."""
        return self._server is not None

    @property
    def url(self) -> str:
        """Return the base URL; the server must have been started once."""
        if self.address is None:
            raise RuntimeError(f"The {self._name} server was never started.")
        return f"http://{self.address[0]}:{self.address[1]}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Open the port and serve in a daemon thread; return the base URL."""
        server = _TrackingServer(host, port, self._app, handler=self._handler)
        self._server = server
        self.address = (host, server.server_port)
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{self._name}-server",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self, *, drop_connections: bool = False) -> None:
        """Close the port; with drop_connections also reset open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if drop_connections:
            server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
