"""Tasks that move a whole PostgreSQL database to and from S3 with pg_dump/pg_restore.

The dump is pg_dump's custom format with its own compression off, compressed by
zstd on every core and sent to S3 part by part as it is produced: no temporary
file, memory bounded whatever the database's size. pg_dump runs inside a snapshot
exported by our own connection, which then counts every table's rows in that same
snapshot, so the manifest's row counts describe exactly what was dumped.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql

from runbook.backups import BackupMismatchError, StoredObject
from runbook.errors import RefusedError
from runbook.settings import get_settings
from tasks.postgres import connect, count_table_rows, server_url
from tasks.postgres_client import ClientProgram, child_env, client_version, pg_binary
from tasks.postgres_load import ParallelLoad
from tasks.storage_stream import MIB, VerifiedObject, backup_stream, decompress_into

READ_BYTES = MIB


# No task retries: a failed dump is redone whole by the next hourly backup.
@task(name="dump-database", cache_policy=NO_CACHE)
def dump_database(
    bucket: str, key: str, name: str
) -> tuple[StoredObject, dict[str, Any]]:
    """Stream a zstd-compressed custom-format pg_dump of the app's database to S3.

    Args:
        bucket: backup bucket.
        key: key of the dump object.
        name: the object's name inside the backup.
    """
    logger = get_run_logger()
    settings = get_settings()
    pg_dump = pg_binary("pg_dump")
    dump_major, dump_version = client_version(pg_dump)
    url = settings.secret("database_url")
    conninfo, env = child_env(url)
    started = time.perf_counter()
    with connect(url, autocommit=False, timeout_seconds=10) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute(
            "SELECT current_setting('server_version_num')::int, "
            "current_setting('server_version'), current_database(), "
            "pg_export_snapshot()"
        ).fetchone()
        assert row is not None
        server_num, server_version, database, snapshot = row
        if dump_major < server_num // 10000:
            raise RefusedError(
                f"refusing to dump: {pg_dump} is pg_dump {dump_version}, older than "
                f"the server's PostgreSQL {server_version}; point RUNBOOK_PG_BIN_DIR "
                f"at PostgreSQL {server_num // 10000}'s client programs"
            )
        argv = [
            str(pg_dump),
            "--format=custom",
            "--compress=0",
            f"--snapshot={snapshot}",
            "--no-password",
            f"--dbname={conninfo}",
        ]
        logger.debug("Starting pg_dump of %r into s3://%s/%s", database, bucket, key)
        # pg_dump starts first: its first bytes wait in the pipe while S3 is set up
        child = ClientProgram(
            argv, env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        dump_bytes = 0
        try:
            upload, compressor = backup_stream(bucket, key)
            # Popen's pipes are buffered readers, typed as plain IO
            dump = cast(io.BufferedReader, child.process.stdout)
            with (
                upload,
                compressor.stream_writer(
                    cast(IO[bytes], upload), closefd=False
                ) as zstd,
            ):
                # One buffer for every read: no fresh megabyte per chunk
                chunk = memoryview(bytearray(READ_BYTES))
                while size := dump.readinto(chunk):
                    dump_bytes += size
                    zstd.write(chunk[:size])
                child.wait(f"dump database {database!r}")
        finally:
            child.kill()
        row_counts = count_table_rows(conn)
        conn.rollback()
    seconds = round(time.perf_counter() - started, 3)
    logger.info(
        "Dumped database %r to s3://%s/%s: %s bytes, %s compressed, in %s s",
        database,
        bucket,
        key,
        dump_bytes,
        upload.size_bytes,
        seconds,
    )
    stored = StoredObject(
        name=name, key=key, size_bytes=upload.size_bytes, sha256=upload.sha256
    )
    facts = {
        "database": database,
        "server_version": server_version,
        "pg_dump_version": dump_version,
        "row_counts": row_counts,
        "dump_bytes": dump_bytes,
        "seconds": seconds,
    }
    return stored, facts


def _create_database(database: str) -> None:
    with connect(server_url(), timeout_seconds=10) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists:
            raise RefusedError(
                f"refusing to restore into database {database!r}: it already "
                "exists; drop it or restore another backup"
            )
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                sql.Identifier(database)
            )
        )


def _drop_database(database: str) -> None:
    with connect(server_url(), timeout_seconds=10) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(database)
            )
        )


def _restore_streaming(
    checked: VerifiedObject, argv: list[str], env: dict[str, str], what: str
) -> None:
    child = ClientProgram(argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        _feed_archive(checked, child, what)
        child.wait(what)
    finally:
        child.kill()


def _feed_archive(checked: VerifiedObject, child: ClientProgram, what: str) -> None:
    """Write the decompressed dump into ``child``'s stdin, then close it."""
    assert child.process.stdin is not None
    try:
        decompress_into(checked, child.process.stdin)
    except BrokenPipeError:
        # pg_restore stopped reading: a damaged object is the likelier cause
        checked.drain_and_verify()
        child.wait(what)
        raise
    finally:
        with contextlib.suppress(BrokenPipeError):
            child.process.stdin.close()


def _restore_parallel(
    checked: VerifiedObject,
    pg_restore: Path,
    database: str,
    jobs: int,
    what: str,
) -> None:
    """Stream the dump through pg_restore's script into ``jobs`` loading connections.

    pg_restore turns the archive into SQL (``--file=-``) as it arrives; a feeding
    thread writes the archive in while this thread loads what comes out.
    """
    url = server_url(database)
    conninfo, env = child_env(url)
    script = ClientProgram(
        [str(pg_restore), "--file=-"],
        env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    failures: list[BaseException] = []

    def feed() -> None:
        try:
            _feed_archive(checked, script, what)
        except BaseException as exc:  # raised below, in the task's thread
            failures.append(exc)

    feeder = threading.Thread(target=feed, name="restore-feed", daemon=True)
    feeder.start()
    load = ParallelLoad(url, conninfo, env, jobs)
    try:
        assert script.process.stdout is not None
        try:
            load.run(script.process.stdout)
        except BaseException:
            script.kill()
            feeder.join()
            # A damaged object breaks the script too: say so rather than how
            for failure in failures:
                if isinstance(failure, BackupMismatchError):
                    raise failure from None
            raise
        feeder.join()
        if failures:
            raise failures[0]
        script.wait(what)
    finally:
        script.kill()
        feeder.join()


# No task retries: a failed restore drops its database; rerunning is a decision.
@task(name="restore-database", cache_policy=NO_CACHE, timeout_seconds=12 * 3600)
def restore_database(
    bucket: str, stored: StoredObject, database: str
) -> dict[str, Any]:
    """Create ``database`` and restore a backup's dump into it, checking its sha256.

    The dump streams from S3 with no temporary file. With ``restore_jobs`` of 1
    pg_restore loads it over one connection; with more, every table's rows are
    split over that many connections (``ParallelLoad``). A failure drops the new
    database again.

    Args:
        bucket: backup bucket.
        stored: the dump object, as the manifest lists it.
        database: the new database; it must not exist.
    """
    logger = get_run_logger()
    jobs = get_settings().restore_jobs
    pg_restore = pg_binary("pg_restore")
    started = time.perf_counter()
    _create_database(database)
    logger.info("Created database %r", database)
    what = f"restore into database {database!r}"
    try:
        checked = VerifiedObject(bucket, stored)
        if jobs == 1:
            conninfo, env = child_env(server_url(database))
            argv = [
                str(pg_restore),
                "--exit-on-error",
                "--no-password",
                f"--dbname={conninfo}",
            ]
            _restore_streaming(checked, argv, env, what)
        else:
            _restore_parallel(checked, pg_restore, database, jobs, what)
    except BaseException:
        _drop_database(database)
        logger.warning("Dropped the partly restored database %r", database)
        raise
    seconds = round(time.perf_counter() - started, 3)
    logger.info(
        "Restored %s into database %r with %s job(s) in %s s",
        stored.key,
        database,
        jobs,
        seconds,
    )
    return {"database": database, "jobs": jobs, "seconds": seconds}
