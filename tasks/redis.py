"""Tasks that talk to Redis (or Valkey)."""

from __future__ import annotations

import time
from typing import Any

import redis
import redis.asyncio
from prefect import get_run_logger

from runbook.errors import TargetUnreachableError
from runbook.redact import redact
from runbook.settings import get_settings
from tasks._policy import probe_task


def client(url: str | None = None, timeout_seconds: float | None = None) -> redis.Redis:
    """Return a client for ``url`` (default: the app's Redis).

    Args:
        url: Redis URL; the app's when omitted.
        timeout_seconds: socket connect and read timeout.
    """
    settings = get_settings()
    timeout = timeout_seconds or settings.check_timeout_seconds
    return redis.Redis.from_url(
        url or settings.secret("redis_url"),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )


def unreachable(exc: redis.RedisError) -> TargetUnreachableError:
    """Translate a client error into one that never shows credentials."""
    return TargetUnreachableError(f"could not reach Redis: {redact(str(exc))}")


@probe_task("check-redis")
async def check_redis(verbose: bool = False) -> dict[str, Any]:
    """Send ``PING`` to Redis and time the answer."""
    logger = get_run_logger()
    settings = get_settings()
    conn = redis.asyncio.Redis.from_url(
        settings.secret("redis_url"),
        socket_connect_timeout=settings.check_timeout_seconds,
        socket_timeout=settings.check_timeout_seconds,
    )
    try:
        started = time.perf_counter()
        await conn.ping()
        result: dict[str, Any] = {
            "status": "up",
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if verbose:
            info = await conn.info()
            result.update(
                server_version=info.get("valkey_version") or info.get("redis_version"),
                used_memory_bytes=info.get("used_memory"),
                connected_clients=info.get("connected_clients"),
                keys=await conn.dbsize(),
            )
    except redis.RedisError as exc:
        raise unreachable(exc) from None
    finally:
        await conn.aclose()
    logger.info("Checked Redis: up in %s ms", result["latency_ms"])
    return result
