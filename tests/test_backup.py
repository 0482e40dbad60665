"""The backup flow against the real local stack, on the real Prefect engine."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect import flow

from flows.backup import backup
from runbook.backups import DATABASE_OBJECT, MANIFEST_NAME, REDIS_OBJECT, Component
from runbook.errors import RefusedError
from runbook.settings import get_settings
from sandbox.stack import Sandbox
from tasks.redis_rdb import dump_redis
from tasks.redis_restore import (
    count_redis_keys,
    fetch_redis_snapshot,
    make_temp_folder,
    scratch_server,
)
from tests.backup_helpers import (
    artifact,
    backup_keys,
    backup_waiting_on_a_lock,
    database_url,
    notifications,
    open_multipart_uploads,
    read_manifest,
    redis_client,
    run,
    s3,
    wait_until,
)

pytest_plugins = ["tests.backup_fixtures"]
pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]


class TestBackup:
    """A complete backup: every object checksummed, the manifest written last."""

    def test_manifest_lists_every_object_with_its_sha256(
        self, backup_env: Sandbox
    ) -> None:
        completed, summary = run(backup)
        assert completed, summary
        manifest = read_manifest(summary["backup_id"])
        assert set(manifest.components) == set(Component)
        client, bucket = s3(), get_settings().backup_bucket
        for stored in manifest.objects:
            body = client.get_object(Bucket=bucket, Key=stored.key)["Body"].read()
            assert (len(body), hashlib.sha256(body).hexdigest()) == (
                stored.size_bytes,
                stored.sha256,
            )
            if stored.name in (DATABASE_OBJECT, REDIS_OBJECT):
                # Streamed uploads: S3 checked each part's CRC32 as it came
                head = client.head_object(
                    Bucket=bucket, Key=stored.key, ChecksumMode="ENABLED"
                )
                assert head.get("ChecksumCRC32"), stored.key
        assert manifest.database is not None
        assert manifest.database.server_version.startswith("18")
        assert manifest.database.row_counts["public.users"] > 0
        assert manifest.redis is not None
        assert sum(manifest.redis.keys_per_db.values()) > 0
        assert manifest.uploads is not None and manifest.uploads.objects > 0
        assert summary["timings_seconds"]["database"] >= 0
        assert "complete" in str(artifact("backup").data)

    def test_row_counts_match_the_live_database(self, backup_env: Sandbox) -> None:
        completed, summary = run(backup, components=[Component.DATABASE])
        assert completed, summary
        with psycopg.connect(database_url()) as conn:
            users = conn.execute("SELECT count(*) FROM users").fetchone()
        assert summary["row_counts"]["public.users"] == (users or [0])[0]
        assert summary["components"] == ["database"]

    def test_unchanged_uploads_cost_no_copy(self, backup_env: Sandbox) -> None:
        completed, first = run(backup, components=[Component.UPLOADS])
        assert completed, first
        changed_key = next(iter(read_manifest(first["backup_id"]).upload_objects()))
        client, settings = s3(), get_settings()
        source_key = changed_key.name.removeprefix("uploads/")
        original = client.get_object(Bucket=settings.uploads_bucket, Key=source_key)
        body = original["Body"].read()
        client.put_object(
            Bucket=settings.uploads_bucket, Key=source_key, Body=body + b"changed"
        )
        try:
            completed, second = run(backup, components=[Component.UPLOADS])
            assert completed, second
            assert second["uploads_copied"] == 1
            assert second["uploads_reused"] == first["objects"] - 1
            manifest = read_manifest(second["backup_id"])
            earlier = [o for o in manifest.objects if first["backup_id"] in o.key]
            assert len(earlier) == first["objects"] - 1

            completed, third = run(backup, components=[Component.UPLOADS])
            assert completed, third
            assert third["uploads_copied"] == 0
            assert backup_keys(third["backup_id"]) == [
                f"{settings.environment}/{third['backup_id']}/{MANIFEST_NAME}"
            ]
        finally:
            client.put_object(Bucket=settings.uploads_bucket, Key=source_key, Body=body)

    def test_uploads_from_a_local_folder(
        self, backup_env: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "diagrams").mkdir()
        for index in range(5):
            (tmp_path / "diagrams" / f"{index}.png").write_bytes(bytes([index]) * 5000)
        monkeypatch.setenv("RUNBOOK_UPLOADS_DIR", str(tmp_path))
        get_settings.cache_clear()
        completed, first = run(backup, components=[Component.UPLOADS])
        assert completed, first
        assert first["uploads_copied"] == 5
        completed, second = run(backup, components=[Component.UPLOADS])
        assert completed, second
        assert (second["uploads_copied"], second["uploads_reused"]) == (0, 5)
        stored = read_manifest(second["backup_id"]).object("uploads/diagrams/3.png")
        assert stored.sha256 == hashlib.sha256(bytes([3]) * 5000).hexdigest()


class TestBackupFailures:
    """A failed backup leaves no manifest, no open upload, and pages on-call."""

    def test_db_down_mid_dump_leaves_no_manifest_nor_open_upload(
        self, backup_env: Sandbox, fault: Any
    ) -> None:
        with backup_waiting_on_a_lock() as outcome:
            # pg_dump has started, its upload is open, and it waits on the lock
            wait_until(pg_dump_waits_on_a_lock, "pg_dump to wait on the table lock")
            fault("db-down")
        completed, error = outcome["result"]
        assert not completed
        assert "dump database" in str(error) or "PostgreSQL" in str(error)
        backup_id = error_backup_id(backup_env)
        assert open_multipart_uploads() == []
        assert backup_keys(backup_id) == []  # no manifest, nothing half-written
        sent = notifications(backup_env)
        pages = [r for r in sent if r["path"].endswith("/enqueue")]
        slack = [r for r in sent if r["path"].endswith("chat.postMessage")]
        assert any(backup_id in r["body"]["payload"]["summary"] for r in pages)
        assert any(backup_id in r["body"]["text"] for r in slack)
        password = backup_env.env()["RUNBOOK_DATABASE_URL"].split(":")[2].split("@")[0]
        assert all(password not in str(r["body"]) for r in sent)

    def test_storage_down_fails_and_aborts(
        self, backup_env: Sandbox, fault: Any
    ) -> None:
        fault("storage-down")
        completed, error = run(backup, components=[Component.DATABASE])
        assert not completed
        assert "ServiceUnavailable" in str(error) or "503" in str(error)

    def test_older_pg_dump_is_refused_naming_both_versions(
        self, backup_env: Sandbox, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        old = Path("/usr/lib/postgresql/15/bin")
        if not (old / "pg_dump").exists():
            pytest.skip("PostgreSQL 15's client programs are not installed")
        monkeypatch.setenv("RUNBOOK_PG_BIN_DIR", str(old))
        get_settings.cache_clear()
        completed, error = run(backup, components=[Component.DATABASE])
        assert not completed
        assert isinstance(error, RefusedError)
        assert "pg_dump 15." in str(error) and "PostgreSQL 18" in str(error)
        assert open_multipart_uploads() == []


def pg_dump_waits_on_a_lock() -> bool:
    """Tell whether a pg_dump session waits on a lock (asked outside any snapshot)."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_dump' "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None


def error_backup_id(stack: Sandbox) -> str:
    """Return the id of the newest backup the notifications mention."""
    for record in reversed(notifications(stack)):
        if record["path"].endswith("chat.postMessage"):
            text = str(record["body"]["text"])
            return text.split("Backup ", 1)[1].split(" ", 1)[0]
    raise AssertionError("no backup failure was announced on Slack")


def test_dump_object_is_named_in_manifest(backup_env: Sandbox) -> None:
    """The database dump is stored under the backup's own prefix."""
    completed, summary = run(backup, components=[Component.DATABASE])
    assert completed, summary
    stored = read_manifest(summary["backup_id"]).object(DATABASE_OBJECT)
    assert stored.key.endswith(f"{summary['backup_id']}/{DATABASE_OBJECT}")


class TestRedisSnapshot:
    """The snapshot arrives over the replication protocol in both of its forms."""

    @pytest.mark.parametrize("diskless", [False, True])
    def test_snapshot_loads_with_every_key(
        self, backup_env: Sandbox, diskless: bool
    ) -> None:
        live = redis_client()
        saved = str(
            live.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"]
        )
        live.config_set("repl-diskless-sync-delay", 0)

        @flow
        def fetch_and_load() -> tuple[dict[str, Any], dict[str, int]]:
            bucket = get_settings().backup_bucket
            key = f"{get_settings().environment}/snapshot/{REDIS_OBJECT}"
            stored, facts = dump_redis(bucket, key, REDIS_OBJECT, eof_capable=diskless)
            folder = make_temp_folder("runbook-test-")
            with scratch_server(fetch_redis_snapshot(bucket, stored, folder)) as url:
                return facts, count_redis_keys(url)

        try:
            completed, outcome = run(fetch_and_load)
        finally:
            live.config_set("repl-diskless-sync-delay", saved)
        assert completed, outcome
        facts, loaded = outcome
        assert facts["rdb_bytes"] > 0
        assert loaded == facts["keys_per_db"]
        assert sum(loaded.values()) == live.dbsize()
        live.close()
