"""Backup: the database, the uploads and Redis into S3, proven by a manifest.

Runbook page "Backups" used to say: ``pg_dump $DATABASE_URL > backup.sql``,
``aws s3 sync /uploads s3://.../uploads/DATE/``, ``redis-cli BGSAVE`` and a copy of
``dump.rdb`` from the Redis host. Now, every hour: the database streamed through
zstd into S3, the uploads that changed copied server-side, Redis's snapshot fetched
over the network; ``manifest.json`` written last. A failure leaves no manifest and
no open upload, and pages on-call.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from pydantic import Field

from runbook.audit import record_change
from runbook.backups import (
    DATABASE_OBJECT,
    REDIS_OBJECT,
    Component,
    DatabasePart,
    Manifest,
    RedisPart,
    StoredObject,
    UploadsPart,
    backup_lock,
    backup_prefix,
    new_backup_id,
    target_lock,
)
from runbook.redact import known_secrets, redact
from runbook.settings import get_settings
from tasks.notify import alert
from tasks.postgres import LockHeldError, hold_lock
from tasks.postgres_dump import dump_database
from tasks.redis_rdb import dump_redis
from tasks.storage_backups import (
    delete_partial_backup,
    find_newest_backup,
    write_manifest,
)
from tasks.storage_uploads import copy_uploads


@flow(name="backup", log_prints=False)
def backup(
    components: list[Component] = Field(
        default=[Component.DATABASE, Component.UPLOADS, Component.REDIS],
        description="What to back up: database, uploads, redis; all by default.",
        min_length=1,
        max_length=3,
    ),
) -> dict[str, Any]:
    """Back up the selected components into one new backup, its manifest last."""
    logger = get_run_logger()
    settings = get_settings()
    selected = list(dict.fromkeys(Component(name) for name in components))
    backup_id = new_backup_id()
    prefix = backup_prefix(settings.environment, backup_id)
    bucket = settings.backup_bucket
    started_at = datetime.now(UTC)
    holder = f"runbook backup {flow_run.get_name() or backup_id}"

    try:
        with (
            hold_lock(target_lock(settings.environment), holder),
            hold_lock(backup_lock(settings.environment, backup_id), holder),
        ):
            # Find the newest complete backup of the uploads: only changes are copied
            previous = None
            if Component.UPLOADS in selected:
                previous = find_newest_backup([Component.UPLOADS])

            # Dump the database, copy the uploads, fetch Redis's snapshot, at once
            started = time.perf_counter()
            futures: dict[Component, PrefectFuture[Any]] = {}
            if Component.DATABASE in selected:
                futures[Component.DATABASE] = dump_database.submit(
                    bucket, prefix + DATABASE_OBJECT, DATABASE_OBJECT
                )
            if Component.UPLOADS in selected:
                futures[Component.UPLOADS] = copy_uploads.submit(prefix, previous)
            if Component.REDIS in selected:
                futures[Component.REDIS] = dump_redis.submit(
                    bucket, prefix + REDIS_OBJECT, REDIS_OBJECT
                )
            wait(list(futures.values()))
            results = {name: future.result() for name, future in futures.items()}

            # Write the manifest, last: only now is the backup complete
            manifest = _manifest(backup_id, started_at, selected, results)
            manifest.timings_seconds["total"] = round(time.perf_counter() - started, 3)
            write_manifest(manifest)
    except Exception as exc:
        # Leave nothing half-written behind, and tell on-call why
        reason = redact(str(exc), known_secrets())
        logger.error("Backup %s failed: %s", backup_id, reason)
        if not isinstance(exc, LockHeldError):  # a restore runs: expected, no page
            delete_partial_backup(backup_id, return_state=True)
            alert(
                f"Backup {backup_id} of {settings.environment} failed: {reason}",
                dedup_key=f"backup-failed-{settings.environment}",
            )
        create_markdown_artifact(
            key="backup",
            markdown=f"## Backup {backup_id}: failed\n\n{reason}\n\n"
            "No manifest was written; the backup is incomplete and is never "
            "restored from.",
            description=f"Backup {backup_id} failed",
        )
        raise

    # Record the change and leave the report
    summary = _summary(manifest, bucket, prefix)
    record_change(
        "backup.created",
        f"s3/{bucket}/{prefix}",
        backup_id=backup_id,
        components=[str(c) for c in selected],
        bytes_stored=summary["bytes_stored"],
    )
    create_markdown_artifact(
        key="backup", markdown=_report(manifest, summary), description="Backup"
    )
    logger.info(
        "Backup %s complete: %s objects, %s bytes stored",
        backup_id,
        summary["objects"],
        summary["bytes_stored"],
    )
    return summary


def _manifest(
    backup_id: str,
    started_at: datetime,
    selected: list[Component],
    results: dict[Component, Any],
) -> Manifest:
    objects: list[StoredObject] = []
    timings: dict[str, float] = {}
    database = redis = uploads = None
    if Component.DATABASE in results:
        stored, facts = results[Component.DATABASE]
        objects.append(stored)
        timings["database"] = facts.pop("seconds")
        database = DatabasePart(**facts)
    if Component.UPLOADS in results:
        stored_uploads, uploads_part = results[Component.UPLOADS]
        objects += stored_uploads
        uploads = UploadsPart.model_validate(uploads_part)
    if Component.REDIS in results:
        stored, facts = results[Component.REDIS]
        objects.append(stored)
        timings["redis"] = facts.pop("seconds")
        redis = RedisPart(**facts)
    return Manifest(
        backup_id=backup_id,
        environment=get_settings().environment,
        started_at=started_at,
        completed_at=datetime.now(UTC),
        components=selected,
        database=database,
        redis=redis,
        uploads=uploads,
        objects=objects,
        timings_seconds=timings,
    )


def _summary(manifest: Manifest, bucket: str, prefix: str) -> dict[str, Any]:
    own = [o for o in manifest.objects if o.key.startswith(prefix)]
    return {
        "backup_id": manifest.backup_id,
        "environment": manifest.environment,
        "components": [str(c) for c in manifest.components],
        "manifest": f"s3://{bucket}/{prefix}manifest.json",
        "objects": len(manifest.objects),
        "objects_written": len(own),
        "bytes_stored": sum(o.size_bytes for o in own),
        "row_counts": manifest.database.row_counts if manifest.database else None,
        "redis_keys": manifest.redis.keys_per_db if manifest.redis else None,
        "uploads_copied": manifest.uploads.copied if manifest.uploads else None,
        "uploads_reused": manifest.uploads.reused if manifest.uploads else None,
        "timings_seconds": manifest.timings_seconds,
    }


def _report(manifest: Manifest, summary: dict[str, Any]) -> str:
    lines = [
        f"## Backup {manifest.backup_id}: complete",
        "",
        f"Manifest: `{summary['manifest']}`; {summary['objects_written']} objects "
        f"written ({summary['bytes_stored']:,} bytes), {summary['objects']} listed.",
        "",
        "| component | detail | seconds |",
        "|---|---|---|",
    ]
    timings = manifest.timings_seconds
    if manifest.database:
        rows = sum(manifest.database.row_counts.values())
        lines.append(
            f"| database | PostgreSQL {manifest.database.server_version}, "
            f"{len(manifest.database.row_counts)} tables, {rows:,} rows, "
            f"{manifest.database.dump_bytes:,} bytes dumped "
            f"| {timings.get('database', '')} |"
        )
    if manifest.uploads:
        lines.append(
            f"| uploads | {manifest.uploads.objects:,} objects from "
            f"{manifest.uploads.source}: {manifest.uploads.copied:,} copied, "
            f"{manifest.uploads.reused:,} unchanged | |"
        )
    if manifest.redis:
        lines.append(
            f"| redis | {manifest.redis.server_version}, "
            f"{sum(manifest.redis.keys_per_db.values()):,} keys, "
            f"{manifest.redis.rdb_bytes:,} bytes RDB | {timings.get('redis', '')} |"
        )
    return "\n".join(lines)
