"""BPMN Studio Web for the local stack: health, API, bundle and metrics of the real app.

The stub talks to the same PostgreSQL, Redis and S3 the runbooks do, and follows the
Kubernetes simulator: each request is served by one of the ready pods, round-robin,
and behaves like the image that pod runs. Faults from the shared ``Faults`` object
change its behaviour the way the runbook's incidents describe.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import threading
import time
from collections import Counter as TagCounter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import psycopg
import redis
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from sandbox.bundle import render_bundle
from sandbox.faults import Faults
from sandbox.wsgi import WsgiServer

logger = logging.getLogger(__name__)

DEFAULT_GLOBAL_RATE_LIMIT_PER_MINUTE = 1000
ERRORS_IMAGE_FAILURE_RATE = 0.05
ERROR_SPIKE_FAILURE_RATE = 0.10
SLOW_QUERY_SECONDS = 0.3
_FAULT_POLL_SECONDS = 0.1
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 1, 2.5, 5)

_ROUTES = Map(
    [
        Rule("/health", endpoint="health"),
        Rule("/metrics", endpoint="metrics"),
        Rule("/static/js/bpmn.bundle.js", endpoint="bundle"),
        Rule("/api/diagrams", endpoint="list_diagrams"),
        Rule("/api/diagrams/<int:diagram_id>", endpoint="get_diagram"),
        Rule("/api/users/<int:user_id>", endpoint="get_user"),
    ]
)


class DatabaseUnavailableError(Exception):
    """The API could not reach the database."""


def image_tag(image: str) -> str:
    """Return the tag of a container image reference ('latest' when it has none)."""
    name = image.split("@", 1)[0]
    last_part = name.rsplit("/", 1)[-1]
    return last_part.rsplit(":", 1)[1] if ":" in last_part else "latest"


def _json(document: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(document, default=str), status=status, mimetype="application/json"
    )


class AppStub:
    """Serve BPMN Studio Web's routes against the local stack's real backends."""

    def __init__(  # noqa: PLR0917 - the services process passes these in order
        self,
        database_url: str,
        redis_url: str,
        s3_endpoint_url: str,
        uploads_bucket: str,
        faults: Faults,
        serving_images: Callable[[], list[str]],
    ) -> None:
        self._database_url = database_url
        self._uploads_bucket = uploads_bucket
        self._faults = faults
        self._serving_images = serving_images
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=1, socket_connect_timeout=1
        )
        self._s3 = boto3.client(
            "s3",
            endpoint_url=s3_endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's fixed credentials
            config=Config(
                connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1}
            ),
        )
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._next_pod = itertools.count()
        # Seeded so a failure rate holds over many requests, not per request count.
        self._random = random.Random(5)
        self._checks = ThreadPoolExecutor(4, thread_name_prefix="app-health")
        self._server = WsgiServer(self._wsgi, name="app")
        self._address: tuple[str, int] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._registry = CollectorRegistry()
        self._requests = Counter(
            "http_requests_total",
            "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"],
            registry=self._registry,
        )
        self._latency = Histogram(
            "http_request_duration_seconds",
            "Time taken to answer a request, by route.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self._registry,
        )

    @property
    def url(self) -> str:
        """Return the base URL the app listens on; it must have been started."""
        if self._address is None:
            raise RuntimeError("The app stub is not started.")
        host, port = self._address
        return f"http://{host}:{port}"

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving in daemon threads and return the base URL."""
        self._stopping.clear()
        url = self._server.start(host, port)
        self._address = self._server.address
        if self._faults.is_active("app-down"):
            self._server.stop(drop_connections=True)
        self._watcher = threading.Thread(
            target=self._watch_app_down, name="app-fault-watch", daemon=True
        )
        self._watcher.start()
        logger.info("Started the app stub at %s", url)
        return url

    def stop(self) -> None:
        """Stop serving for good and close the app's connections to its backends."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        self._server.stop(drop_connections=True)
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=1)
        self._checks.shutdown(wait=False, cancel_futures=True)
        self._redis.close()
        logger.info("Stopped the app stub")

    def _watch_app_down(self) -> None:
        """Close the listening port while app-down is active; reopen it when cleared."""
        while not self._stopping.wait(_FAULT_POLL_SECONDS):
            down = self._faults.is_active("app-down")
            if down and self._server.running:
                self._server.stop(drop_connections=True)
                logger.info("Closed the app's port for fault app-down")
            elif not down and not self._server.running and self._address:
                try:
                    self._server.start(*self._address)
                except OSError as exc:
                    logger.warning("Could not reopen the app's port, retrying: %s", exc)
                    continue
                logger.info("Reopened the app's port at %s", self.url)

    # Request handling

    def _wsgi(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        started = time.perf_counter()
        adapter = _ROUTES.bind_to_environ(environ)
        route = "unmatched"
        try:
            rule, arguments = adapter.match(return_rule=True)
            route = rule.rule
            response = self._dispatch(request, str(rule.endpoint), arguments)
        except HTTPException as exc:
            response = _json({"error": exc.description}, exc.code or 500)
        self._requests.labels(request.method, route, str(response.status_code)).inc()
        self._latency.labels(route).observe(time.perf_counter() - started)
        logger.debug("%s %s -> %s", request.method, request.path, response.status_code)
        return response(environ, start_response)

    def _dispatch(
        self, request: Request, endpoint: str, arguments: Mapping[str, Any]
    ) -> Response:
        if endpoint == "metrics":
            return Response(
                generate_latest(self._registry), mimetype=CONTENT_TYPE_LATEST
            )
        images = self._serving_images()
        if not images:
            if endpoint == "health":
                return self._health(images, tag=None)
            return _json({"error": "No pod is ready to serve the request."}, 503)
        with self._lock:
            image = images[next(self._next_pod) % len(images)]
            draw = self._random.random()
        tag = image_tag(image)
        failure_rate = ERRORS_IMAGE_FAILURE_RATE if tag.endswith("-errors") else 0.0
        if self._faults.is_active("error-spike"):
            failure_rate = max(failure_rate, ERROR_SPIKE_FAILURE_RATE)
        if draw < failure_rate:
            response = _json({"error": "Internal server error."}, 500)
        else:
            response = self._serve(request, endpoint, arguments, images, tag)
        response.headers["X-App-Version"] = tag
        return response

    def _serve(
        self,
        request: Request,
        endpoint: str,
        arguments: Mapping[str, Any],
        images: list[str],
        tag: str,
    ) -> Response:
        if request.path.startswith("/api/"):
            limited = self._check_rate_limit(request.headers.get("X-User-Id"))
            if limited is not None:
                return limited
        try:
            if endpoint == "health":
                return self._health(images, tag)
            if endpoint == "bundle":
                return self._bundle(request, tag)
            if endpoint == "list_diagrams":
                limit = min(max(request.args.get("limit", 20, type=int), 1), 100)
                rows = self._query(
                    "SELECT id, title, updated_at FROM diagrams"
                    " ORDER BY updated_at DESC, id DESC LIMIT %s",
                    (limit,),
                )
                return _json({"diagrams": rows})
            if endpoint == "get_diagram":
                rows = self._query(
                    "SELECT xml FROM diagrams WHERE id = %s", (arguments["diagram_id"],)
                )
                if not rows:
                    return _json({"error": "Diagram not found."}, 404)
                return Response(rows[0]["xml"], mimetype="application/xml")
            rows = self._query(
                "SELECT id, email, name, created_at FROM users WHERE id = %s",
                (arguments["user_id"],),
            )
            if not rows:
                return _json({"error": "User not found."}, 404)
            return _json(rows[0])
        except DatabaseUnavailableError:
            return _json({"error": "The database is unavailable."}, 503)

    def _bundle(self, request: Request, tag: str) -> Response:
        body = render_bundle(tag, broken=self._faults.is_active("broken-bundle"))
        etag = hashlib.sha256(body).hexdigest()[:20]
        if etag in request.if_none_match:
            response = Response(status=304)
        else:
            response = Response(body, mimetype="application/javascript")
        response.set_etag(etag)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    def _check_rate_limit(self, user_id: str | None) -> Response | None:
        if not user_id or not user_id.isdigit():
            return None
        key = f"rate:user:{user_id}"
        try:
            pipe = self._redis.pipeline()
            pipe.incr(key)
            pipe.expire(key, 60, nx=True)
            pipe.get("rate:limit:global")
            pipe.ttl(key)
            count, _, raw_limit, ttl_seconds = pipe.execute()
        except redis.RedisError as exc:
            # The app fails open: requests are served while Redis is away.
            logger.debug("Skipped the rate limit; Redis failed: %s", exc)
            return None
        limit = DEFAULT_GLOBAL_RATE_LIMIT_PER_MINUTE
        if raw_limit is not None and raw_limit.isdigit():
            limit = int(raw_limit)
        if count <= limit:
            return None
        response = _json({"error": "Rate limit exceeded; try again later."}, 429)
        response.headers["Retry-After"] = str(max(int(ttl_seconds), 1))
        response.headers["X-RateLimit-Limit"] = str(limit)
        return response

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        if self._faults.is_active("slow-queries"):
            time.sleep(SLOW_QUERY_SECONDS)
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._database_url,
                    min_size=1,
                    max_size=4,
                    open=False,
                    kwargs={"connect_timeout": 2},
                    check=ConnectionPool.check_connection,
                    name="app-stub",
                )
                self._pool.open(wait=False)
            pool = self._pool
        try:
            with (
                pool.connection(timeout=2) as conn,
                conn.cursor(row_factory=dict_row) as cursor,
            ):
                cursor.execute(sql, params)
                return cursor.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            logger.debug("Database query failed: %s", type(exc).__name__)
            raise DatabaseUnavailableError from exc

    # Health

    def _health(self, images: list[str], tag: str | None) -> Response:
        futures = {
            "database": self._checks.submit(self._check_database),
            "redis": self._checks.submit(self._check_redis),
            "storage": self._checks.submit(self._check_storage),
        }
        checks: dict[str, dict[str, Any]] = {"app": _check_app(images)}
        checks.update({name: future.result() for name, future in futures.items()})
        healthy = all(check["status"] == "ok" for check in checks.values())
        versions = TagCounter(image_tag(image) for image in images)
        document = {
            "status": "ok" if healthy else "degraded",
            "checks": checks,
            "version": versions.most_common(1)[0][0] if versions else tag,
        }
        return _json(document, 200 if healthy else 503)

    def _check_database(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            if self._faults.is_active("slow-queries"):
                time.sleep(SLOW_QUERY_SECONDS)
            with psycopg.connect(self._database_url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return _failed("The database did not accept a connection.")
        except psycopg.Error:
            return _failed("The database did not answer SELECT 1.")
        return _passed(started)

    def _check_redis(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            self._redis.ping()
        except redis.TimeoutError:
            return _failed("Redis did not answer PING within 1 s.")
        except redis.RedisError:
            return _failed("Redis did not accept a connection.")
        return _passed(started)

    def _check_storage(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            self._s3.head_bucket(Bucket=self._uploads_bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return _failed(f"The uploads bucket answered HTTP {status}.")
        except BotoCoreError:
            return _failed("The storage endpoint did not answer.")
        return _passed(started)


def _check_app(images: list[str]) -> dict[str, Any]:
    if not images:
        return _failed("No pod is ready.")
    return {"status": "ok", "ready_pods": len(images)}


def _passed(started: float) -> dict[str, Any]:
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return {"status": "ok", "latency_ms": latency_ms}


def _failed(error: str) -> dict[str, Any]:
    return {"status": "error", "error": error}
