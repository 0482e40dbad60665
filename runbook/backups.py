"""What a backup is: its id, where its objects live, its manifest, and retention.

Pure logic, no I/O. A backup is the set of objects under
``{environment}/{backup_id}/`` in the backup bucket plus ``manifest.json``, written
last; without a manifest a backup is incomplete and never restored from. Upload
objects that did not change since an earlier backup are not copied again: the new
manifest points at the copy an earlier backup made (its ``key``).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from runbook.errors import RefusedError

MANIFEST_NAME = "manifest.json"
DATABASE_OBJECT = "database.dump.zst"
REDIS_OBJECT = "redis.rdb.zst"
UPLOADS_FOLDER = "uploads/"

_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
BACKUP_ID_PATTERN = r"^\d{8}T\d{6}Z-[a-z0-9]{6}$"
_BACKUP_ID = re.compile(r"^(?P<time>\d{8}T\d{6}Z)-(?P<suffix>[a-z0-9]{6})$")
_IDENTIFIER_UNSAFE = re.compile(r"[^a-z0-9_]+")
MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1


class BackupMismatchError(RefusedError):
    """A backup's object does not match its manifest; it is not restored from."""


class Component(StrEnum):
    """A part of BPMN Studio's data that a backup holds."""

    DATABASE = "database"
    UPLOADS = "uploads"
    REDIS = "redis"


def new_backup_id(now: datetime | None = None) -> str:
    """Return a fresh backup id: the UTC time first, so ids sort by time."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment.strftime(_ID_TIME_FORMAT)}-{secrets.token_hex(3)}"


def is_backup_id(text: str) -> bool:
    """Tell whether ``text`` has the shape of a backup id."""
    return _BACKUP_ID.match(text) is not None


def backup_time(backup_id: str) -> datetime:
    """Return the UTC time a backup id was made at.

    Raises:
        ValueError: when ``backup_id`` is not a backup id.
    """
    found = _BACKUP_ID.match(backup_id)
    if found is None:
        raise ValueError(
            f"{backup_id!r} is not a backup id (like 20261203T163000Z-1a2b3c)"
        )
    return datetime.strptime(found["time"], _ID_TIME_FORMAT).replace(tzinfo=UTC)


def backup_prefix(environment: str, backup_id: str) -> str:
    """Return the key prefix of a backup's objects in the backup bucket."""
    return f"{environment}/{backup_id}/"


def target_lock(environment: str) -> str:
    """Return the lock name a backup or restore of ``environment`` holds."""
    return f"{environment}/target"


def backup_lock(environment: str, backup_id: str) -> str:
    """Return the lock name held while a backup is written (exclusive) or read."""
    return f"{environment}/backup/{backup_id}"


def _identifier(text: str) -> str:
    return _IDENTIFIER_UNSAFE.sub("_", text.lower()).strip("_")


def _with_suffix(database: str, suffix: str) -> str:
    base = _identifier(database)[: MAX_IDENTIFIER_BYTES - len(suffix)]
    return f"{base}{suffix}"


def restore_database_name(database: str, backup_id: str) -> str:
    """Return the database a restore of ``backup_id`` creates beside ``database``."""
    return _with_suffix(database, f"_restore_{_identifier(backup_id)}")


def staging_database_name(database: str, backup_id: str) -> str:
    """Return the database a replacing restore fills before swapping it in."""
    return _with_suffix(database, f"_staged_{_identifier(backup_id)}")


def drill_database_name(database: str, backup_id: str) -> str:
    """Return the scratch database a restore drill of ``backup_id`` uses."""
    return _with_suffix(database, f"_drill_{_identifier(backup_id)}")


def before_restore_name(database: str, now: datetime) -> str:
    """Return the name the live database keeps after a replacing restore."""
    stamp = _identifier(now.astimezone(UTC).strftime(_ID_TIME_FORMAT))
    return _with_suffix(database, f"_before_restore_{stamp}")


class StoredObject(BaseModel):
    """One object of a backup: what it is, where it is stored, its checksum."""

    name: str = Field(description="Name inside the backup, e.g. database.dump.zst.")
    key: str = Field(description="Key in the backup bucket (maybe an older backup's).")
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_etag: str | None = Field(
        default=None,
        description="Upload's ETag (or size and mtime) when it was copied.",
    )


class DatabasePart(BaseModel):
    """What the manifest says about the database dump."""

    database: str
    server_version: str
    pg_dump_version: str
    row_counts: dict[str, int]
    dump_bytes: int = Field(ge=0, description="Size of the dump before zstd.")


class RedisPart(BaseModel):
    """What the manifest says about the Redis snapshot."""

    server_version: str
    keys_per_db: dict[str, int] = Field(description="Keys per logical database.")
    rdb_bytes: int = Field(ge=0)


class UploadsPart(BaseModel):
    """What the manifest says about the uploads."""

    source: str = Field(description="s3://bucket/prefix or a local folder.")
    objects: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    copied: int = Field(ge=0, description="Objects copied by this backup.")
    reused: int = Field(ge=0, description="Unchanged objects kept from earlier.")


class Manifest(BaseModel):
    """The record of a complete backup; written last, read before any restore."""

    format: Literal[1] = 1
    backup_id: str
    environment: str
    started_at: datetime
    completed_at: datetime
    components: list[Component]
    database: DatabasePart | None = None
    redis: RedisPart | None = None
    uploads: UploadsPart | None = None
    objects: list[StoredObject]
    timings_seconds: dict[str, float]

    def object(self, name: str) -> StoredObject:
        """Return the object called ``name``.

        Raises:
            KeyError: when the backup holds no such object.
        """
        for stored in self.objects:
            if stored.name == name:
                return stored
        raise KeyError(f"backup {self.backup_id} holds no object {name!r}")

    def upload_objects(self) -> list[StoredObject]:
        """Return the upload objects, their names starting with ``uploads/``."""
        return [o for o in self.objects if o.name.startswith(UPLOADS_FOLDER)]

    def age_minutes(self, now: datetime) -> float:
        """Return how old the backup is, counted from when it started."""
        return (now - self.started_at).total_seconds() / 60


@dataclass(frozen=True)
class Retention:
    """How many of the newest hourly, daily, weekly and monthly backups to keep."""

    hourly: int
    daily: int
    weekly: int
    monthly: int


def _periods(moment: datetime) -> dict[str, str]:
    iso = moment.isocalendar()
    return {
        "hourly": moment.strftime("%Y%m%d%H"),
        "daily": moment.strftime("%Y%m%d"),
        "weekly": f"{iso.year}W{iso.week:02d}",
        "monthly": moment.strftime("%Y%m"),
    }


def select_retained(backup_ids: Iterable[str], retention: Retention) -> dict[str, str]:
    """Return the complete backups to keep, each with the first reason it is kept.

    For each of hourly, daily, weekly and monthly, the newest backup of each of the
    newest N periods that hold a backup is kept. The newest backup is always kept.
    """
    newest_first = sorted(set(backup_ids), key=backup_time, reverse=True)
    kept: dict[str, str] = {}
    if newest_first:
        kept[newest_first[0]] = "newest"
    limits = {
        "hourly": retention.hourly,
        "daily": retention.daily,
        "weekly": retention.weekly,
        "monthly": retention.monthly,
    }
    for granularity, limit in limits.items():
        seen: set[str] = set()
        for backup_id in newest_first:
            period = _periods(backup_time(backup_id))[granularity]
            if period in seen:
                continue
            if len(seen) >= limit:
                break
            seen.add(period)
            kept.setdefault(backup_id, f"{granularity} {period}")
    return kept
