"""The failures injected into the local stack, shared by every stub in one process.

The set of active faults is kept in memory behind a lock and, when a path is given,
written to a JSON file after every change. The file is read back at start-up, so a
restarted services process comes back with the same faults, and re-read whenever
another process (``runbook sandbox fault``) has rewritten it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

KNOWN_FAULTS = (
    "app-down",
    "db-down",
    "redis-down",
    "storage-down",
    "memory-leak",
    "connection-storm",
    "slow-queries",
    "lock-contention",
    "rate-limit-storm",
    "broken-bundle",
    "error-spike",
    "region-outage",
)

# How often, at most, the file is checked for another process's changes.
_RELOAD_INTERVAL_SECONDS = 0.2


def check_fault_name(name: str) -> str:
    """Return the fault name if it is known, else raise ValueError naming the known."""
    if name not in KNOWN_FAULTS:
        known = ", ".join(KNOWN_FAULTS)
        raise ValueError(f"Unknown fault {name!r}; known faults are: {known}.")
    return name


class Faults:
    """Hold the active fault names, thread-safe, optionally persisted to a file."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._active: set[str] = set()
        self._file_mtime_ns: int | None = None
        self._checked_at = 0.0
        if path is not None and path.exists():
            with self._lock:
                self._load()

    @property
    def path(self) -> Path | None:
        """Return the file the faults are persisted to, if any."""
        return self._path

    def activate(self, name: str) -> None:
        """Turn a fault on; turning on an active fault changes nothing."""
        check_fault_name(name)
        with self._lock:
            self._reload_if_changed(force=True)
            if name in self._active:
                return
            self._active.add(name)
            self._save()
        logger.info("Activated fault %s", name)

    def clear(self, name: str) -> None:
        """Turn a fault off; clearing an inactive fault changes nothing."""
        check_fault_name(name)
        with self._lock:
            self._reload_if_changed(force=True)
            if name not in self._active:
                return
            self._active.discard(name)
            self._save()
        logger.info("Cleared fault %s", name)

    def clear_all(self) -> None:
        """Turn every fault off."""
        with self._lock:
            self._active.clear()
            self._save()
        logger.info("Cleared every fault")

    def is_active(self, name: str) -> bool:
        """Return whether the fault is on."""
        with self._lock:
            self._reload_if_changed()
            return name in self._active

    def active(self) -> list[str]:
        """Return the active fault names in the order of KNOWN_FAULTS."""
        with self._lock:
            self._reload_if_changed()
            return [name for name in KNOWN_FAULTS if name in self._active]

    # Persistence; the caller holds the lock.

    def _reload_if_changed(self, *, force: bool = False) -> None:
        if self._path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked_at < _RELOAD_INTERVAL_SECONDS:
            return
        self._checked_at = now
        try:
            mtime_ns = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime_ns != self._file_mtime_ns:
            self._load()

    def _load(self) -> None:
        assert self._path is not None
        try:
            stat = self._path.stat()
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning(
                "Could not read faults file %s (%s); keeping the faults in memory; "
                "fix or delete the file",
                self._path,
                exc,
            )
            return
        names = document.get("active", []) if isinstance(document, dict) else []
        self._active = {name for name in names if name in KNOWN_FAULTS}
        self._file_mtime_ns = stat.st_mtime_ns
        logger.debug("Loaded faults %s from %s", sorted(self._active), self._path)

    def _save(self) -> None:
        if self._path is None:
            return
        document = {
            "active": [name for name in KNOWN_FAULTS if name in self._active],
            "updated_at": datetime.now(UTC).isoformat(),
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, self._path)
        self._file_mtime_ns = self._path.stat().st_mtime_ns
