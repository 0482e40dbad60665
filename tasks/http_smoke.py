"""The smoke checks a new release of the app must pass after its rollout."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.errors import CheckFailedError
from runbook.settings import get_settings
from tasks.http import check_app, client

# Pods that just turned ready may still be warming up: a check gets this many tries.
ATTEMPTS = 3
ATTEMPT_GAP_SECONDS = 1.0


def _always(task: Any, task_run: Any, state: Any) -> bool:
    return True


# /health gets the same tries, whatever made it fail.
check_app_warming_up = check_app.with_options(
    retries=ATTEMPTS - 1,
    retry_delay_seconds=ATTEMPT_GAP_SECONDS,
    retry_condition_fn=_always,
)


def check_health() -> float:
    """Check the app's ``/health`` allowing for warm-up; return its latency in ms."""
    health: Any = check_app_warming_up.submit().result()
    return float(health["latency_ms"])


def parse_smoke_check(text: str) -> tuple[str, int, str]:
    """Split a smoke check ``"PATH STATUS [BODY FRAGMENT]"`` into its parts.

    Args:
        text: one entry of the ``deploy_smoke_checks`` setting.
    """
    path, status, *rest = text.split(" ", 2)
    return path, int(status), rest[0] if rest else ""


def _attempt(http: httpx.Client, path: str, status: int, fragment: str) -> str:
    """Return what was wrong with one request, or "" when it answered as expected."""
    try:
        response = http.get(path)
    except httpx.TransportError as exc:
        return f"no answer ({type(exc).__name__})"
    if response.status_code != status:
        return f"answered {response.status_code}, expected {status}"
    if fragment and fragment not in response.text:
        return f"answered {status} without {fragment!r} in its body"
    return ""


@task(name="run-smoke-checks", retries=0, cache_policy=NO_CACHE)
def run_smoke_checks() -> list[dict[str, Any]]:
    """GET each smoke check's path and compare status and body; fail naming misses."""
    logger = get_run_logger()
    results: list[dict[str, Any]] = []
    with client() as http:
        for text in get_settings().deploy_smoke_checks:
            path, status, fragment = parse_smoke_check(text)
            problem = ""
            for attempt in range(1, ATTEMPTS + 1):
                started = time.perf_counter()
                problem = _attempt(http, path, status, fragment)
                latency_ms = round((time.perf_counter() - started) * 1000, 1)
                if not problem:
                    break
                logger.debug("Smoke check %s try %s: %s", path, attempt, problem)
                if attempt < ATTEMPTS:
                    time.sleep(ATTEMPT_GAP_SECONDS)
            results.append(
                {
                    "path": path,
                    "passed": not problem,
                    "problem": problem,
                    "latency_ms": latency_ms,
                }
            )
    failed = [f"GET {r['path']} {r['problem']}" for r in results if not r["passed"]]
    if failed:
        raise CheckFailedError("smoke checks failed: " + "; ".join(failed))
    logger.info("Passed %s smoke checks", len(results))
    return results
