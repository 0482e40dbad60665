"""Restore drill: prove every week that the newest backup restores, and how fast.

Restores the newest complete backup into a scratch database and a scratch Redis,
checks row counts and checksums against the manifest, measures how long that took
(the RTO a real restore would have) and how old the backup was (the RPO), drops the
scratch copies and compares both with the targets. Fails, and pages, when the drill
fails or the newest backup is older than the RPO target.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from runbook.backups import (
    DATABASE_OBJECT,
    REDIS_OBJECT,
    Component,
    Manifest,
    backup_lock,
    drill_database_name,
)
from runbook.errors import CheckFailedError
from runbook.redact import known_secrets, redact
from runbook.settings import get_settings
from tasks.notify import alert
from tasks.postgres import count_rows, database_name, drop_database, hold_lock
from tasks.postgres_dump import restore_database
from tasks.redis_restore import (
    count_redis_keys,
    fetch_redis_snapshot,
    make_temp_folder,
    scratch_server,
)
from tasks.storage_backups import find_newest_backup, verify_backup_objects


@flow(name="restore-drill", log_prints=False)
def restore_drill() -> dict[str, Any]:
    """Restore the newest backup into scratch copies, check it, report RTO and RPO."""
    logger = get_run_logger()
    settings = get_settings()
    result: dict[str, Any] = {
        "rto_target_minutes": settings.rto_minutes,
        "rpo_target_minutes": settings.rpo_minutes,
        "checks": {},
    }
    try:
        # Find the newest complete backup; its age is the RPO
        manifest = find_newest_backup([])
        if manifest is None:
            raise CheckFailedError("there is no complete backup to drill")
        result["backup_id"] = manifest.backup_id
        result["rpo_minutes"] = round(manifest.age_minutes(datetime.now(UTC)), 1)

        # Restore it into scratch copies and check it; the time taken is the RTO
        holder = f"runbook restore-drill {flow_run.get_name() or ''}".strip()
        lock = backup_lock(settings.environment, manifest.backup_id)
        with hold_lock(lock, holder, shared=True):
            started = time.perf_counter()
            result["checks"] = _drill(manifest)
            result["rto_minutes"] = round((time.perf_counter() - started) / 60, 2)

        # Compare with the targets
        result["rto_met"] = result["rto_minutes"] <= settings.rto_minutes
        result["rpo_met"] = result["rpo_minutes"] <= settings.rpo_minutes
        if not result["rpo_met"]:
            raise CheckFailedError(
                f"the newest complete backup {manifest.backup_id} is "
                f"{result['rpo_minutes']} minutes old, over the RPO target of "
                f"{settings.rpo_minutes}; check the backup flow's recent runs"
            )
        if not result["rto_met"]:
            raise CheckFailedError(
                f"the drill restore took {result['rto_minutes']} minutes, over the "
                f"RTO target of {settings.rto_minutes}"
            )
    except Exception as exc:
        # Report the failed drill and page on-call
        result.update(passed=False, error=redact(str(exc), known_secrets()))
        _leave_report(result)
        alert(
            f"Restore drill of {settings.environment} failed: {result['error']}",
            dedup_key=f"restore-drill-failed-{settings.environment}",
        )
        raise
    result["passed"] = True
    _leave_report(result)
    logger.info(
        "Restore drill passed: RTO %s min (target %s), RPO %s min (target %s)",
        result["rto_minutes"],
        settings.rto_minutes,
        result["rpo_minutes"],
        settings.rpo_minutes,
    )
    return result


def _drill(manifest: Manifest) -> dict[str, Any]:
    """Restore every component into a scratch copy, check it, drop the copies."""
    bucket = get_settings().backup_bucket
    checks: dict[str, Any] = {}
    folder = make_temp_folder("runbook-drill-")
    scratch_db = drill_database_name(database_name(), manifest.backup_id)
    try:
        if Component.DATABASE in manifest.components:
            assert manifest.database is not None
            drop_database(scratch_db)  # left over from a drill that died
            restored = restore_database(
                bucket, manifest.object(DATABASE_OBJECT), scratch_db
            )
            counts = count_rows(scratch_db)
            if counts != manifest.database.row_counts:
                raise CheckFailedError(
                    f"row counts of the restored backup {manifest.backup_id} differ "
                    "from its manifest"
                )
            checks["database"] = {
                "rows": sum(counts.values()),
                "tables": len(counts),
                "seconds": restored["seconds"],
            }
        if Component.UPLOADS in manifest.components:
            checks["uploads"] = {
                "objects_verified": verify_backup_objects(manifest.upload_objects())
            }
        if Component.REDIS in manifest.components:
            rdb = fetch_redis_snapshot(bucket, manifest.object(REDIS_OBJECT), folder)
            with scratch_server(rdb) as url:
                keys = count_redis_keys(url)
            checks["redis"] = {
                "keys_loaded": sum(keys.values()),
                "keys_at_backup": sum(manifest.redis.keys_per_db.values())
                if manifest.redis
                else None,
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if Component.DATABASE in manifest.components:
            drop_database(scratch_db, return_state=True)
    return checks


def _leave_report(result: dict[str, Any]) -> None:
    verdict = "passed" if result.get("passed") else "FAILED"
    lines = [
        f"## Restore drill: {verdict}",
        "",
        f"Backup `{result.get('backup_id', 'none')}`.",
        "",
        "| measure | this drill | target | met |",
        "|---|---|---|---|",
        _row("RTO (restore time)", result, "rto"),
        _row("RPO (backup age)", result, "rpo"),
    ]
    for component, facts in result.get("checks", {}).items():
        detail = ", ".join(f"{k} {v}" for k, v in facts.items())
        lines.append(f"| {component} | {detail} | | |")
    if "error" in result:
        lines += ["", f"**Failure:** {result['error']}"]
    create_markdown_artifact(
        key="restore-drill", markdown="\n".join(lines), description="Restore drill"
    )


def _row(label: str, result: dict[str, Any], measure: str) -> str:
    value = result.get(f"{measure}_minutes", "n/a")
    met = {True: "yes", False: "no"}.get(result.get(f"{measure}_met"), "n/a")  # type: ignore[arg-type]
    return (
        f"| {label} | {value} min | {result[f'{measure}_target_minutes']} min | {met} |"
    )
