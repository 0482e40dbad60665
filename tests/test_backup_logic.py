"""Backup ids, names and retention: pure logic, no servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runbook.backups import (
    Retention,
    backup_time,
    before_restore_name,
    is_backup_id,
    new_backup_id,
    restore_database_name,
    select_retained,
)


class TestBackupIds:
    """Ids sort by time and carry it."""

    def test_ids_sort_by_time(self) -> None:
        start = datetime(2026, 12, 3, 16, 30, tzinfo=UTC)
        ids = [new_backup_id(start + timedelta(minutes=m)) for m in (61, 0, 5)]
        assert sorted(ids) == sorted(ids, key=backup_time)
        assert backup_time(min(ids)) == start
        assert ids[1].startswith("20261203T163000Z-")

    @pytest.mark.parametrize("text", ["latest", "20261203T163000Z", "../x", ""])
    def test_rejects_what_is_not_an_id(self, text: str) -> None:
        assert not is_backup_id(text)
        with pytest.raises(ValueError, match="not a backup id"):
            backup_time(text)

    def test_database_names_are_valid_identifiers(self) -> None:
        name = restore_database_name("Bpmn-Studio" * 10, "20261203T163000Z-1a2b3c")
        assert len(name) <= 63
        assert name.endswith("_restore_20261203t163000z_1a2b3c")
        assert name.replace("_", "").isalnum() and name.islower()
        kept = before_restore_name("bpmn_studio", datetime(2026, 1, 2, tzinfo=UTC))
        assert kept == "bpmn_studio_before_restore_20260102t000000z"


class TestRetention:
    """Grandfather-father-son retention over backup ids."""

    def hourly_ids(self, hours: int) -> list[str]:
        now = datetime(2026, 12, 3, 16, 5, tzinfo=UTC)
        return [new_backup_id(now - timedelta(hours=h)) for h in range(hours)]

    def test_keeps_newest_per_period(self) -> None:
        ids = self.hourly_ids(24 * 40)  # 40 days of hourly backups
        kept = select_retained(ids, Retention(hourly=24, daily=7, weekly=4, monthly=3))
        newest = max(ids)
        assert kept[newest] == "newest"
        days = {backup_time(b).date() for b in kept}
        assert len([b for b in kept if "hourly" in kept[b]]) == 23
        assert len(days) >= 7
        assert len(kept) < 24 + 7 + 4 + 3

    def test_always_keeps_the_newest(self) -> None:
        ids = self.hourly_ids(5)
        assert list(select_retained(ids, Retention(0, 0, 0, 0))) == [max(ids)]

    def test_nothing_to_keep_from_nothing(self) -> None:
        assert select_retained([], Retention(1, 1, 1, 1)) == {}
