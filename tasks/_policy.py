"""Retry policy shared by every task: retry what is transient, never the rest."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
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


def transient_retries(attempts: int = 3) -> dict[str, Any]:
    """Return task options that retry transient failures ``attempts`` times.

    Args:
        attempts: retries after the first try, at 1, 3, 9 ... seconds with jitter.
    """
    return {
        "retries": attempts,
        "retry_delay_seconds": RETRY_DELAYS_SECONDS[:attempts],
        "retry_jitter_factor": RETRY_JITTER_FACTOR,
        "retry_condition_fn": only_transient,
        "cache_policy": NO_CACHE,
    }


def probe_task(name: str, timeout_seconds: float = 30) -> Any:
    """Return the decorator of a health probe: one quick retry, then a verdict.

    Args:
        name: the task's name in the UI.
        timeout_seconds: how long the whole probe (and its retry) may take.
    """
    return task(
        name=name,
        retries=1,
        retry_delay_seconds=1,
        retry_jitter_factor=RETRY_JITTER_FACTOR,
        retry_condition_fn=only_transient,
        timeout_seconds=timeout_seconds,
        cache_policy=NO_CACHE,
    )
