"""Tasks that keep the backup bucket: list backups, read and write manifests,
verify objects against them, delete what retention lets go.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from runbook.backups import (
    MANIFEST_NAME,
    BackupMismatchError,
    Component,
    Manifest,
    StoredObject,
    backup_prefix,
    backup_time,
    is_backup_id,
)
from runbook.errors import CheckFailedError, RefusedError
from runbook.settings import get_settings
from tasks import storage
from tasks._policy import transient_retries
from tasks.storage_stream import iter_object

DELETE_BATCH = 1000
RETRIES = transient_retries()


def _location() -> tuple[Any, str, str]:
    settings = get_settings()
    s3 = storage.client(30, 5, settings.uploads_concurrency)
    return s3, settings.backup_bucket, settings.environment


def list_keys(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Yield every object under ``prefix`` (Key, Size, ETag), translating errors.

    Args:
        s3: boto3 S3 client.
        bucket: bucket to list.
        prefix: key prefix.
    """
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            yield from page.get("Contents", [])
    except (BotoCoreError, ClientError) as exc:
        raise storage.translate(exc, f"list s3://{bucket}/{prefix}") from None


@task(name="list-backups", **RETRIES)
def list_backups() -> list[dict[str, Any]]:
    """List this environment's backups, oldest first, saying which are complete."""
    s3, bucket, environment = _location()
    backups: dict[str, dict[str, Any]] = {}
    try:
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{environment}/", Delimiter="/"
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                backup_id = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                if is_backup_id(backup_id):
                    backups[backup_id] = {"backup_id": backup_id, "complete": False}
        for backup_id, entry in backups.items():
            key = backup_prefix(environment, backup_id) + MANIFEST_NAME
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            entry["complete"] = listed.get("KeyCount", 0) > 0
    except (BotoCoreError, ClientError) as exc:
        raise storage.translate(exc, f"list backups in s3://{bucket}") from None
    found = [backups[backup_id] for backup_id in sorted(backups, key=backup_time)]
    get_run_logger().info(
        "Listed %s backups (%s complete) in s3://%s/%s/",
        len(found),
        sum(entry["complete"] for entry in found),
        bucket,
        environment,
    )
    return found


@task(name="read-manifest", **RETRIES)
def read_manifest(backup_id: str) -> Manifest:
    """Read a backup's manifest; refuse a backup that is unknown or incomplete."""
    s3, bucket, environment = _location()
    if not is_backup_id(backup_id):
        raise RefusedError(
            f"{backup_id!r} is not a backup id (like 20261203T163000Z-1a2b3c)"
        )
    prefix = backup_prefix(environment, backup_id)
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"NoSuchKey", "404"}:
            raise storage.translate(exc, f"read manifest of {backup_id}") from None
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        if listed.get("KeyCount", 0) == 0:
            raise RefusedError(
                f"there is no backup {backup_id} in s3://{bucket}/{environment}/"
            ) from None
        raise RefusedError(
            f"backup {backup_id} has no manifest: it is incomplete and is never "
            "restored from"
        ) from None
    except BotoCoreError as exc:
        raise storage.translate(exc, f"read manifest of {backup_id}") from None
    try:
        manifest = Manifest.model_validate_json(body)
    except ValidationError as exc:
        raise BackupMismatchError(
            f"the manifest of backup {backup_id} is unreadable "
            f"({exc.error_count()} errors); it is not restored from"
        ) from None
    get_run_logger().info("Read the manifest of backup %s", backup_id)
    return manifest


@task(name="find-newest-backup", **RETRIES)
def find_newest_backup(components: list[Component]) -> Manifest | None:
    """Return the manifest of the newest complete backup holding ``components``."""
    for entry in reversed(list_backups.fn()):
        if entry["complete"]:
            manifest = read_manifest.fn(entry["backup_id"])
            if set(components) <= set(manifest.components):
                return manifest
    return None


@task(name="write-manifest", **RETRIES)
def write_manifest(manifest: Manifest) -> str:
    """Write a backup's manifest, the last object of a backup."""
    s3, bucket, environment = _location()
    key = backup_prefix(environment, manifest.backup_id) + MANIFEST_NAME
    body = manifest.model_dump_json(indent=2).encode()
    try:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
        )
    except (BotoCoreError, ClientError) as exc:
        raise storage.translate(exc, f"write manifest {key}") from None
    get_run_logger().info("Wrote manifest s3://%s/%s", bucket, key)
    return key


def object_sha256(s3: Any, bucket: str, key: str) -> tuple[int, str]:
    """Return (size, hex sha256) of an object: S3's own when it keeps one, else read.

    Args:
        s3: boto3 S3 client.
        bucket: the object's bucket.
        key: the object's key.
    """
    try:
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey"}:
            return -1, ""
        raise storage.translate(exc, f"read s3://{bucket}/{key}") from None
    except BotoCoreError as exc:
        raise storage.translate(exc, f"read s3://{bucket}/{key}") from None
    kept = str(head.get("ChecksumSHA256") or "")
    if kept and "-" not in kept:  # a whole-object checksum, not one of parts
        return int(head["ContentLength"]), base64.b64decode(kept).hex()
    digest = hashlib.sha256()
    size = 0
    for chunk in iter_object(s3, bucket, key):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


@task(name="verify-backup-objects", **RETRIES, timeout_seconds=6 * 3600)
def verify_backup_objects(objects: list[StoredObject]) -> int:
    """Check objects' sizes and sha256s against the manifest; refuse on a mismatch."""
    s3, bucket, _ = _location()
    workers = get_settings().uploads_concurrency
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        found = list(pool.map(lambda o: object_sha256(s3, bucket, o.key), objects))
    bad = [
        stored.key
        for stored, (size, sha256) in zip(objects, found, strict=True)
        if (size, sha256) != (stored.size_bytes, stored.sha256)
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (
            f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        raise BackupMismatchError(
            f"{len(bad)} backup object(s) do not match the manifest's size or sha256: "
            f"{shown}; refusing to restore from this backup (nothing was changed)"
        )
    get_run_logger().info(
        "Verified %s backup objects against the manifest", len(objects)
    )
    return len(objects)


def delete_keys(s3: Any, bucket: str, keys: Iterable[str]) -> int:
    """Delete ``keys`` in batches; fail naming the first key S3 would not delete.

    Args:
        s3: boto3 S3 client.
        bucket: the keys' bucket.
        keys: keys to delete.
    """
    batch: list[str] = []
    deleted = 0

    def flush() -> None:
        nonlocal deleted
        try:
            answer = s3.delete_objects(
                Bucket=bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
        except (BotoCoreError, ClientError) as exc:
            raise storage.translate(exc, f"delete objects in s3://{bucket}") from None
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise CheckFailedError(
                f"could not delete s3://{bucket}/{first['Key']}: {first.get('Code')}"
            )
        deleted += len(batch)
        batch.clear()

    for key in keys:
        batch.append(key)
        if len(batch) == DELETE_BATCH:
            flush()
    if batch:
        flush()
    return deleted


@task(name="delete-backup", **RETRIES)
def delete_backup(backup_id: str, keep_keys: set[str]) -> int:
    """Delete a backup: its manifest first, then its objects not in ``keep_keys``.

    Objects that newer manifests still point at (unchanged uploads) are kept.
    """
    s3, bucket, environment = _location()
    prefix = backup_prefix(environment, backup_id)
    delete_keys(s3, bucket, [prefix + MANIFEST_NAME])
    keys = [
        o["Key"] for o in list_keys(s3, bucket, prefix) if o["Key"] not in keep_keys
    ]
    deleted = delete_keys(s3, bucket, keys)
    get_run_logger().info(
        "Deleted backup %s: %s objects (kept %s still referenced)",
        backup_id,
        deleted,
        len(keep_keys & {o["Key"] for o in list_keys(s3, bucket, prefix)}),
    )
    return deleted


@task(name="abort-stale-uploads", **RETRIES)
def abort_stale_uploads(older_than_hours: float, dry_run: bool) -> list[str]:
    """Abort multipart uploads under this environment left open for too long."""
    s3, bucket, environment = _location()
    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    stale: list[dict[str, Any]] = []
    try:
        pages = s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Prefix=f"{environment}/"
        )
        for page in pages:
            stale += [u for u in page.get("Uploads", []) if u["Initiated"] < cutoff]
        if not dry_run:
            for upload in stale:
                s3.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
    except (BotoCoreError, ClientError) as exc:
        raise storage.translate(exc, "abort stale multipart uploads") from None
    if stale and not dry_run:
        get_run_logger().info("Aborted %s stale multipart uploads", len(stale))
    return [u["Key"] for u in stale]


@task(name="delete-partial-backup", cache_policy=NO_CACHE)  # prune retries it later
def delete_partial_backup(backup_id: str) -> int:
    """Delete what a failed backup wrote; it has no manifest and never will."""
    s3, bucket, environment = _location()
    prefix = backup_prefix(environment, backup_id)
    keys = [o["Key"] for o in list_keys(s3, bucket, prefix)]
    if prefix + MANIFEST_NAME in keys:
        raise RefusedError(f"backup {backup_id} is complete; refusing to delete it")
    deleted = delete_keys(s3, bucket, keys)
    get_run_logger().info("Deleted %s objects of failed backup %s", deleted, backup_id)
    return deleted
