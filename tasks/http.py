"""Tasks that talk to the app and its CDN over HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prefect import get_run_logger

from runbook.errors import CheckFailedError, TargetUnreachableError
from runbook.redact import known_secrets, redact
from runbook.settings import get_settings
from tasks._policy import probe_task

HEADERS = {"User-Agent": "bpmn-studio-runbook"}


def call_api(method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
    """Call an HTTP API, translating failures: 5xx, 429 and network errors transient.

    Args:
        method: the HTTP method.
        url: the full URL.
        what: what the call does, for error messages ("post to Slack").
        kwargs: passed to ``httpx.request`` (json, headers, ...).
    """
    try:
        response = httpx.request(method, url, timeout=10, **kwargs)
    except httpx.TransportError as exc:
        raise TargetUnreachableError(
            f"could not {what}: {type(exc).__name__}"
        ) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise TargetUnreachableError(f"could not {what}: HTTP {response.status_code}")
    if response.status_code >= 400:
        detail = redact(response.text[:200], known_secrets())
        raise CheckFailedError(
            f"could not {what}: HTTP {response.status_code} {detail}"
        )
    return response


def client(timeout_seconds: float | None = None) -> httpx.Client:
    """Return an HTTP client for the app with the configured timeout.

    Args:
        timeout_seconds: timeout of each request; the check timeout when omitted.
    """
    settings = get_settings()
    return httpx.Client(
        base_url=str(settings.app_url),
        timeout=timeout_seconds or settings.check_timeout_seconds,
        headers=HEADERS,
    )


@probe_task("check-app")
async def check_app(verbose: bool = False) -> dict[str, Any]:
    """Call the app's ``/health`` and report its verdict and latency."""
    logger = get_run_logger()
    settings = get_settings()
    async with httpx.AsyncClient(
        base_url=str(settings.app_url),
        timeout=settings.check_timeout_seconds,
        headers=HEADERS,
    ) as http:
        started = time.perf_counter()
        try:
            response = await http.get("/health")
        except httpx.TransportError as exc:
            raise TargetUnreachableError(
                f"could not reach the app at {http.base_url}: {type(exc).__name__}"
            ) from None
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        failing = [
            name
            for name, check in (body.get("checks") or {}).items()
            if isinstance(check, dict) and check.get("status") != "ok"
        ]
        detail = f" (failing: {', '.join(failing)})" if failing else ""
        raise CheckFailedError(
            f"the app's /health answered {response.status_code}{detail}"
        )
    result: dict[str, Any] = {"status": "up", "latency_ms": latency_ms}
    if verbose:
        result.update(version=body.get("version"), checks=body.get("checks"))
    logger.info("Checked app: /health answered 200 in %s ms", latency_ms)
    return result
