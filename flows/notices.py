"""Telling people from a flow without letting a failed message change the outcome."""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger

from runbook.redact import known_secrets, redact
from tasks.notify import alert


def notify(send: Any, *args: Any) -> Any:
    """Run the notification task ``send``; on failure warn and return None.

    Args:
        send: a task such as ``post_slack_message`` or ``open_statuspage_incident``.
        args: its arguments.
    """
    state = send(*args, return_state=True)
    if state.is_completed():
        return state.result()
    reason = redact(str(state.result(raise_on_failure=False)), known_secrets())
    get_run_logger().warning(
        "Could not %s (%s); tell #incidents by hand", send.name, reason
    )
    return None


def page(summary: str, dedup_key: str) -> None:
    """Page on-call (Slack and PagerDuty, critical); never raises."""
    alert(summary, dedup_key, severity="critical")


def timestamp() -> float:
    """Return the time now, in seconds since the epoch, for a run's timings."""
    return round(time.time(), 3)
