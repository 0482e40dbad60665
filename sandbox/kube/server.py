"""HTTP transport for the simulated API server (stdlib ``http.server``)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from sandbox.kube.api import Api
from sandbox.kube.messages import Request, Response

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiHTTPServer

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            accept=self.headers.get("Accept") or "application/json",
            content_type=self.headers.get("Content-Type") or "application/json",
            body=body,
        )
        resp = self.server.api.handle(req)
        log.debug("%s %s -> %s", self.command, self.path, resp.status)
        if resp.stream is not None:
            self._send_stream(resp)
        else:
            self._send(resp)

    def _send(self, resp: Response) -> None:
        if isinstance(resp.body, str):
            payload = resp.body.encode()
        else:
            payload = json.dumps(resp.body).encode()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_stream(self, resp: Response) -> None:
        assert resp.stream is not None
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in resp.stream:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            log.debug("Watch client went away: %s", self.path)
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log; requests are logged at DEBUG."""


class ApiHTTPServer(ThreadingHTTPServer):
    """Serve an ``Api`` over HTTP in daemon threads."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: Api) -> None:
        super().__init__(address, _Handler)
        self.api = api


def serve(api: Api, host: str, port: int) -> tuple[ApiHTTPServer, threading.Thread]:
    """Bind a server for ``api`` and start serving it in a daemon thread."""
    httpd = ApiHTTPServer((host, port), api)
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.05,), name="kube-api", daemon=True
    )
    thread.start()
    return httpd, thread
