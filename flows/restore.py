"""Restore: bring a verified backup back, beside the live data or in its place.

Runbook page "Restore" used to say: ``psql < backup.sql``, the reverse ``aws s3
sync``, and stopping Redis to swap ``dump.rdb``. Now: check the backup against its
manifest before anything is touched; restore the database beside the live one and
check its row counts; with ``mode=replace`` (confirmed by the database's name and,
from the UI, approved) swap it in, keeping the old one, copy back the uploads that
differ and the Redis keys with their TTLs.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import Field

from runbook.approval import request_approval, require_confirmation
from runbook.audit import record_change
from runbook.backups import (
    BACKUP_ID_PATTERN,
    DATABASE_OBJECT,
    REDIS_OBJECT,
    Component,
    Manifest,
    backup_lock,
    before_restore_name,
    restore_database_name,
    staging_database_name,
    target_lock,
)
from runbook.errors import CheckFailedError, RefusedError
from runbook.settings import get_settings
from tasks.postgres import (
    count_rows,
    database_name,
    drop_database,
    hold_lock,
    swap_databases,
)
from tasks.postgres_dump import restore_database
from tasks.redis_restore import (
    copy_redis_keys,
    count_redis_keys,
    fetch_redis_snapshot,
    make_temp_folder,
    scratch_server,
)
from tasks.storage_backups import (
    find_newest_backup,
    read_manifest,
    verify_backup_objects,
)
from tasks.storage_uploads import restore_uploads


class Mode(StrEnum):
    """Where a restore puts the data."""

    NEW = "new"
    REPLACE = "replace"


@flow(name="restore", log_prints=False)
def restore(
    *,
    backup_id: str | None = Field(
        None,
        description="Backup to restore, e.g. 20261203T163000Z-1a2b3c; default: "
        "the newest complete backup holding the components.",
        pattern=BACKUP_ID_PATTERN,
    ),
    components: list[Component] = Field(
        default=[Component.DATABASE, Component.UPLOADS, Component.REDIS],
        description="What to restore: database, uploads, redis; all by default.",
        min_length=1,
        max_length=3,
    ),
    mode: Mode = Field(
        Mode.NEW,
        description="new: restore the database into <db>_restore_<backup_id> and "
        "only verify uploads and Redis, touching nothing live; replace: put the "
        "backup in place of the live data.",
    ),
    confirm: str | None = Field(
        None,
        description="For mode=replace or flush_redis: the database's exact name.",
        max_length=63,
    ),
    delete_extra_uploads: bool = Field(
        False, description="replace: also delete uploads that are not in the backup."
    ),
    flush_redis: bool = Field(
        False, description="replace: empty Redis before copying the keys back."
    ),
) -> dict[str, Any]:
    """Restore a backup after checking it against its manifest; replace if confirmed."""
    logger = get_run_logger()
    settings = get_settings()
    database = database_name()
    selected = list(dict.fromkeys(Component(name) for name in components))
    replace = Mode(mode) is Mode.REPLACE

    # Check the rails before anything is read or touched
    if replace:
        require_confirmation(database, confirm, f"replace {database} with a backup")
    if flush_redis:
        if not replace:
            raise RefusedError("refusing to flush Redis outside mode=replace")
        require_confirmation(database, confirm, "flush Redis before the restore")

    # Find the backup and read its manifest
    manifest = read_manifest(backup_id) if backup_id else find_newest_backup(selected)
    if manifest is None:
        raise RefusedError(
            f"there is no complete backup holding {', '.join(selected)} to restore"
        )
    missing = [c for c in selected if c not in manifest.components]
    if missing:
        raise RefusedError(
            f"backup {manifest.backup_id} holds no {', '.join(missing)}; "
            "choose the components it holds or another backup"
        )
    holder = f"runbook restore {flow_run.get_name() or manifest.backup_id}"
    env = settings.environment
    summary: dict[str, Any] = {
        "backup_id": manifest.backup_id,
        "mode": str(mode),
        "components": [str(c) for c in selected],
    }
    started = time.perf_counter()
    folder = make_temp_folder("runbook-restore-")
    restored_db = (staging_database_name if replace else restore_database_name)(
        database, manifest.backup_id
    )
    beside_ready = False
    try:
        with (
            hold_lock(target_lock(env), holder),
            hold_lock(backup_lock(env, manifest.backup_id), holder, shared=True),
        ):
            # Check every object against the manifest before touching anything live
            rdb: Path | None = None
            if Component.UPLOADS in selected:
                verify_backup_objects(manifest.upload_objects())
            if Component.REDIS in selected:
                rdb = fetch_redis_snapshot(
                    settings.backup_bucket, manifest.object(REDIS_OBJECT), folder
                )

            # Restore the database beside the live one and check its row counts
            if Component.DATABASE in selected:
                summary["database"] = _restore_beside(manifest, restored_db)
                beside_ready = True

            with scratch_server(rdb) if rdb else nullcontext(None) as scratch_url:
                if scratch_url:
                    summary["redis_keys"] = count_redis_keys(scratch_url)

                # Ask for approval, then put the backup in place of the live data
                if replace:
                    request_approval(
                        f"replace {database} with backup {manifest.backup_id}",
                        _approval_details(manifest, selected, restored_db),
                    )
                    changed = _replace_live(
                        manifest,
                        selected,
                        restored_db,
                        scratch_url,
                        delete_extra_uploads=delete_extra_uploads,
                        flush_redis=flush_redis,
                    )
                    if "kept_old_as" in changed:
                        summary["database"]["kept_old_as"] = changed.pop("kept_old_as")
                    summary.update(changed)
            summary["status"] = (
                "replaced the live data" if replace else "restored beside the live data"
            )
    except BaseException:
        # Undo: a restored copy that was not swapped in goes again (once swapped
        # in, its name is gone and this drops nothing)
        if beside_ready:
            drop_database(restored_db, return_state=True)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    # Leave the report
    summary["seconds"] = round(time.perf_counter() - started, 3)
    if Component.DATABASE in selected and not replace:
        record_change(
            "database.restored-beside",
            f"postgres/{restored_db}",
            backup_id=manifest.backup_id,
        )
    create_markdown_artifact(
        key="restore", markdown=_report(summary), description="Restore"
    )
    logger.info(
        "Restore of backup %s finished (%s) in %s s",
        manifest.backup_id,
        summary["status"],
        summary["seconds"],
    )
    return summary


def _restore_beside(manifest: Manifest, restored_db: str) -> dict[str, Any]:
    """Restore the dump into ``restored_db`` and compare its rows with the manifest."""
    assert manifest.database is not None
    bucket = get_settings().backup_bucket
    result = restore_database(bucket, manifest.object(DATABASE_OBJECT), restored_db)
    counts = count_rows(restored_db)
    expected = manifest.database.row_counts
    if counts != expected:
        drop_database(restored_db)
        differing = sorted(
            t for t in set(counts) | set(expected) if counts.get(t) != expected.get(t)
        )
        raise CheckFailedError(
            f"the restored database's row counts differ from the manifest in "
            f"{', '.join(differing)}; dropped {restored_db!r}"
        )
    return {**result, "rows": sum(counts.values()), "tables": len(counts)}


def _replace_live(
    manifest: Manifest,
    selected: list[Component],
    restored_db: str,
    scratch_url: str | None,
    *,
    delete_extra_uploads: bool,
    flush_redis: bool,
) -> dict[str, Any]:
    """Swap the database in, copy back uploads and Redis keys; return what changed."""
    settings = get_settings()
    done: dict[str, Any] = {}

    # Swap the databases, keeping the old one
    if Component.DATABASE in selected:
        database = database_name()
        keep_as = before_restore_name(database, datetime.now(UTC))
        swap_databases(database, restored_db, keep_as)
        done["kept_old_as"] = keep_as
        record_change(
            "database.restored",
            f"postgres/{database}",
            backup_id=manifest.backup_id,
            kept_old_as=keep_as,
        )

    # Copy back the uploads that differ
    if Component.UPLOADS in selected:
        done["uploads"] = restore_uploads(manifest, delete_extra_uploads)
        record_change(
            "uploads.restored",
            f"s3/{settings.uploads_bucket}",
            backup_id=manifest.backup_id,
            **done["uploads"],
        )

    # Copy the Redis keys back with their TTLs
    if scratch_url:
        done["redis_restored"] = copy_redis_keys(scratch_url, flush_redis)
        record_change(
            "redis.restored",
            "redis/app",
            backup_id=manifest.backup_id,
            flushed=flush_redis,
        )
    return done


def _approval_details(
    manifest: Manifest, selected: list[Component], restored_db: str
) -> str:
    lines = [
        f"Backup **{manifest.backup_id}** (taken {manifest.started_at:%Y-%m-%d %H:%M} "
        "UTC) was checked against its manifest.",
        "",
    ]
    if Component.DATABASE in selected and manifest.database:
        rows = sum(manifest.database.row_counts.values())
        lines.append(
            f"- database: the live `{manifest.database.database}` is renamed aside "
            f"and replaced by `{restored_db}` ({rows:,} rows, counts verified)"
        )
    if Component.UPLOADS in selected and manifest.uploads:
        lines.append(
            f"- uploads: objects differing from the backup's "
            f"{manifest.uploads.objects:,} are overwritten"
        )
    if Component.REDIS in selected and manifest.redis:
        lines.append(
            f"- redis: {sum(manifest.redis.keys_per_db.values()):,} keys are "
            "restored over the live ones"
        )
    return "\n".join(lines)


def _report(summary: dict[str, Any]) -> str:
    lines = [
        f"## Restore of {summary['backup_id']}: {summary['status']}",
        "",
        f"Mode `{summary['mode']}`, components {', '.join(summary['components'])}, "
        f"{summary['seconds']} s.",
        "",
        "| component | result |",
        "|---|---|",
    ]
    if "database" in summary:
        db = summary["database"]
        kept = f"; old kept as `{db['kept_old_as']}`" if "kept_old_as" in db else ""
        lines.append(
            f"| database | `{db['database']}`: {db['rows']:,} rows in "
            f"{db['tables']} tables, counts match the manifest{kept} |"
        )
    if "uploads" in summary:
        up = summary["uploads"]
        lines.append(
            f"| uploads | {up['restored']} restored, {up['unchanged']} unchanged, "
            f"{up['extra']} extra ({up['deleted']} deleted) |"
        )
    elif "uploads" in summary["components"]:
        lines.append("| uploads | checksums verified; nothing live touched |")
    if "redis_keys" in summary:
        done = "restored" if "redis_restored" in summary else "verified in a scratch"
        lines.append(f"| redis | {sum(summary['redis_keys'].values())} keys {done} |")
    return "\n".join(lines)
