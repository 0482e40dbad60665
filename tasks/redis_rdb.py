"""Tasks that back up Redis through its own protocol, as a replica would.

A backup asks the server for an RDB snapshot over the network, the way
``redis-cli --rdb`` does (``REPLCONF rdb-only 1`` then ``SYNC``), and streams it to
S3: no shell or file access to the Redis host, so it works where the host is not
ours. Restores are in ``tasks/redis_restore.py``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from typing import IO, Any, cast
from urllib.parse import unquote, urlsplit

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.backups import StoredObject
from runbook.errors import CheckFailedError, TargetUnreachableError
from runbook.settings import get_settings
from tasks.storage_stream import MIB, backup_stream

EOF_MARK_BYTES = 40


def _command(*words: str | bytes) -> bytes:
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode() if isinstance(word, str) else word
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ReplicationLink:
    """A replica's connection to Redis that fetches one RDB snapshot."""

    def __init__(self, url: str, timeout_seconds: float, eof_capable: bool) -> None:
        self.url = urlsplit(url)
        self.timeout_seconds = timeout_seconds
        self.eof_capable = eof_capable
        self.received_bytes = 0

    def _connect(self) -> Any:
        host, port = self.url.hostname or "127.0.0.1", self.url.port or 6379
        try:
            sock = socket.create_connection((host, port), self.timeout_seconds)
            if self.url.scheme == "rediss":
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            raise TargetUnreachableError(
                f"could not connect to Redis at {host}:{port}: {type(exc).__name__}"
            ) from None
        return sock

    def _reply(self, stream: Any, what: str) -> bytes:
        line = stream.readline()
        if not line:
            raise TargetUnreachableError(f"Redis closed the link during {what}")
        if line.startswith(b"-"):
            message = line[1:].decode(errors="replace").strip()
            raise CheckFailedError(f"Redis refused {what}: {message}")
        return bytes(line.rstrip(b"\r\n"))

    def snapshot(self) -> Iterator[bytes]:
        """Yield the RDB snapshot's bytes as they arrive."""
        sock = self._connect()
        try:
            stream = sock.makefile("rb")
            password = unquote(self.url.password or "")
            if password:
                user = unquote(self.url.username or "") or "default"
                sock.sendall(_command("AUTH", user, password))
                self._reply(stream, "AUTH")
            sock.sendall(_command("REPLCONF", "rdb-only", "1"))
            with contextlib.suppress(CheckFailedError):  # older than Redis 7
                self._reply(stream, "REPLCONF rdb-only")
            if self.eof_capable:
                sock.sendall(_command("REPLCONF", "capa", "eof"))
                self._reply(stream, "REPLCONF capa")
            sock.sendall(_command("SYNC"))
            header = b""
            while not header.startswith(b"$"):  # newlines keep the link alive
                header = self._reply(stream, "SYNC")
            if header.startswith(b"$EOF:"):
                yield from self._until_mark(stream, header[5:])
            else:
                yield from self._exactly(stream, int(header[1:]))
        except (OSError, ValueError) as exc:
            raise TargetUnreachableError(
                f"the link to Redis broke after {self.received_bytes} bytes of the "
                f"snapshot: {type(exc).__name__}"
            ) from None
        finally:
            sock.close()

    def _exactly(self, stream: Any, length: int) -> Iterator[bytes]:
        while self.received_bytes < length:
            chunk = stream.read1(min(MIB, length - self.received_bytes))
            if not chunk:
                raise TargetUnreachableError(
                    f"Redis closed the link after {self.received_bytes} of "
                    f"{length} bytes of the snapshot"
                )
            self.received_bytes += len(chunk)
            yield chunk

    def _until_mark(self, stream: Any, mark: bytes) -> Iterator[bytes]:
        if len(mark) != EOF_MARK_BYTES:
            raise CheckFailedError("Redis sent a malformed end-of-snapshot mark")
        held = b""
        while True:
            chunk = stream.read1(MIB)
            if not chunk:
                raise TargetUnreachableError(
                    f"Redis closed the link after {self.received_bytes} bytes of "
                    "the snapshot, before its end mark"
                )
            held += chunk
            if held.endswith(mark):
                body = held[:-EOF_MARK_BYTES]
                self.received_bytes += len(body)
                yield body
                return
            body, held = held[:-EOF_MARK_BYTES], held[-EOF_MARK_BYTES:]
            self.received_bytes += len(body)
            yield body


def server_facts(url: str | None = None) -> dict[str, Any]:
    """Return the server's version and its keys per logical database.

    Args:
        url: Redis URL; the app's when omitted.
    """
    # Imported here: the client library adds some 20 MB to a process, and the
    # snapshot itself needs only a socket
    import redis

    from tasks.redis import client, unreachable

    conn = client(url)
    try:
        info = conn.info()
    except redis.RedisError as exc:
        raise unreachable(exc) from None
    finally:
        conn.close()
    version = info.get("valkey_version") or info.get("redis_version") or "unknown"
    keys = {
        name.removeprefix("db"): int(value["keys"])
        for name, value in info.items()
        if name.startswith("db") and name[2:].isdigit() and isinstance(value, dict)
    }
    return {"server_version": str(version), "keys_per_db": keys}


# No task retries: a failed snapshot is fetched again by the next hourly backup.
@task(name="dump-redis", cache_policy=NO_CACHE)
def dump_redis(
    bucket: str, key: str, name: str, eof_capable: bool = False
) -> tuple[StoredObject, dict[str, Any]]:
    """Fetch an RDB snapshot from Redis over the network and stream it to S3.

    Args:
        bucket: backup bucket.
        key: key of the snapshot object.
        name: the object's name inside the backup.
        eof_capable: ask for the diskless form (no file written on the server).
    """
    logger = get_run_logger()
    settings = get_settings()
    facts = server_facts()
    link = ReplicationLink(settings.secret("redis_url"), 60, eof_capable)
    started = time.perf_counter()
    upload, compressor = backup_stream(bucket, key)
    with (
        upload,
        compressor.stream_writer(cast(IO[bytes], upload), closefd=False) as zstd,
    ):
        for chunk in link.snapshot():
            zstd.write(chunk)
    seconds = round(time.perf_counter() - started, 3)
    logger.info(
        "Fetched Redis snapshot to s3://%s/%s: %s bytes, %s compressed, in %s s",
        bucket,
        key,
        link.received_bytes,
        upload.size_bytes,
        seconds,
    )
    stored = StoredObject(
        name=name, key=key, size_bytes=upload.size_bytes, sha256=upload.sha256
    )
    return stored, {**facts, "rdb_bytes": link.received_bytes, "seconds": seconds}
