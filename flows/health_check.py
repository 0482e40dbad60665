"""Health check: is BPMN Studio up, and if not, which part is down?

Runbook page "Health checks": curl the app's /health, check the database, Redis and
storage. Every minute, all four at once, each with a timeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture
from pydantic import Field

from runbook.errors import CheckFailedError
from runbook.redact import redact
from runbook.settings import get_settings
from tasks.http import check_app
from tasks.postgres import check_database
from tasks.redis import check_redis
from tasks.storage import check_storage


class Component(StrEnum):
    """A part of the stack the health check can look at."""

    APP = "app"
    DATABASE = "database"
    REDIS = "redis"
    STORAGE = "storage"


CHECKS = {
    Component.APP: check_app,
    Component.DATABASE: check_database,
    Component.REDIS: check_redis,
    Component.STORAGE: check_storage,
}


class UnhealthyError(CheckFailedError):
    """At least one component is down; ``summary`` holds the whole verdict."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.summary))


ALL_COMPONENTS = tuple(Component)


@flow(name="health-check")
def health_check(
    components: Annotated[
        Sequence[Component],
        Field(min_length=1, description="Which parts to check; all four by default."),
    ] = ALL_COMPONENTS,
    verbose: Annotated[
        bool, Field(description="Add versions, sizes and timings to the result.")
    ] = False,
) -> dict[str, Any]:
    """Check the app, database, Redis and storage at once and give a 200/503 verdict."""
    logger = get_run_logger()
    get_settings()  # a bad setting fails here, before any system is touched
    selected = list(dict.fromkeys(Component(name) for name in components))

    # Run every selected check at once
    futures: dict[Component, PrefectFuture[Any]] = {
        name: CHECKS[name].submit(verbose=verbose) for name in selected
    }

    # Collect the verdicts; a failed check is a component down
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        future.wait()
        outcome = future.state.result(raise_on_failure=False)
        if future.state.is_completed() and isinstance(outcome, dict):
            results[name] = outcome
        else:
            results[name] = {"status": "down", "error": redact(str(outcome))}
    down = [name for name, result in results.items() if result["status"] != "up"]
    summary = {
        "verdict": 503 if down else 200,
        "status": "unhealthy" if down else "healthy",
        "down": down,
        "components": results,
        "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    # Leave the verdict where the on-call engineer looks
    create_markdown_artifact(
        key="health-check",
        markdown=_report(summary),
        description=f"Health check: {summary['verdict']}",
    )
    if down:
        reasons = "; ".join(f"{name}: {results[name]['error']}" for name in down)
        raise UnhealthyError(f"{', '.join(down)} down: {reasons}", summary)
    logger.info("Health check passed for %s", ", ".join(selected))
    return summary


def _report(summary: dict[str, Any]) -> str:
    lines = [
        f"## Health check: {summary['verdict']} ({summary['status']})",
        "",
        f"Checked at {summary['checked_at']}.",
        "",
        "| component | status | latency (ms) | detail |",
        "|---|---|---|---|",
    ]
    for name, result in summary["components"].items():
        detail = result.get("error", "")
        lines.append(
            f"| {name} | {result['status']} | {result.get('latency_ms', '')} "
            f"| {detail} |"
        )
    return "\n".join(lines)
