"""The restore flow against the real local stack, on the real Prefect engine."""

from __future__ import annotations

import psycopg
import pytest

from flows.backup import backup
from flows.restore import Mode, restore
from runbook.backups import (
    DATABASE_OBJECT,
    MANIFEST_NAME,
    BackupMismatchError,
    Component,
    backup_prefix,
    new_backup_id,
    restore_database_name,
)
from runbook.errors import RefusedError
from runbook.settings import get_settings
from sandbox.stack import Sandbox
from tests.backup_helpers import (
    backup_waiting_on_a_lock,
    database_url,
    databases,
    read_manifest,
    redis_client,
    redis_state,
    run,
    run_cli,
    s3,
    table_fingerprints,
    upload_checksums,
)

pytest_plugins = ["tests.backup_fixtures"]
pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]


def damage_live_data() -> None:
    """Delete rows, uploads and Redis keys, and change a few, as an accident would."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        conn.execute(
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions LIMIT 20)"
        )
        conn.execute("UPDATE users SET name = 'overwritten' WHERE id <= 5")
    client, bucket = s3(), get_settings().uploads_bucket
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    for key in keys[:3]:
        client.delete_object(Bucket=bucket, Key=key)
    client.put_object(Bucket=bucket, Key=keys[3], Body=b"scribbled over")
    cache = redis_client()
    doomed = [key for key in cache.scan_iter("session:*")][:10]
    cache.delete(*doomed, "rate:limit:global")
    cache.set("cache:diagram:1", "stale")
    cache.close()


class TestRestoreFromTheCommandLine:
    """The acceptance scenario, typed as the runbook says."""

    def test_replace_brings_back_every_row_file_and_key(
        self, backup_env: Sandbox
    ) -> None:
        rows, files, keys = table_fingerprints(), upload_checksums(), redis_state()
        code, made, log = run_cli("run", "backup")
        assert code == 0, log[-3000:]

        damage_live_data()
        assert table_fingerprints() != rows and upload_checksums() != files

        code, summary, log = run_cli(
            "run", "restore", "-p", "mode=replace", "-p", "confirm=bpmn_studio"
        )
        assert code == 0, log[-3000:]
        assert summary["backup_id"] == made["backup_id"]
        assert table_fingerprints() == rows
        assert upload_checksums() == files
        after = redis_state()
        assert set(after) == set(keys)
        for key, (payload, ttl) in keys.items():
            assert after[key][0] == payload, key
            if ttl < 0:
                assert after[key][1] == ttl, key
            else:
                assert 0 < after[key][1] <= ttl, key
        assert summary["database"]["kept_old_as"] in databases()


class TestRestore:
    """Restoring beside the live data, and the undo of a failed replace."""

    @pytest.mark.parametrize("jobs", [1, 2])
    def test_new_mode_restores_beside_and_leaves_live_alone(
        self, backup_env: Sandbox, monkeypatch: pytest.MonkeyPatch, jobs: int
    ) -> None:
        monkeypatch.setenv("RUNBOOK_RESTORE_JOBS", str(jobs))
        get_settings.cache_clear()
        completed, made = run(backup)
        assert completed, made
        with psycopg.connect(database_url(), autocommit=True) as conn:
            conn.execute("UPDATE users SET name = name || '' WHERE id = 1")
        live = table_fingerprints()
        keys = redis_state()

        completed, summary = run(restore, backup_id=made["backup_id"])
        assert completed, summary
        restored = restore_database_name("bpmn_studio", made["backup_id"])
        assert summary["database"]["database"] == restored
        assert summary["database"]["jobs"] == jobs
        assert table_fingerprints(restored).keys() == live.keys()
        assert table_fingerprints() == live
        assert set(redis_state()) == set(keys)
        assert sum(summary["redis_keys"].values()) == sum(
            read_manifest(made["backup_id"]).redis.keys_per_db.values()  # type: ignore[union-attr]
        )


class TestRefusals:
    """Each rail stops the restore before anything live is touched."""

    @pytest.mark.parametrize("confirm", [None, "bpmn", "BPMN_STUDIO"])
    def test_replace_without_the_exact_database_name(
        self, backup_env: Sandbox, confirm: str | None
    ) -> None:
        completed, error = run(restore, mode=Mode.REPLACE, confirm=confirm)
        assert not completed
        assert isinstance(error, RefusedError)
        assert "confirm must be exactly 'bpmn_studio'" in str(error)

    def test_unknown_backup_id(self, backup_env: Sandbox) -> None:
        completed, error = run(restore, backup_id=new_backup_id())
        assert not completed
        assert isinstance(error, RefusedError)
        assert "there is no backup" in str(error)

    def test_backup_without_manifest(self, backup_env: Sandbox) -> None:
        completed, made = run(backup, components=[Component.REDIS])
        assert completed, made
        settings = get_settings()
        prefix = backup_prefix(settings.environment, made["backup_id"])
        s3().delete_object(Bucket=settings.backup_bucket, Key=prefix + MANIFEST_NAME)
        completed, error = run(
            restore, backup_id=made["backup_id"], components=[Component.REDIS]
        )
        assert not completed
        assert isinstance(error, RefusedError)
        assert "has no manifest" in str(error)

    def test_upload_not_matching_its_checksum(self, backup_env: Sandbox) -> None:
        completed, made = run(backup, components=[Component.UPLOADS])
        assert completed, made
        stored = read_manifest(made["backup_id"]).upload_objects()[0]
        s3().put_object(
            Bucket=get_settings().backup_bucket, Key=stored.key, Body=b"tampered"
        )
        files = upload_checksums()
        completed, error = run(
            restore,
            components=[Component.UPLOADS],
            mode=Mode.REPLACE,
            confirm="bpmn_studio",
        )
        assert not completed
        assert isinstance(error, BackupMismatchError)
        assert stored.key in str(error)
        assert upload_checksums() == files

    def test_dump_not_matching_its_checksum(self, backup_env: Sandbox) -> None:
        completed, made = run(backup, components=[Component.DATABASE])
        assert completed, made
        stored = read_manifest(made["backup_id"]).object(DATABASE_OBJECT)
        client, bucket = s3(), get_settings().backup_bucket
        body = client.get_object(Bucket=bucket, Key=stored.key)["Body"].read()
        client.put_object(Bucket=bucket, Key=stored.key, Body=body[:-1000])
        live, before = table_fingerprints(), databases()
        completed, error = run(
            restore,
            components=[Component.DATABASE],
            mode=Mode.REPLACE,
            confirm="bpmn_studio",
        )
        assert not completed
        assert isinstance(error, BackupMismatchError)
        assert table_fingerprints() == live
        assert databases() == before

    def test_restore_while_a_backup_runs(self, backup_env: Sandbox) -> None:
        completed, earlier = run(backup, components=[Component.REDIS])
        assert completed, earlier
        with backup_waiting_on_a_lock() as outcome:
            completed, error = run(
                restore, backup_id=earlier["backup_id"], components=[Component.REDIS]
            )
            overlapping, second = run(backup, components=[Component.REDIS])
        assert not completed and not overlapping
        for refusal in (error, second):
            assert isinstance(refusal, RefusedError)
            assert "is locked by runbook backup" in str(refusal)
        finished, made = outcome["result"]
        assert finished, made
