"""Shared fixtures: the real local stack and the real Prefect engine.

Every server is started by these fixtures in temporary folders and on free ports;
no test touches the user's own services or their ``.sandbox`` folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbook.settings import get_settings
from sandbox.stack import Sandbox

# Prefect writes its profile and database where the tests say, not in ~/.prefect.
os.environ.setdefault("PREFECT_HOME", "/tmp/runbook-tests-prefect-home")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Run flows against a temporary Prefect server and database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Start the whole local stack once for the session, and take it down after."""
    sandbox = Sandbox(tmp_path_factory.mktemp("stack") / "sandbox")
    try:
        sandbox.up(size_mb=2)
        yield sandbox
    finally:
        sandbox.down()


@pytest.fixture
def stack_env(stack: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """Point every RUNBOOK_* setting at the session's stack for one test."""
    for name in list(os.environ):
        if name.startswith("RUNBOOK_"):
            monkeypatch.delenv(name)
    for name, value in stack.env().items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield stack
    get_settings.cache_clear()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Remove every RUNBOOK_* variable and any .env file from the test's view."""
    for name in list(os.environ):
        if name.startswith("RUNBOOK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def fault(stack: Sandbox) -> Iterator[Any]:
    """Inject faults for one test and clear them after it, whatever happened."""
    injected: list[str] = []

    def inject(name: str) -> None:
        stack.fault(name)
        injected.append(name)

    yield inject
    for name in reversed(injected):
        stack.fault(name, clear=True)
