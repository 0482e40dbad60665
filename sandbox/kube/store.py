"""Thread-safe object store with resource versions and a watch event log."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# Resources whose spec changes bump metadata.generation.
GENERATION_RESOURCES = frozenset({"deployments.apps", "replicasets.apps", "jobs.batch"})
EVENT_LOG_SIZE = 20_000


def now_rfc3339() -> str:
    """Return the current UTC time the way the API server writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime:
    """Parse an API timestamp into an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class ApiError(Exception):
    """Carry a Kubernetes ``Status`` failure: HTTP code, reason and message."""

    def __init__(
        self, code: int, reason: str, message: str, details: Obj | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self) -> Obj:
        """Return the error as a ``Status`` object body."""
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource: str, name: str) -> ApiError:
    """Build the NotFound error the API server answers for a missing object."""
    return ApiError(
        404, "NotFound", f'{resource} "{name}" not found', details(resource, name)
    )


def details(resource: str, name: str) -> Obj:
    """Return the ``details`` block of a Status about one named object."""
    plural, _, group = resource.partition(".")
    return {"name": name, "group": group, "kind": plural}


@dataclass(frozen=True)
class WatchEvent:
    """Record one change: its resource version, type and the object after it."""

    rv: int
    type: str
    resource: str
    namespace: str
    obj: Obj


class Store:
    """Hold API objects by resource, namespace and name, like etcd behind a server."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._rv = 0
        self._events: deque[WatchEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self.closed = False
        self.dirty = False

    @property
    def lock(self) -> threading.RLock:
        """Return the lock that makes a read-modify-write sequence atomic."""
        return self._lock

    @property
    def resource_version(self) -> str:
        """Return the latest resource version as the API writes it."""
        with self._lock:
            return str(self._rv)

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        """Return a copy of one object or raise NotFound."""
        with self._lock:
            obj = self._objects.get(resource, {}).get((namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def find(self, resource: str, namespace: str, name: str) -> Obj | None:
        """Return a copy of one object, or None when it does not exist."""
        with self._lock:
            obj = self._objects.get(resource, {}).get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Return copies of a resource's objects, optionally in one namespace."""
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in self._objects.get(resource, {}).items()
                if namespace is None or ns == namespace
            ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), _name(o)))
        return items

    def create(self, resource: str, obj: Obj, *, uid: str | None = None) -> Obj:
        """Store a new object, stamping uid, timestamps and resource version."""
        meta = obj.setdefault("metadata", {})
        namespace = meta.get("namespace", "")
        with self._lock:
            bucket = self._objects.setdefault(resource, {})
            if (namespace, meta["name"]) in bucket:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{resource} "{meta["name"]}" already exists',
                    details(resource, meta["name"]),
                )
            meta["uid"] = uid or str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if resource in GENERATION_RESOURCES:
                meta["generation"] = 1
            stored = self._commit(resource, namespace, obj, "ADDED")
            bucket[(namespace, meta["name"])] = stored
            return copy.deepcopy(stored)

    def update(self, resource: str, obj: Obj, *, check_version: bool = True) -> Obj:
        """Replace an object; a stale ``resourceVersion`` raises Conflict."""
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        with self._lock:
            bucket = self._objects.get(resource, {})
            current = bucket.get((namespace, name))
            if current is None:
                raise not_found(resource, name)
            wanted = meta.get("resourceVersion")
            have = current["metadata"]["resourceVersion"]
            if check_version and wanted and wanted != have:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource} "{name}": the '
                    "object has been modified; please apply your changes to the "
                    "latest version and try again",
                    details(resource, name),
                )
            for field in ("uid", "creationTimestamp", "generation"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
            if resource in GENERATION_RESOURCES and obj.get("spec") != current.get(
                "spec"
            ):
                meta["generation"] = current["metadata"].get("generation", 1) + 1
            unchanged = {**obj, "metadata": {**meta, "resourceVersion": have}}
            if unchanged == current:
                return copy.deepcopy(current)
            stored = self._commit(resource, namespace, obj, "MODIFIED")
            bucket[(namespace, name)] = stored
            return copy.deepcopy(stored)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        """Remove an object and return its last state."""
        with self._lock:
            current = self._objects.get(resource, {}).pop((namespace, name), None)
            if current is None:
                raise not_found(resource, name)
            return copy.deepcopy(self._commit(resource, namespace, current, "DELETED"))

    def mutate(
        self, resource: str, namespace: str, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Apply ``change`` to an object atomically; return None if it is gone."""
        with self._lock:
            obj = self.find(resource, namespace, name)
            if obj is None:
                return None
            change(obj)
            return self.update(resource, obj, check_version=False)

    def _commit(self, resource: str, namespace: str, obj: Obj, kind: str) -> Obj:
        self._rv += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append(
            WatchEvent(self._rv, kind, resource, namespace, copy.deepcopy(stored))
        )
        self.dirty = True
        log.debug(
            "%s %s %s/%s rv=%s", kind, resource, namespace, _name(stored), self._rv
        )
        self.changed.notify_all()
        return stored

    def check_watch_version(self, rv: int) -> None:
        """Raise 410 Expired when changes after ``rv`` are no longer kept."""
        with self._lock:
            if self._events and rv < self._events[0].rv - 1:
                raise ApiError(410, "Expired", f"too old resource version: {rv}")

    def events_after(
        self, resource: str, rv: int, timeout_seconds: float
    ) -> Iterator[WatchEvent]:
        """Yield this resource's changes after ``rv`` until the timeout or close."""
        deadline = time.monotonic() + timeout_seconds
        last = rv
        while True:
            with self._lock:
                batch = [e for e in self._events if e.rv > last]
                if not batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.closed:
                        return
                    self.changed.wait(min(remaining, 1.0))
                    continue
            for event in batch:
                last = event.rv
                if event.resource == resource:
                    yield event
            if self.closed:
                return

    def close(self) -> None:
        """Wake and end every watch."""
        with self._lock:
            self.closed = True
            self.changed.notify_all()

    def save(self, path: Path) -> None:
        """Write every object and the version counter to a JSON snapshot."""
        with self._lock:
            data = {
                "resourceVersion": self._rv,
                "objects": {
                    resource: list(bucket.values())
                    for resource, bucket in self._objects.items()
                },
            }
            text = json.dumps(data)
            self.dirty = False
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        """Restore objects and the version counter from a JSON snapshot."""
        data = json.loads(path.read_text())
        with self._lock:
            self._rv = int(data["resourceVersion"])
            for resource, items in data["objects"].items():
                bucket = self._objects.setdefault(resource, {})
                for obj in items:
                    meta = obj["metadata"]
                    bucket[(meta.get("namespace", ""), meta["name"])] = obj
        log.info("Loaded simulator state from %s at rv %s", path, self._rv)


def _name(obj: Obj) -> str:
    return str(obj["metadata"].get("name", ""))
