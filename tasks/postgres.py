"""Tasks that talk to PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runbook.errors import RefusedError, TargetUnreachableError
from runbook.redact import redact
from runbook.settings import get_settings
from tasks._policy import RETRY_JITTER_FACTOR, only_transient, probe_task


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


@probe_task("check-database")
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


# Backups and restores: locks, row counts and whole databases.

_LOCK_NAMESPACE = "bpmn-studio-runbook"


def server_url(database: str | None = None) -> str:
    """Return the primary's URL with its database switched to ``database``.

    Args:
        database: database to connect to; the lock database of the settings when
            omitted (never one that a restore renames).
    """
    settings = get_settings()
    return make_conninfo(
        settings.secret("database_url"),
        dbname=database or settings.backup_lock_database,
    )


def database_name() -> str:
    """Return the name of the app's database, as the primary's URL names it."""
    url = get_settings().secret("database_url")
    return str(conninfo_to_dict(url).get("dbname") or "postgres")


class LockHeldError(RefusedError):
    """Another run holds the lock this run needs; nothing was changed."""


def _lock_ids(name: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{_LOCK_NAMESPACE}:{name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    return key, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


@contextlib.contextmanager
def hold_lock(name: str, holder: str, *, shared: bool = False) -> Iterator[None]:
    """Hold advisory lock ``name`` on the primary for the block, or refuse at once.

    The lock lives in the target server itself, so it holds against every run
    touching that server wherever it was started (a worker, a laptop), and the
    server releases it the moment the holder's connection goes.

    Args:
        name: what is locked, e.g. ``production/target``.
        holder: who holds it, shown to whoever is refused.
        shared: take the lock shared (readers) instead of exclusive.
    """
    key, classid, objid = _lock_ids(name)
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    with connect(server_url()) as conn:
        conn.execute("SELECT set_config('application_name', %s, false)", (holder,))
        row = conn.execute(
            sql.SQL("SELECT {}(%s)").format(sql.Identifier(function)), (key,)
        ).fetchone()
        if not (row and row[0]):
            holders = conn.execute(
                "SELECT a.application_name FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
                (classid, objid),
            ).fetchall()
            names = ", ".join(sorted({str(h[0]) for h in holders})) or "another run"
            raise LockHeldError(
                f"refusing to start: {name} is locked by {names}; "
                "wait for it to finish (nothing was changed)"
            )
        get_run_logger().debug("Took lock %s as %s", name, holder)
        yield


def count_table_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Count the rows of every user table, exactly, keyed ``schema.table``.

    Args:
        conn: connection whose transaction fixes the snapshot counted.
    """
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY 1, 2"
    ).fetchall()
    counts: dict[str, int] = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


@task(
    name="count-rows",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=only_transient,
)
def count_rows(database: str) -> dict[str, int]:
    """Count the rows of every table of ``database`` on the primary."""
    with connect(server_url(database), timeout_seconds=10) as conn:
        counts = count_table_rows(conn)
    get_run_logger().info(
        "Counted rows of %s tables in database %r", len(counts), database
    )
    return counts


@task(
    name="drop-database",
    retries=2,
    retry_delay_seconds=2,
    cache_policy=NO_CACHE,
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=only_transient,
)
def drop_database(database: str) -> bool:
    """Drop ``database`` (terminating its sessions); tell whether it existed."""
    if database == database_name():
        raise RefusedError(f"refusing to drop the app's database {database!r}")
    with connect(server_url(), timeout_seconds=10) as conn:
        existed = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)
            )
        )
    if existed:
        get_run_logger().info("Dropped database %r", database)
    return bool(existed)


@task(name="swap-databases", cache_policy=NO_CACHE, timeout_seconds=120)
def swap_databases(live: str, restored: str, keep_as: str) -> None:
    """Put ``restored`` in the place of ``live``, keeping ``live`` as ``keep_as``.

    New connections to ``live`` are refused, its sessions terminated, and both
    renames made in one transaction, so the app sees one database or the other.

    Args:
        live: the app's database.
        restored: the verified copy restored beside it.
        keep_as: the name the old database keeps.
    """
    logger = get_run_logger()
    ident = sql.Identifier
    with connect(server_url(), timeout_seconds=10) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
                ident(live)
            )
        )
        try:
            # Wait up to 10 s for each session to be gone.
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) "
                "FROM pg_stat_activity "
                "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                ([live, restored],),
            ).fetchone()
            logger.info(
                "Terminated %s sessions on database %r", row[0] if row else 0, live
            )
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        ident(live), ident(keep_as)
                    )
                )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        ident(restored), ident(live)
                    )
                )
        finally:
            old = keep_as if _exists(conn, keep_as) else live
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                    ident(old)
                )
            )
    logger.info(
        "Swapped databases: %r now serves as %r, the old one kept as %r",
        restored,
        live,
        keep_as,
    )


def _exists(conn: psycopg.Connection[Any], database: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
    return row.fetchone() is not None
