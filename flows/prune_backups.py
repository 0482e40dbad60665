"""Prune backups: keep what retention asks for, delete the rest, daily.

Keeps the newest backup of each of the newest N hours, days, ISO weeks and months
(counts from settings) and always the newest complete backup. Backups without a
manifest are deleted once older than a day (they are never restored from), and so
are multipart uploads left open. A backup a restore is reading is skipped; objects
that newer manifests still point at (unchanged uploads) are kept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from pydantic import Field

from runbook.audit import record_change
from runbook.backups import (
    Retention,
    backup_lock,
    backup_prefix,
    backup_time,
    select_retained,
)
from runbook.errors import RefusedError
from runbook.settings import get_settings
from tasks.postgres import hold_lock
from tasks.storage_backups import (
    abort_stale_uploads,
    delete_backup,
    list_backups,
    read_manifest,
)


@flow(name="prune-backups", log_prints=False)
def prune_backups(
    dry_run: bool = Field(
        False, description="Only list what would be deleted; delete nothing."
    ),
) -> dict[str, Any]:
    """Delete backups past retention, never the newest complete one or one in use."""
    logger = get_run_logger()
    settings = get_settings()
    now = datetime.now(UTC)

    # Decide what goes: complete backups past retention, old incomplete ones
    entries = list_backups()
    complete = [e["backup_id"] for e in entries if e["complete"]]
    kept = select_retained(
        complete,
        Retention(
            hourly=settings.retention_hourly,
            daily=settings.retention_daily,
            weekly=settings.retention_weekly,
            monthly=settings.retention_monthly,
        ),
    )
    cutoff = now - timedelta(hours=settings.prune_incomplete_after_hours)
    expired = [b for b in complete if b not in kept]
    abandoned = [
        e["backup_id"]
        for e in entries
        if not e["complete"] and backup_time(e["backup_id"]) < cutoff
    ]
    doomed = sorted(expired + abandoned, key=backup_time)
    capped = doomed[settings.prune_max_deletions :]
    doomed = doomed[: settings.prune_max_deletions]
    if capped:
        logger.warning(
            "Leaving %s more backups for the next run (cap of %s per run); raise "
            "RUNBOOK_PRUNE_MAX_DELETIONS if that is expected",
            len(capped),
            settings.prune_max_deletions,
        )

    deleted: list[str] = []
    skipped: dict[str, str] = {}
    stale_uploads: list[str] = []
    if not dry_run:
        # Keep every object a kept manifest points at, wherever it is stored
        keep_keys = {o.key for b in kept for o in read_manifest(b).objects}

        # Delete each backup unless a restore is reading it
        holder = f"runbook prune-backups {flow_run.get_name() or ''}".strip()
        for backup_id in doomed:
            try:
                with hold_lock(backup_lock(settings.environment, backup_id), holder):
                    delete_backup(backup_id, keep_keys)
            except RefusedError as exc:
                skipped[backup_id] = str(exc)
                logger.warning("Skipped backup %s: it is in use", backup_id)
                continue
            deleted.append(backup_id)
            record_change(
                "backup.deleted",
                f"s3/{settings.backup_bucket}/"
                + backup_prefix(settings.environment, backup_id),
                backup_id=backup_id,
                complete=backup_id in expired,
            )

    # Abort multipart uploads left open by runs that died
    stale_uploads = abort_stale_uploads(settings.prune_incomplete_after_hours, dry_run)

    # Leave the report
    rows = [
        {"backup_id": b, "action": "keep", "reason": reason}
        for b, reason in sorted(kept.items(), reverse=True)
    ]
    for backup_id in doomed:
        reason = "past retention" if backup_id in expired else "incomplete, old"
        action = "would delete" if dry_run else "deleted"
        if backup_id in skipped:
            action = "skipped (in use)"
        rows.append({"backup_id": backup_id, "action": action, "reason": reason})
    create_table_artifact(
        key="prune-backups",
        table=rows,
        description=("Dry run: " if dry_run else "") + "prune backups",
    )
    summary = {
        "dry_run": dry_run,
        "kept": sorted(kept),
        "deleted": deleted,
        "would_delete": doomed if dry_run else [],
        "skipped": sorted(skipped),
        "left_for_next_run": capped,
        "stale_multipart_uploads": stale_uploads,
    }
    logger.info(
        "Pruned backups: kept %s, %s %s, skipped %s",
        len(kept),
        "would delete" if dry_run else "deleted",
        len(doomed) if dry_run else len(deleted),
        len(skipped),
    )
    return summary
