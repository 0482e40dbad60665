"""Retry policy shared by every task: retry what is transient, never the rest."""

from __future__ import annotations

from typing import Any

from prefect.states import State

from runbook.errors import TargetUnreachableError


def only_transient(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Allow a retry only when the task failed because a system did not answer."""
    # Called from sync and async task engines alike: ask for the sync result.
    outcome = state.result(raise_on_failure=False, _sync=True)  # type: ignore[call-overload]
    return isinstance(outcome, TargetUnreachableError)


# Seconds between attempts; jitter keeps many runs from retrying in step.
RETRY_DELAYS_SECONDS = [1, 3, 9]
RETRY_JITTER_FACTOR = 0.5
