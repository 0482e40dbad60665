"""Tasks that copy the uploads store into a backup and back, sending only changes.

The store is the uploads bucket (copied server-side with ``CopyObject``, S3
computing each copy's sha256) or a local folder (each changed file sent with its
sha256, which S3 checks on arrival). An object is unchanged when its ETag (for a
folder: size and modification time) and size match the previous backup's manifest;
it is then not copied again and the new manifest points at the earlier copy, so an
unchanged store costs one listing.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.backups import UPLOADS_FOLDER, Manifest, StoredObject, UploadsPart
from runbook.settings import get_settings
from tasks import storage
from tasks.storage_backups import delete_keys, list_keys, object_sha256
from tasks.storage_stream import MIB, MultipartUpload, iter_object


@dataclass(frozen=True)
class Upload:
    """One object of the uploads store as listed now."""

    key: str  # relative to the store's root
    size_bytes: int
    marker: str  # ETag, or size and mtime for a file


def _scan_folder(root: Path) -> Iterator[Upload]:
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    yield Upload(
                        Path(entry.path).relative_to(root).as_posix(),
                        info.st_size,
                        f"{info.st_size}:{info.st_mtime_ns}",
                    )


def list_uploads(s3: Any) -> tuple[str, list[Upload]]:
    """Describe the uploads store and list every object in it, in one listing.

    Args:
        s3: boto3 S3 client.
    """
    settings = get_settings()
    if settings.uploads_dir is not None:
        return str(settings.uploads_dir), list(_scan_folder(settings.uploads_dir))
    bucket, prefix = settings.uploads_bucket, settings.uploads_prefix
    found = [
        Upload(o["Key"].removeprefix(prefix), int(o["Size"]), str(o["ETag"]))
        for o in list_keys(s3, bucket, prefix)
    ]
    return f"s3://{bucket}/{prefix}", found


# No task retries: botocore retries each request; the next backup copies the rest.
@task(name="copy-uploads", cache_policy=NO_CACHE)
def copy_uploads(
    backup_prefix: str, previous: Manifest | None
) -> tuple[list[StoredObject], UploadsPart]:
    """Copy the uploads that changed since ``previous`` into the backup, at once.

    Args:
        backup_prefix: key prefix of the backup being written.
        previous: manifest of the newest complete backup holding uploads.
    """
    logger = get_run_logger()
    settings = get_settings()
    s3 = storage.client(60, 5, settings.uploads_concurrency)
    source, uploads = list_uploads(s3)
    earlier = {o.name: o for o in previous.upload_objects()} if previous else {}
    kept: list[StoredObject] = []
    changed: list[Upload] = []
    for upload in uploads:
        before = earlier.get(UPLOADS_FOLDER + upload.key)
        if (
            before is not None
            and before.source_etag == upload.marker
            and before.size_bytes == upload.size_bytes
        ):
            kept.append(before)
        else:
            changed.append(upload)
    copy = _put_file if settings.uploads_dir is not None else _copy_object
    with ThreadPoolExecutor(settings.uploads_concurrency) as pool:
        copied = list(pool.map(lambda u: copy(s3, u, backup_prefix), changed))
    stored = kept + [item for item in copied if item is not None]
    part = UploadsPart(
        source=source,
        objects=len(stored),
        total_bytes=sum(o.size_bytes for o in stored),
        copied=len(stored) - len(kept),
        reused=len(kept),
    )
    logger.info(
        "Copied %s changed uploads from %s into the backup; %s unchanged kept",
        part.copied,
        source,
        part.reused,
    )
    return stored, part


def _copy_object(s3: Any, upload: Upload, backup_prefix: str) -> StoredObject | None:
    settings = get_settings()
    name = UPLOADS_FOLDER + upload.key
    key = backup_prefix + name
    source = {
        "Bucket": settings.uploads_bucket,
        "Key": settings.uploads_prefix + upload.key,
    }
    try:
        answer = s3.copy_object(
            Bucket=settings.backup_bucket,
            Key=key,
            CopySource=source,
            CopySourceIfMatch=upload.marker,
            ChecksumAlgorithm="SHA256",
        )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in {"NoSuchKey", "404", "PreconditionFailed", "412"}:
            return None  # deleted or rewritten since the listing: the next backup
        raise storage.translate(exc, f"copy upload {upload.key!r}") from None
    except BotoCoreError as exc:
        raise storage.translate(exc, f"copy upload {upload.key!r}") from None
    checksum = answer.get("CopyObjectResult", {}).get("ChecksumSHA256")
    if checksum:
        sha256 = base64.b64decode(checksum).hex()
    else:  # an S3 that does not compute checksums on copy: read it back
        _, sha256 = object_sha256(s3, settings.backup_bucket, key)
    return StoredObject(
        name=name,
        key=key,
        size_bytes=upload.size_bytes,
        sha256=sha256,
        source_etag=upload.marker,
    )


def _put_file(s3: Any, upload: Upload, backup_prefix: str) -> StoredObject | None:
    settings = get_settings()
    assert settings.uploads_dir is not None
    path = settings.uploads_dir / upload.key
    name = UPLOADS_FOLDER + upload.key
    key = backup_prefix + name
    part_size = settings.backup_part_size_mb * MIB
    try:
        with path.open("rb") as handle:
            if upload.size_bytes <= part_size:
                data = handle.read()
                digest = hashlib.sha256(data).digest()  # once: S3 checks it, we keep it
                s3.put_object(
                    Bucket=settings.backup_bucket,
                    Key=key,
                    Body=data,
                    ChecksumSHA256=base64.b64encode(digest).decode(),
                )
                size, sha256 = len(data), digest.hex()
            else:
                with MultipartUpload(
                    s3, settings.backup_bucket, key, part_size, 2
                ) as stream:
                    while chunk := handle.read(MIB):
                        stream.write(chunk)
                size, sha256 = stream.size_bytes, stream.sha256
    except FileNotFoundError:
        return None  # deleted since the listing
    except (BotoCoreError, ClientError) as exc:
        raise storage.translate(exc, f"upload {upload.key!r}") from None
    return StoredObject(
        name=name, key=key, size_bytes=size, sha256=sha256, source_etag=upload.marker
    )


@task(name="restore-uploads", cache_policy=NO_CACHE, timeout_seconds=12 * 3600)
def restore_uploads(manifest: Manifest, delete_extra: bool) -> dict[str, Any]:
    """Copy back every upload that differs from the backup; delete extras if asked.

    Args:
        manifest: the backup restored from; its objects are already verified.
        delete_extra: delete uploads that are not in the backup.
    """
    logger = get_run_logger()
    settings = get_settings()
    s3 = storage.client(60, 5, settings.uploads_concurrency)
    source, uploads = list_uploads(s3)
    now = {u.key: u for u in uploads}
    wanted = {o.name.removeprefix(UPLOADS_FOLDER): o for o in manifest.upload_objects()}
    differing = [
        (key, stored)
        for key, stored in wanted.items()
        if key not in now
        or now[key].size_bytes != stored.size_bytes
        or now[key].marker != stored.source_etag
    ]
    restore = _write_file if settings.uploads_dir is not None else _copy_back
    with ThreadPoolExecutor(settings.uploads_concurrency) as pool:
        list(pool.map(lambda item: restore(s3, *item), differing))
    extra = sorted(set(now) - set(wanted))
    deleted = 0
    if extra and delete_extra:
        if settings.uploads_dir is not None:
            for key in extra:
                (settings.uploads_dir / key).unlink(missing_ok=True)
            deleted = len(extra)
        else:
            prefix = settings.uploads_prefix
            deleted = delete_keys(
                s3, settings.uploads_bucket, [prefix + key for key in extra]
            )
        logger.info("Deleted %s uploads that are not in the backup", deleted)
    elif extra:
        logger.warning(
            "Kept %s uploads that are not in the backup; rerun with "
            "delete_extra_uploads=true to delete them",
            len(extra),
        )
    logger.info(
        "Restored %s uploads into %s; %s already matched",
        len(differing),
        source,
        len(wanted) - len(differing),
    )
    return {
        "restored": len(differing),
        "unchanged": len(wanted) - len(differing),
        "extra": len(extra),
        "deleted": deleted,
    }


def _copy_back(s3: Any, key: str, stored: StoredObject) -> None:
    settings = get_settings()
    try:
        s3.copy_object(
            Bucket=settings.uploads_bucket,
            Key=settings.uploads_prefix + key,
            CopySource={"Bucket": settings.backup_bucket, "Key": stored.key},
        )
    except (BotoCoreError, ClientError) as exc:
        raise storage.translate(exc, f"restore upload {key!r}") from None


def _write_file(s3: Any, key: str, stored: StoredObject) -> None:
    settings = get_settings()
    assert settings.uploads_dir is not None
    path = settings.uploads_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.restoring")
    with partial.open("wb") as handle:
        for chunk in iter_object(s3, settings.backup_bucket, stored.key):
            handle.write(chunk)
    os.replace(partial, path)
    # Keep the recorded modification time, so the file matches its manifest entry.
    _, _, mtime_ns = (stored.source_etag or "").partition(":")
    if mtime_ns.isdigit():
        os.utime(path, ns=(int(mtime_ns), int(mtime_ns)))
