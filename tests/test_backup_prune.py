"""The prune-backups flow against the real local stack, on the real Prefect engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.backup import backup
from flows.prune_backups import prune_backups
from flows.restore import restore
from runbook.backups import backup_lock, backup_prefix, new_backup_id
from runbook.settings import get_settings
from sandbox.stack import Sandbox
from tasks.postgres import hold_lock
from tests.backup_helpers import (
    backup_keys,
    read_manifest,
    run,
    s3,
)

pytest_plugins = ["tests.backup_fixtures"]
pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]


@pytest.fixture
def keep_only_newest(backup_env: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retain nothing but the newest backup."""
    for period in ("HOURLY", "DAILY", "WEEKLY", "MONTHLY"):
        monkeypatch.setenv(f"RUNBOOK_RETENTION_{period}", "0")
    get_settings.cache_clear()


class TestPrune:
    """Retention deletes old backups but never what is still needed."""

    def test_dry_run_lists_and_deletes_nothing(
        self, backup_env: Sandbox, keep_only_newest: None
    ) -> None:
        ids = [run(backup, components=["redis"])[1]["backup_id"] for _ in range(2)]
        completed, summary = run(prune_backups, dry_run=True)
        assert completed, summary
        assert summary["would_delete"] == ids[:1]
        assert summary["kept"] == ids[1:]
        assert all(backup_keys(backup_id) for backup_id in ids)

    def test_keeps_the_newest_and_the_uploads_it_points_at(
        self, backup_env: Sandbox, keep_only_newest: None
    ) -> None:
        first = run(backup, components=["uploads"])[1]["backup_id"]
        newest = run(backup, components=["uploads"])[1]["backup_id"]
        settings, client = get_settings(), s3()
        abandoned = new_backup_id(datetime.now(UTC) - timedelta(days=2))
        client.put_object(
            Bucket=settings.backup_bucket,
            Key=backup_prefix(settings.environment, abandoned) + "database.dump.zst",
            Body=b"an interrupted backup",
        )

        completed, summary = run(prune_backups)
        assert completed, summary
        assert sorted(summary["deleted"]) == sorted([first, abandoned])
        assert summary["kept"] == [newest]
        assert backup_keys(abandoned) == []
        # The newest backup's unchanged uploads still live under the first prefix.
        assert len(backup_keys(first)) == len(read_manifest(newest).objects)
        completed, restored = run(restore, components=["uploads"])
        assert completed, restored

    def test_skips_a_backup_a_restore_is_reading(
        self, backup_env: Sandbox, keep_only_newest: None
    ) -> None:
        ids = [run(backup, components=["redis"])[1]["backup_id"] for _ in range(2)]
        lock = backup_lock(get_settings().environment, ids[0])

        from prefect import flow

        @flow
        def read_while_pruning() -> dict[str, object]:
            with hold_lock(lock, "runbook restore (test)", shared=True):
                return prune_backups()

        completed, summary = run(read_while_pruning)
        assert completed, summary
        assert summary["skipped"] == ids[:1]
        assert backup_keys(ids[0])
