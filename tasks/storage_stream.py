"""Streams into and out of S3: multipart uploads of unknown length, memory bounded.

A ``MultipartUpload`` takes bytes as they come (from pg_dump through zstd, from a
Redis replication link), hashes them, and sends each full part while the next one
fills, with at most ``concurrency`` parts in flight. Any failure aborts the upload,
so no half-written object and no open multipart upload is left behind.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import IO, Any

import zstandard
from botocore.exceptions import BotoCoreError, ClientError

from runbook.backups import BackupMismatchError, StoredObject
from runbook.settings import get_settings
from tasks.storage import client, translate

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_PARTS = 10_000
# The part size doubles every this many parts, so any stream fits in 10,000 parts.
PARTS_PER_SIZE_STEP = 2_000
ABORT_ATTEMPTS = 3
CHECKSUM = "CRC32"
# glibc's mallopt parameter number for the mmap threshold
M_MMAP_THRESHOLD = -3


@functools.cache
def release_big_buffers_on_free() -> None:
    """Have the C allocator hand freed stream buffers back to the system at once.

    glibc raises its mmap threshold each time a big block is freed, after which
    parts and chunks are carved from the heap and stay resident; a fixed
    threshold keeps a long stream's memory flat. Does nothing off glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    if not mallopt(M_MMAP_THRESHOLD, MIB):
        logger.debug("The C allocator refused a fixed mmap threshold")


class MultipartUpload:
    """Write one S3 object as a stream of parts; abort it on any failure.

    Use as a context manager: ``write`` bytes in, and leaving the block without an
    error completes the object; leaving it with one aborts the upload.
    """

    def __init__(
        self, s3: Any, bucket: str, key: str, part_size: int, concurrency: int
    ) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.part_size = part_size
        self.concurrency = concurrency
        self.size_bytes = 0
        self._sha256 = hashlib.sha256()
        self._buffer = bytearray(part_size)
        self._filled = 0
        release_big_buffers_on_free()
        self._parts: list[dict[str, Any]] = []
        self._pending: deque[Future[dict[str, Any]]] = deque()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="s3-part")
        self._upload_id: str | None = None

    @property
    def sha256(self) -> str:
        """Return the hex sha256 of every byte written so far."""
        return self._sha256.hexdigest()

    def __enter__(self) -> MultipartUpload:
        try:
            # Each part carries a CRC32 (botocore adds it); naming the algorithm
            # here has S3 check every part against it and keep a checksum of
            # checksums, as aws-cli's uploads do, rather than reread the object.
            answer = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ChecksumAlgorithm=CHECKSUM
            )
        except (BotoCoreError, ClientError) as exc:
            self._pool.shutdown()
            raise translate(
                exc, f"start upload of s3://{self.bucket}/{self.key}"
            ) from None
        self._upload_id = answer["UploadId"]
        logger.debug("Started multipart upload of s3://%s/%s", self.bucket, self.key)
        return self

    def write(self, data: bytes) -> int:
        """Take ``data``; send full parts, waiting while too many are in flight."""
        self._sha256.update(data)
        self.size_bytes += len(data)
        view = memoryview(data)
        while view:
            taken = view[: len(self._buffer) - self._filled]
            self._buffer[self._filled : self._filled + len(taken)] = taken
            self._filled += len(taken)
            view = view[len(taken) :]
            if self._filled == len(self._buffer):
                # The full buffer itself is sent: no copy of it is made. Its
                # successor is exactly a part's size, never grown by reallocation.
                self._send(self._buffer)
                self._buffer, self._filled = bytearray(self.part_size), 0
        return len(data)

    def _send(self, body: bytearray) -> None:
        while len(self._pending) >= self.concurrency:
            self._parts.append(self._pending.popleft().result())
        number = len(self._parts) + len(self._pending) + 1
        if number > MAX_PARTS:
            raise ValueError(
                f"s3://{self.bucket}/{self.key} needs over {MAX_PARTS} parts"
            )
        self._pending.append(self._pool.submit(self._upload_part, number, body))
        if number % PARTS_PER_SIZE_STEP == 0:
            self.part_size *= 2

    def _upload_part(self, number: int, body: bytearray) -> dict[str, Any]:
        try:
            answer = self.s3.upload_part(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
                ChecksumAlgorithm=CHECKSUM,
            )
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, f"upload part {number} of {self.key}") from None
        return {
            "PartNumber": number,
            "ETag": answer["ETag"],
            f"Checksum{CHECKSUM}": answer[f"Checksum{CHECKSUM}"],
        }

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self._abort()
            return
        try:
            self._complete()
        except BaseException:
            self._abort()
            raise
        finally:
            self._pool.shutdown()

    def _complete(self) -> None:
        if self._filled or not (self._parts or self._pending):
            del self._buffer[self._filled :]  # the last part is the rest
            self._send(self._buffer)
            self._buffer, self._filled = bytearray(), 0
        while self._pending:
            self._parts.append(self._pending.popleft().result())
        try:
            self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except (BotoCoreError, ClientError) as exc:
            raise translate(exc, f"complete upload of {self.key}") from None
        logger.debug(
            "Completed s3://%s/%s in %s parts", self.bucket, self.key, len(self._parts)
        )

    def _abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for attempt in range(1, ABORT_ATTEMPTS + 1):
            try:
                self.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
                )
            except (BotoCoreError, ClientError) as exc:
                logger.warning(
                    "Could not abort the upload of s3://%s/%s (attempt %s: %s); "
                    "prune-backups aborts it later",
                    self.bucket,
                    self.key,
                    attempt,
                    type(exc).__name__,
                )
                continue
            logger.debug(
                "Aborted multipart upload of s3://%s/%s", self.bucket, self.key
            )
            return


def backup_stream(bucket: str, key: str) -> tuple[MultipartUpload, Any]:
    """Return an upload of ``key`` and a zstd compressor, sized by the settings.

    Write through ``compressor.stream_writer(upload, closefd=False)`` inside
    ``with upload:``.
    """
    settings = get_settings()
    upload = MultipartUpload(
        client(timeout_seconds=60),
        bucket,
        key,
        settings.backup_part_size_mb * MIB,
        settings.backup_part_concurrency,
    )
    compressor = zstandard.ZstdCompressor(
        level=settings.backup_zstd_level,
        threads=settings.backup_zstd_threads,
        write_checksum=True,
    )
    return upload, compressor


def iter_object(
    s3: Any, bucket: str, key: str, chunk_bytes: int = MIB
) -> Iterator[bytes]:
    """Yield an object's bytes in chunks, translating S3 errors.

    Args:
        s3: boto3 S3 client.
        bucket: the object's bucket.
        key: the object's key.
        chunk_bytes: size of each chunk read.
    """
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        yield from body.iter_chunks(chunk_bytes)
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, f"read s3://{bucket}/{key}") from None


class VerifiedObject:
    """Chunks of an object, hashed as they pass; ``verify`` compares at the end."""

    def __init__(self, bucket: str, stored: StoredObject) -> None:
        self.stored = stored
        self._chunks = iter_object(client(timeout_seconds=60), bucket, stored.key)
        self._sha256 = hashlib.sha256()
        self.size_bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._sha256.update(chunk)
            self.size_bytes += len(chunk)
            yield chunk

    def drain_and_verify(self) -> None:
        """Read what is left of the object, then ``verify``."""
        for _ in self:
            pass
        self.verify()

    def verify(self) -> None:
        """Fail unless the bytes read match the manifest's size and sha256."""
        digest = self._sha256.hexdigest()
        if (self.size_bytes, digest) != (self.stored.size_bytes, self.stored.sha256):
            raise BackupMismatchError(
                f"backup object {self.stored.key} does not match its manifest: "
                f"{self.size_bytes} bytes with sha256 {digest[:12]}..., expected "
                f"{self.stored.size_bytes} bytes with sha256 "
                f"{self.stored.sha256[:12]}..."
            )


def decompress_into(checked: VerifiedObject, sink: IO[bytes]) -> int:
    """Write a zstd object's content to ``sink``, then verify the object's checksum.

    Args:
        checked: the object, hashed as it is read.
        sink: where the decompressed bytes go.
    """
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    written = 0
    try:
        for chunk in checked:
            data = decompressor.decompress(chunk)
            sink.write(data)
            written += len(data)
    except zstandard.ZstdError as exc:
        checked.drain_and_verify()  # a checksum mismatch is the better news
        raise BackupMismatchError(
            f"backup object {checked.stored.key} is corrupt: {exc}"
        ) from None
    checked.verify()
    return written
