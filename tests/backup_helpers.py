"""Probes shared by the backup and restore tests: what is in S3, PostgreSQL, Redis."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import redis
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from psycopg import sql

from flows.backup import backup
from runbook.backups import MANIFEST_NAME, Manifest, backup_prefix
from runbook.settings import get_settings
from sandbox.stack import Sandbox


def run(flow: Any, **parameters: Any) -> tuple[bool, Any]:
    """Run a flow on the real engine; return (completed, result or exception)."""
    state = flow(**parameters, return_state=True)
    return state.is_completed(), state.result(raise_on_failure=False)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def s3() -> Any:
    """Return an S3 client for the stack, from the settings."""
    from tasks.storage import client

    return client(timeout_seconds=30)


def backup_keys(backup_id: str) -> list[str]:
    """Return the keys under a backup's prefix."""
    settings = get_settings()
    prefix = backup_prefix(settings.environment, backup_id)
    listed = s3().list_objects_v2(Bucket=settings.backup_bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def read_manifest(backup_id: str) -> Manifest:
    """Read a backup's manifest straight from the bucket."""
    settings = get_settings()
    key = backup_prefix(settings.environment, backup_id) + MANIFEST_NAME
    body = s3().get_object(Bucket=settings.backup_bucket, Key=key)["Body"].read()
    return Manifest.model_validate_json(body)


def open_multipart_uploads() -> list[str]:
    """Return the keys of multipart uploads open under this test's environment."""
    settings = get_settings()
    answer = s3().list_multipart_uploads(
        Bucket=settings.backup_bucket, Prefix=f"{settings.environment}/"
    )
    return [u["Key"] for u in answer.get("Uploads", [])]


def database_url(database: str | None = None) -> str:
    """Return the stack's database URL, for ``database`` when given."""
    url = get_settings().secret("database_url")
    return url if database is None else url.rsplit("/", 1)[0] + f"/{database}"


def table_fingerprints(database: str | None = None) -> dict[str, str]:
    """Return an md5 of every row of every table, by table."""
    prints = {}
    with psycopg.connect(database_url(database), autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        ]
        for table in sorted(tables):
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                "FROM {} t"
            ).format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
            prints[table] = row[0] if row else ""
    return prints


def databases() -> set[str]:
    """Return the names of the stack's databases."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def upload_checksums() -> dict[str, str]:
    """Return the sha256 of every object in the uploads bucket, by key."""
    client = s3()
    bucket = get_settings().uploads_bucket
    sums = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            sums[item["Key"]] = hashlib.sha256(body).hexdigest()
    return sums


def redis_client() -> redis.Redis:
    """Return a client for the stack's Redis."""
    return redis.Redis.from_url(get_settings().secret("redis_url"))


def redis_state() -> dict[bytes, tuple[bytes | None, int]]:
    """Return every key's DUMP payload and PTTL."""
    conn = redis_client()
    try:
        return {key: (conn.dump(key), conn.pttl(key)) for key in conn.scan_iter()}
    finally:
        conn.close()


def notifications(stack: Sandbox) -> list[dict[str, Any]]:
    """Return what the stack's notification receiver has received."""
    url = stack.status()["notifications_url"]
    return list(httpx.get(f"{url}/_requests", timeout=10).json())


def artifact(key: str) -> Any:
    """Return the newest artifact with ``key``."""
    import asyncio

    async def latest() -> Any:
        async with get_client() as client:
            return await client.read_latest_artifacts(limit=100)

    found = [a for a in asyncio.run(latest()) if a.key == key]
    return found[0] if found else None


def run_cli(*args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``runbook ARGS`` against the settings in force; return (code, JSON, log)."""
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        **{
            name: value
            for name, value in os.environ.items()
            if name.startswith("RUNBOOK_")
        },
    }
    done = subprocess.run(
        [sys.executable, "-m", "runbook.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    try:
        body = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        body = {}
    return done.returncode, body, done.stderr


@contextlib.contextmanager
def backup_waiting_on_a_lock() -> Iterator[dict[str, Any]]:
    """Start a full backup that waits on a table lock, its dump's upload open.

    On exit the lock goes and the backup is joined; ``outcome["result"]`` then holds
    its ``(completed, result)``.
    """
    blocker = psycopg.connect(database_url())
    blocker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
    outcome: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=run(backup)), daemon=True
    )
    runner.start()
    try:
        wait_until(open_multipart_uploads, "the dump's multipart upload")
        yield outcome
    finally:
        blocker.close()
        runner.join(timeout=120)
