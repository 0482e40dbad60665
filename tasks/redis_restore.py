"""Tasks that restore Redis from a backup's RDB snapshot, through the protocol only.

The snapshot is loaded into a temporary Valkey (or Redis) server started here, then
every key is copied into the target with ``DUMP``/``PTTL`` and ``RESTORE ...
REPLACE`` in pipelines, keeping TTLs: it works against managed Redis, whose files
and restarts are not ours.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import redis
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.backups import StoredObject
from runbook.errors import CheckFailedError, ConfigError
from runbook.settings import get_settings
from tasks.redis import client, unreachable
from tasks.redis_rdb import server_facts
from tasks.storage_stream import VerifiedObject, decompress_into

COPY_BATCH = 500
LOAD_TIMEOUT_SECONDS = 600


@task(name="fetch-redis-snapshot", cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def fetch_redis_snapshot(bucket: str, stored: StoredObject, folder: Path) -> Path:
    """Download a backup's RDB snapshot into ``folder``, checking its sha256.

    Args:
        bucket: backup bucket.
        stored: the snapshot object, as the manifest lists it.
        folder: where ``dump.rdb`` is written.
    """
    path = folder / "dump.rdb"
    checked = VerifiedObject(bucket, stored)
    with path.open("wb") as sink:
        written = decompress_into(checked, sink)
    get_run_logger().info(
        "Downloaded Redis snapshot %s (%s bytes, sha256 verified)", stored.key, written
    )
    return path


@contextlib.contextmanager
def scratch_server(rdb: Path) -> Iterator[str]:
    """Run a temporary Valkey/Redis server on ``rdb`` for the block; yield its URL.

    Args:
        rdb: the snapshot file; the server loads it from its folder.
    """
    binary = get_settings().redis_server_bin
    if binary is None:
        from sandbox.valkey import valkey_binary

        binary = valkey_binary()
    if not binary.is_file():
        raise ConfigError(
            f"no redis/valkey server at {binary}; set RUNBOOK_REDIS_SERVER_BIN"
        )
    password = secrets.token_urlsafe(16)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = rdb.parent / "scratch.conf"
    config.write_text(
        f"bind 127.0.0.1\nport {port}\ndir {rdb.parent}\ndbfilename {rdb.name}\n"
        f'save ""\nappendonly no\nrequirepass {password}\n'
    )
    config.chmod(0o600)
    log = (rdb.parent / "scratch.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 (argv list, configured binary)
        [str(binary), str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        _wait_loaded(url, process, rdb.parent / "scratch.log")
        get_run_logger().info(
            "Started a scratch Redis on port %s from %s", port, rdb.name
        )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_loaded(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + LOAD_TIMEOUT_SECONDS
    conn = redis.Redis.from_url(url, socket_timeout=5)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise CheckFailedError(
                    "the scratch Redis could not load the snapshot: " + " / ".join(tail)
                )
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if conn.ping() and not conn.info("persistence").get("loading"):
                    return
            time.sleep(0.1)
    finally:
        conn.close()
    raise CheckFailedError("the scratch Redis did not finish loading the snapshot")


def _with_db(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


@task(name="count-redis-keys", cache_policy=NO_CACHE)
def count_redis_keys(url: str) -> dict[str, int]:
    """Count the keys of each logical database of the Redis at ``url``."""
    keys: dict[str, int] = server_facts(url)["keys_per_db"]
    get_run_logger().info("Counted %s keys in the scratch Redis", sum(keys.values()))
    return keys


@task(name="copy-redis-keys", cache_policy=NO_CACHE, timeout_seconds=6 * 3600)
def copy_redis_keys(source_url: str, flush: bool) -> dict[str, int]:
    """Copy every key of ``source_url`` into the app's Redis, TTLs kept, replacing.

    Args:
        source_url: the scratch server holding the snapshot.
        flush: empty each target database first (the caller has the confirmation).
    """
    logger = get_run_logger()
    target_url = get_settings().secret("redis_url")
    copied: dict[str, int] = {}
    for db in sorted(server_facts(source_url)["keys_per_db"], key=int):
        source = redis.Redis.from_url(_with_db(source_url, int(db)), socket_timeout=30)
        target = client(_with_db(target_url, int(db)), timeout_seconds=30)
        try:
            if flush:
                target.flushdb()
                logger.info("Flushed Redis database %s before the restore", db)
            copied[db] = _copy_keys(source, target)
        except redis.RedisError as exc:
            raise unreachable(exc) from None
        finally:
            source.close()
            target.close()
    logger.info("Restored %s Redis keys with their TTLs", sum(copied.values()))
    return copied


def _copy_keys(source: redis.Redis, target: redis.Redis) -> int:
    copied = 0
    batch: list[bytes] = []

    def flush_batch() -> int:
        with source.pipeline(transaction=False) as reads:
            for key in batch:
                reads.dump(key)
                reads.pttl(key)
            answers = reads.execute()
        restored = 0
        with target.pipeline(transaction=False) as writes:
            for key, payload, ttl in zip(
                batch, answers[::2], answers[1::2], strict=True
            ):
                if payload is None or ttl == -2:  # expired meanwhile
                    continue
                writes.restore(key, max(int(ttl), 0), payload, replace=True)
                restored += 1
            writes.execute()
        batch.clear()
        return restored

    for key in source.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= COPY_BATCH:
            copied += flush_batch()
    if batch:
        copied += flush_batch()
    return copied


def make_temp_folder(prefix: str) -> Path:
    """Return a new private folder under the restore temp folder."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=get_settings().restore_temp_dir))
