"""Tasks that talk to PostgreSQL."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.errors import TargetUnreachableError
from runbook.redact import redact
from runbook.settings import get_settings
from tasks._policy import RETRY_JITTER_FACTOR, only_transient


@contextlib.contextmanager
def connect(
    url: str | None = None, *, autocommit: bool = True, timeout_seconds: float = 5
) -> Iterator[psycopg.Connection[Any]]:
    """Open a connection to ``url`` (default: the primary), translating failures.

    Args:
        url: libpq URL; the primary database's when omitted.
        autocommit: whether each statement commits on its own.
        timeout_seconds: how long to wait for the server to accept the connection.
    """
    target = url or get_settings().secret("database_url")
    try:
        conn = psycopg.connect(
            target,
            autocommit=autocommit,
            connect_timeout=max(1, round(timeout_seconds)),
            application_name="runbook",
        )
    except psycopg.OperationalError as exc:
        raise TargetUnreachableError(
            f"could not connect to PostgreSQL: {redact(_first_line(exc))}"
        ) from None
    with conn:
        yield conn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


@task(
    name="check-database",
    retries=1,
    retry_delay_seconds=1,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=only_transient,
    timeout_seconds=30,
    cache_policy=NO_CACHE,
)
async def check_database(verbose: bool = False) -> dict[str, Any]:
    """Connect to the primary database, run ``SELECT 1`` and time it."""
    logger = get_run_logger()
    settings = get_settings()
    started = time.perf_counter()
    try:
        conn = await psycopg.AsyncConnection.connect(
            settings.secret("database_url"),
            autocommit=True,
            connect_timeout=max(1, round(settings.check_timeout_seconds)),
            application_name="runbook",
        )
    except psycopg.OperationalError as exc:
        raise TargetUnreachableError(
            f"could not connect to PostgreSQL: {redact(_first_line(exc))}"
        ) from None
    async with conn:
        await (await conn.execute("SELECT 1")).fetchone()
        result: dict[str, Any] = {
            "status": "up",
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if verbose:
            cursor = await conn.execute(
                "SELECT current_setting('server_version'), "
                "(SELECT count(*) FROM pg_stat_activity), "
                "current_setting('max_connections')::int, "
                "pg_database_size(current_database())"
            )
            row = await cursor.fetchone()
            assert row is not None
            result.update(
                server_version=row[0],
                connections=row[1],
                max_connections=row[2],
                size_bytes=row[3],
            )
    logger.info("Checked database: up in %s ms", result["latency_ms"])
    return result
