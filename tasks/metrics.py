"""Tasks that measure the app's traffic: its 5xx rate and p95 latency over a window.

With ``prometheus_url`` set, Prometheus answers (``increase`` and
``histogram_quantile`` over the window). Without it, the app's ``/metrics`` is
scraped and two scrapes are compared: the counters' increase between them, and the
95th percentile estimated from the histogram's buckets the way Prometheus's
``histogram_quantile`` does. Scraping suits one endpoint that counts every request
(the local stack's app); behind a load balancer each scrape reaches one pod, so a
production cluster sets ``prometheus_url``. Scrapes of ``/metrics`` itself are
never counted.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

import httpx
from prefect import get_run_logger, task
from prometheus_client.parser import text_string_to_metric_families

from runbook.errors import CheckFailedError, TargetUnreachableError
from runbook.settings import get_settings
from tasks._policy import (
    transient_retries,
)

REQUESTS = "http_requests_total"
DURATION = "http_request_duration_seconds"
SELECTOR = 'route!="/metrics"'
PROMETHEUS_MIN_WINDOW_SECONDS = 60  # rate() needs two scrapes inside its window
QUANTILE = 0.95
RETRIES = transient_retries(2)


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float:
    """Estimate a quantile from cumulative bucket counts as Prometheus does.

    Args:
        quantile: between 0 and 1.
        buckets: upper bound (``le``, ``inf`` included) to cumulative count.
    """
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]) or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = quantile * buckets[bounds[-1]]
    previous_bound, previous_count = 0.0, 0.0
    for index, bound in enumerate(bounds):
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                # Prometheus answers the highest finite bound for the +Inf bucket.
                return bounds[index - 1] if index else math.nan
            if index == 0 and bound <= 0:
                return bound
            width = count - previous_count
            if width <= 0:
                return bound
            return previous_bound + (bound - previous_bound) * (
                (rank - previous_count) / width
            )
        previous_bound, previous_count = bound, count
    return bounds[-1]


def parse_metrics(text: str) -> dict[str, Any]:
    """Sum the app's request counters and latency buckets, ``/metrics`` excluded.

    Args:
        text: a Prometheus text exposition.
    """
    requests = errors = 0.0
    buckets: dict[float, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route") == "/metrics":
                continue
            if sample.name == REQUESTS:
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif sample.name == f"{DURATION}_bucket":
                buckets[float(sample.labels["le"])] += sample.value
    return {"requests": requests, "errors": errors, "buckets": dict(buckets)}


def _increase(now: float, before: float) -> float:
    # A counter that went down was reset (a restart): count from zero, as rate() does.
    return now - before if now >= before else now


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Return the requests, errors and p95 between two scrapes of ``/metrics``.

    Args:
        before: ``parse_metrics`` of the earlier scrape.
        after: ``parse_metrics`` of the later scrape.
    """
    buckets = {
        bound: _increase(count, before["buckets"].get(bound, 0.0))
        for bound, count in after["buckets"].items()
    }
    return {
        "requests": _increase(after["requests"], before["requests"]),
        "errors": _increase(after["errors"], before["errors"]),
        "p95_seconds": histogram_quantile(QUANTILE, buckets),
    }


def _scrape() -> dict[str, Any]:
    settings = get_settings()
    url = f"{str(settings.app_url).rstrip('/')}/metrics"
    try:
        response = httpx.get(url, timeout=settings.check_timeout_seconds)
    except httpx.TransportError as exc:
        raise TargetUnreachableError(
            f"could not scrape {url}: {type(exc).__name__}"
        ) from None
    if response.status_code != 200:
        raise TargetUnreachableError(
            f"could not scrape {url}: HTTP {response.status_code}"
        )
    return parse_metrics(response.text)


def _query(expression: str) -> float:
    settings = get_settings()
    url = f"{str(settings.prometheus_url).rstrip('/')}/api/v1/query"
    try:
        response = httpx.get(
            url,
            params={"query": expression},
            timeout=settings.check_timeout_seconds,
        )
    except httpx.TransportError as exc:
        raise TargetUnreachableError(
            f"could not query Prometheus: {type(exc).__name__}"
        ) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise TargetUnreachableError(
            f"could not query Prometheus: HTTP {response.status_code}"
        )
    body = response.json()
    if body.get("status") != "success":
        raise CheckFailedError(
            f"Prometheus refused query {expression!r}: {body.get('error')}"
        )
    result = body["data"]["result"]
    # An empty vector means no matching series: no traffic at all.
    return float(result[0]["value"][1]) if result else 0.0


def _from_prometheus(window_seconds: float) -> dict[str, Any]:
    window = f"{math.ceil(max(window_seconds, PROMETHEUS_MIN_WINDOW_SECONDS))}s"
    return {
        "requests": _query(f"sum(increase({REQUESTS}{{{SELECTOR}}}[{window}]))"),
        "errors": _query(
            f'sum(increase({REQUESTS}{{{SELECTOR},status=~"5.."}}[{window}]))'
        ),
        "p95_seconds": _query(
            f"histogram_quantile({QUANTILE}, sum by (le) "
            f"(rate({DURATION}_bucket{{{SELECTOR}}}[{window}])))"
        ),
    }


@task(name="mark-traffic", **RETRIES)
def mark_traffic() -> dict[str, Any]:
    """Note the app's traffic counters now, as the start of a measured window."""
    logger = get_run_logger()
    if get_settings().prometheus_url is not None:
        logger.info("Marked the start of the window; Prometheus will measure it")
        return {"at": time.time(), "counters": None}
    counters = _scrape()
    logger.info("Scraped the app's /metrics: %s requests so far", counters["requests"])
    return {"at": time.time(), "counters": counters}


@task(name="measure-traffic", **RETRIES)
def measure_traffic(since: dict[str, Any]) -> dict[str, Any]:
    """Measure error rate and p95 since a mark and judge them against thresholds.

    The verdict is ``ok``, ``breach`` (a threshold crossed) or ``too-few`` (fewer
    requests than the minimum: keep the mark and measure a longer window).

    Args:
        since: what ``mark_traffic`` (or the previous measurement's ``mark``) gave.
    """
    settings = get_settings()
    now = time.time()
    if since["counters"] is None:
        window = _from_prometheus(now - since["at"])
        mark: dict[str, Any] = {"at": now, "counters": None}
    else:
        counters = _scrape()
        window = compare(since["counters"], counters)
        mark = {"at": now, "counters": counters}
    requests, errors = window["requests"], window["errors"]
    error_rate = 100 * errors / requests if requests else 0.0
    p95_ms = window["p95_seconds"] * 1000
    reading: dict[str, Any] = {
        "window_seconds": round(now - since["at"], 1),
        "requests": int(requests),
        "errors": int(errors),
        "error_rate_percent": round(error_rate, 3),
        "p95_ms": None if math.isnan(p95_ms) else round(p95_ms, 1),
        "mark": mark,
    }
    if requests < settings.deploy_min_requests:
        reading.update(verdict="too-few", reason="")
    elif error_rate > settings.error_rate_max_percent:
        reading.update(
            verdict="breach",
            reason=f"error rate {error_rate:.2f}% over {int(requests)} requests "
            f"is above {settings.error_rate_max_percent:g}%",
        )
    elif p95_ms > settings.latency_p95_max_ms:
        reading.update(
            verdict="breach",
            reason=f"p95 latency {p95_ms:.0f} ms over {int(requests)} requests "
            f"is above {settings.latency_p95_max_ms:g} ms",
        )
    else:
        reading.update(verdict="ok", reason="")
    get_run_logger().info(
        "Measured %s requests in %s s: %s%% errors, p95 %s ms (%s)",
        reading["requests"],
        reading["window_seconds"],
        reading["error_rate_percent"],
        reading["p95_ms"],
        reading["verdict"],
    )
    return reading
