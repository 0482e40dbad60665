"""S3 for the local stack: moto's S3 served in-process, with a storage-down switch.

Buckets and objects live in moto's in-memory backend of this process, so they survive
the ``storage-down`` fault being turned on and off. While the fault is active every
request is answered with the 503 ``ServiceUnavailable`` error S3 itself sends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

from sandbox.faults import Faults
from sandbox.wsgi import QuietRequestHandler, WsgiServer

logger = logging.getLogger(__name__)

_UNAVAILABLE_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>ServiceUnavailable</Code>"
    "<Message>Please reduce your request rate.</Message>"
    "<RequestId>{request_id}</RequestId>"
    "<HostId>{host_id}</HostId></Error>"
)

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _StorageDownMiddleware:
    """Answer every request with S3's 503 while the storage-down fault is active."""

    def __init__(self, app: WsgiApp, faults: Faults) -> None:
        self._app = app
        self._faults = faults

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        logger.debug("S3 %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
        if not self._faults.is_active("storage-down"):
            return self._app(environ, start_response)
        _discard_body(environ)
        request_id = uuid.uuid4().hex[:16].upper()
        body = _UNAVAILABLE_XML.format(
            request_id=request_id, host_id=uuid.uuid4().hex
        ).encode()
        start_response(
            "503 Service Unavailable",
            [
                ("Content-Type", "application/xml"),
                ("Content-Length", str(len(body))),
                ("x-amz-request-id", request_id),
            ],
        )
        return [body] if environ["REQUEST_METHOD"] != "HEAD" else []


def _discard_body(environ: dict[str, Any]) -> None:
    """Read the request body so the connection can be reused."""
    try:
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    stream = environ["wsgi.input"]
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)


class _MotoRequestHandler(QuietRequestHandler, MotoRequestHandler):
    """Keep moto's header handling and log requests at DEBUG."""


class S3Server:
    """Serve moto's S3 on a local port; storage-down makes it answer 503."""

    def __init__(self, faults: Faults) -> None:
        app = _StorageDownMiddleware(
            DomainDispatcherApplication(create_backend_app), faults
        )
        self._server = WsgiServer(app, name="s3", handler=_MotoRequestHandler)

    @property
    def url(self) -> str:
        """Return the endpoint URL; the server must have been started."""
        return self._server.url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in daemon threads and return the endpoint URL."""
        url = self._server.start(host, port)
        logger.info("Started S3 at %s", url)
        return url

    def stop(self) -> None:
        """Stop serving; the stored buckets stay in this process's memory."""
        self._server.stop(drop_connections=True)
        logger.info("Stopped S3")
