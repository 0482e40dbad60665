"""Tasks that talk to S3 (uploads and backup buckets)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prefect import get_run_logger

from runbook.errors import CheckFailedError, TargetUnreachableError
from runbook.settings import get_settings
from tasks._policy import probe_task

PROBE_PREFIX = "_runbook/health/"


def client(
    timeout_seconds: float | None = None,
    max_attempts: int = 3,
    max_pool_connections: int = 10,
) -> Any:
    """Return a boto3 S3 client built from the settings.

    Args:
        timeout_seconds: connect and read timeout of each request.
        max_attempts: botocore's own attempts for throttling and 5xx answers.
        max_pool_connections: connections kept open, for threads sharing it.
    """
    settings = get_settings()
    timeout = timeout_seconds or settings.check_timeout_seconds
    return boto3.client(
        "s3",
        endpoint_url=str(settings.s3_endpoint_url)
        if settings.s3_endpoint_url
        else None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.secret("aws_access_key_id") or None,
        aws_secret_access_key=settings.secret("aws_secret_access_key") or None,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max_pool_connections,
        ),
    )


def translate(exc: Exception, attempted: str) -> Exception:
    """Turn a botocore error into ours: 5xx and network errors are transient."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        message = f"could not {attempted}: {error.get('Code')} ({status})"
        if status >= 500 or error.get("Code") in {"SlowDown", "RequestTimeout"}:
            return TargetUnreachableError(message)
        return CheckFailedError(message)
    return TargetUnreachableError(f"could not {attempted}: {type(exc).__name__}")


@probe_task("check-storage", timeout_seconds=60)
async def check_storage(verbose: bool = False) -> dict[str, Any]:
    """Head the uploads bucket, then write, read back and delete a probe object."""
    # boto3 blocks; a thread keeps the task's timeout in force around it.
    result = await asyncio.to_thread(_probe_bucket, verbose)
    get_run_logger().info(
        "Checked storage: bucket %r up in %s ms",
        get_settings().uploads_bucket,
        result["latency_ms"],
    )
    return result


def _probe_bucket(verbose: bool) -> dict[str, Any]:
    settings = get_settings()
    bucket = settings.uploads_bucket
    s3 = client(max_attempts=1)
    key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    body = uuid.uuid4().bytes
    timings: dict[str, float] = {}
    step = "head bucket"
    try:
        started = time.perf_counter()
        s3.head_bucket(Bucket=bucket)
        timings["head_ms"] = _since(started)
        step = "write probe object"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        timings["put_ms"] = _since(started) - timings["head_ms"]
        step = "read probe object"
        read = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        step = "delete probe object"
        s3.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as exc:
        raise translate(exc, f"{step} in bucket {bucket!r}") from None
    if read != body:
        raise CheckFailedError(f"probe object in bucket {bucket!r} read back changed")
    result: dict[str, Any] = {"status": "up", "latency_ms": _since(started)}
    if verbose:
        result.update(bucket=bucket, **timings)
    return result


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
