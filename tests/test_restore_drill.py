"""The restore drill against the real local stack, on the real Prefect engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flows.backup import backup
from flows.restore_drill import restore_drill
from runbook.backups import MANIFEST_NAME, backup_prefix, new_backup_id
from runbook.errors import CheckFailedError
from runbook.settings import get_settings
from sandbox.stack import Sandbox
from tests.backup_helpers import (
    artifact,
    databases,
    notifications,
    read_manifest,
    run,
    s3,
)

pytest_plugins = ["tests.backup_fixtures"]
pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]


class TestRestoreDrill:
    """The weekly drill restores into scratch copies and measures RTO and RPO."""

    def test_passes_and_reports_rto_and_rpo(self, backup_env: Sandbox) -> None:
        completed, made = run(backup)
        assert completed, made
        before = databases()

        completed, result = run(restore_drill)
        assert completed, result
        assert result["passed"] and result["backup_id"] == made["backup_id"]
        assert 0 <= result["rto_minutes"] <= result["rto_target_minutes"]
        assert 0 <= result["rpo_minutes"] <= result["rpo_target_minutes"]
        assert result["checks"]["database"]["rows"] > 0
        assert result["checks"]["uploads"]["objects_verified"] > 0
        assert result["checks"]["redis"]["keys_loaded"] > 0
        assert databases() == before  # the scratch database is gone
        report = str(artifact("restore-drill").data)
        assert "passed" in report and "RTO" in report and "RPO" in report

    def test_fails_and_pages_when_the_newest_backup_is_too_old(
        self, backup_env: Sandbox
    ) -> None:
        completed, made = run(backup, components=["redis"])
        assert completed, made
        # Re-file the backup as taken three hours ago.
        settings, client = get_settings(), s3()
        old_id = new_backup_id(datetime.now(UTC) - timedelta(hours=3))
        manifest = read_manifest(made["backup_id"])
        manifest.backup_id = old_id
        manifest.started_at -= timedelta(hours=3)
        client.delete_object(
            Bucket=settings.backup_bucket,
            Key=backup_prefix(settings.environment, made["backup_id"]) + MANIFEST_NAME,
        )
        client.put_object(
            Bucket=settings.backup_bucket,
            Key=backup_prefix(settings.environment, old_id) + MANIFEST_NAME,
            Body=manifest.model_dump_json().encode(),
        )

        completed, error = run(restore_drill)
        assert not completed
        assert isinstance(error, CheckFailedError)
        assert "over the RPO target of 60" in str(error)
        pages = [r for r in notifications(backup_env) if r["path"].endswith("enqueue")]
        assert "Restore drill" in pages[-1]["body"]["payload"]["summary"]
        assert "FAILED" in str(artifact("restore-drill").data)

    def test_fails_when_there_is_no_backup(self, backup_env: Sandbox) -> None:
        completed, error = run(restore_drill)
        assert not completed
        assert "no complete backup" in str(error)
