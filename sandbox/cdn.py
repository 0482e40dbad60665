"""The CDN in front of the app: a caching reverse proxy with purge, like the real edge.

GET and HEAD under ``/static/`` are cached by path for the origin's ``max-age``
(``s-maxage`` first; ``no-store`` and ``private`` are not cached). Every other request
is passed to the origin uncached. ``PURGE <path>`` drops one path, ``PURGE /prefix*``
a prefix, and ``PURGE /`` or any PURGE with ``X-Purge-All`` drops everything. When the
origin fails, a cached copy is served stale rather than an error.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from werkzeug.wrappers import Request, Response

from sandbox.faults import Faults
from sandbox.wsgi import WsgiServer

logger = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 300
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-encoding",
    "date",
    "server",
}
_MAX_AGE = re.compile(r"(?:^|,)\s*(s-maxage|max-age)\s*=\s*(\d+)", re.IGNORECASE)


@dataclass
class _Entry:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float
    ttl_seconds: float

    def age_seconds(self, now: float) -> int:
        return int(now - self.stored_at)


def cache_ttl_seconds(cache_control: str | None) -> float | None:
    """Return how long a response may be cached, or None when it must not be."""
    value = (cache_control or "").lower()
    if "no-store" in value or "private" in value:
        return None
    ages: dict[str, int] = {
        name: int(seconds) for name, seconds in _MAX_AGE.findall(value)
    }
    return float(ages.get("s-maxage", ages.get("max-age", DEFAULT_TTL_SECONDS)))


class CdnStub:
    """Cache the origin's static files by path and answer PURGE requests."""

    def __init__(self, origin_url: str, faults: Faults) -> None:
        self._origin_url = origin_url.rstrip("/")
        self._faults = faults
        self._client = httpx.Client(timeout=5.0)
        self._cache: dict[str, _Entry] = {}
        self._stats = {"hits": 0, "misses": 0, "stale": 0, "purges": 0, "passes": 0}
        self._lock = threading.Lock()
        self._server = WsgiServer(self._wsgi, name="cdn")

    @property
    def url(self) -> str:
        """Return the CDN's base URL; it must have been started."""
        return self._server.url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in daemon threads and return the base URL."""
        url = self._server.start(host, port)
        logger.info("Started the CDN at %s in front of %s", url, self._origin_url)
        return url

    def stop(self) -> None:
        """Stop serving and forget the cache."""
        self._server.stop(drop_connections=True)
        self._client.close()
        with self._lock:
            self._cache.clear()
        logger.info("Stopped the CDN")

    def _wsgi(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        logger.debug("CDN %s %s", request.method, request.path)
        if request.method == "PURGE":
            response = self._purge(request)
        elif request.path == "/_cdn/stats":
            response = self._stats_response()
        elif request.method in ("GET", "HEAD") and request.path.startswith("/static/"):
            response = self._cached(request)
        else:
            response = self._pass(request)
        return response(environ, start_response)

    def _cached(self, request: Request) -> Response:
        key = request.path
        now = time.time()
        with self._lock:
            entry = self._cache.get(key)
            fresh = entry is not None and now - entry.stored_at < entry.ttl_seconds
            if fresh:
                self._stats["hits"] += 1
        if entry is not None and fresh:
            return _from_entry(entry, "HIT", now)

        try:
            upstream = self._fetch("GET", request)
        except httpx.HTTPError as exc:
            if entry is not None:
                return self._stale(entry, now, f"origin unreachable: {exc!r}")
            return _json({"error": "The origin did not answer."}, 502)
        if upstream.status_code >= 500 and entry is not None:
            return self._stale(entry, now, f"origin answered {upstream.status_code}")

        headers = _forwardable(upstream.headers)
        ttl_seconds = cache_ttl_seconds(upstream.headers.get("cache-control"))
        fetched = _Entry(upstream.status_code, headers, upstream.content, now, 0.0)
        with self._lock:
            self._stats["misses"] += 1
            if upstream.status_code == 200 and ttl_seconds:
                fetched.ttl_seconds = ttl_seconds
                self._cache[key] = fetched
        return _from_entry(fetched, "MISS", now)

    def _stale(self, entry: _Entry, now: float, reason: str) -> Response:
        logger.warning("Served a stale copy because the %s; check the app", reason)
        with self._lock:
            self._stats["stale"] += 1
        return _from_entry(entry, "STALE", now)

    def _pass(self, request: Request) -> Response:
        with self._lock:
            self._stats["passes"] += 1
        try:
            upstream = self._fetch(request.method, request)
        except httpx.HTTPError:
            return _json({"error": "The origin did not answer."}, 502)
        response = Response(
            upstream.content,
            status=upstream.status_code,
            headers=_forwardable(upstream.headers),
        )
        response.headers["X-Cache"] = "PASS"
        return response

    def _fetch(self, method: str, request: Request) -> httpx.Response:
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "host"
        }
        return self._client.request(
            method,
            self._origin_url + request.full_path.rstrip("?"),
            headers=headers,
            content=request.get_data() if method not in ("GET", "HEAD") else None,
        )

    def _purge(self, request: Request) -> Response:
        path = request.path
        with self._lock:
            if path == "/" or "X-Purge-All" in request.headers:
                purged = sorted(self._cache)
            elif path.endswith("*"):
                purged = sorted(key for key in self._cache if key.startswith(path[:-1]))
            else:
                purged = [path] if path in self._cache else []
            for key in purged:
                del self._cache[key]
            self._stats["purges"] += 1
        logger.info("Purged %s cached paths for PURGE %s", len(purged), path)
        return _json({"status": "ok", "purged": purged})

    def _stats_response(self) -> Response:
        now = time.time()
        with self._lock:
            stats = dict(self._stats)
            entries = {
                key: {"age_seconds": entry.age_seconds(now), "bytes": len(entry.body)}
                for key, entry in sorted(self._cache.items())
            }
        lookups = stats["hits"] + stats["misses"]
        hit_ratio = round(stats["hits"] / lookups, 3) if lookups else 0.0
        return _json({**stats, "hit_ratio": hit_ratio, "entries": entries})


def _forwardable(headers: httpx.Headers) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in _HOP_BY_HOP]


def _from_entry(entry: _Entry, cache_status: str, now: float) -> Response:
    response = Response(entry.body, status=entry.status, headers=entry.headers)
    response.headers["X-Cache"] = cache_status
    response.headers["Age"] = str(entry.age_seconds(now))
    return response


def _json(document: Any, status: int = 200) -> Response:
    return Response(json.dumps(document), status=status, mimetype="application/json")
