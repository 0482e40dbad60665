"""Fixtures of the backup and restore tests (loaded with ``pytest_plugins``).

Each test gets its own environment name, so its backups live under their own prefix
and its locks are its own; the data backed up is the session stack's live data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from runbook.settings import get_settings
from sandbox.stack import Sandbox


@pytest.fixture
def backup_env(
    prefect_harness: None, stack_env: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sandbox]:
    """Point the settings at the stack, under an environment of this test's own."""
    monkeypatch.setenv("RUNBOOK_ENVIRONMENT", f"test-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield stack_env
    get_settings.cache_clear()
