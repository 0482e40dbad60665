"""How the deploy watch reads traffic: counters compared, p95 as Prometheus does."""

from __future__ import annotations

import math

from tasks.metrics import compare, histogram_quantile, parse_metrics

EXPOSITION = """\
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/health",status="200"} 90.0
http_requests_total{method="GET",route="/health",status="503"} 4.0
http_requests_total{method="GET",route="/api/diagrams",status="500"} 6.0
http_requests_total{method="GET",route="/metrics",status="200"} 1000.0
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1",route="/health"} 80.0
http_request_duration_seconds_bucket{le="0.5",route="/health"} 94.0
http_request_duration_seconds_bucket{le="+Inf",route="/health"} 94.0
http_request_duration_seconds_bucket{le="0.1",route="/metrics"} 1000.0
http_request_duration_seconds_bucket{le="0.5",route="/metrics"} 1000.0
http_request_duration_seconds_bucket{le="+Inf",route="/metrics"} 1000.0
http_request_duration_seconds_count{route="/health"} 94.0
http_request_duration_seconds_sum{route="/health"} 4.2
"""


class TestHistogramQuantile:
    """The estimate matches what Prometheus's histogram_quantile answers."""

    def test_interpolates_inside_the_bucket_holding_the_rank(self) -> None:
        buckets = {0.05: 20.0, 0.1: 60.0, 0.2: 90.0, 0.5: 100.0, math.inf: 100.0}
        assert math.isclose(histogram_quantile(0.95, buckets), 0.35)

    def test_first_bucket_starts_at_zero(self) -> None:
        assert math.isclose(histogram_quantile(0.5, {0.1: 10.0, math.inf: 10.0}), 0.05)

    def test_rank_in_the_inf_bucket_gives_the_highest_finite_bound(self) -> None:
        assert histogram_quantile(0.95, {0.1: 10.0, math.inf: 100.0}) == 0.1

    def test_no_observations_give_nan(self) -> None:
        assert math.isnan(histogram_quantile(0.95, {0.1: 0.0, math.inf: 0.0}))
        assert math.isnan(histogram_quantile(0.95, {}))


class TestScrapes:
    """Two scrapes of /metrics give the window's requests, 5xx and p95."""

    def test_metrics_route_is_not_counted(self) -> None:
        parsed = parse_metrics(EXPOSITION)
        assert parsed["requests"] == 100
        assert parsed["errors"] == 10
        assert parsed["buckets"][math.inf] == 94

    def test_window_is_the_increase_between_scrapes(self) -> None:
        before = {
            "requests": 40.0,
            "errors": 2.0,
            "buckets": {0.1: 30.0, math.inf: 40.0},
        }
        after = {
            "requests": 140.0,
            "errors": 7.0,
            "buckets": {0.1: 125.0, math.inf: 140.0},
        }
        window = compare(before, after)
        assert window["requests"] == 100
        assert window["errors"] == 5
        assert math.isclose(window["p95_seconds"], 0.1)

    def test_a_reset_counter_counts_from_zero(self) -> None:
        before = {"requests": 500.0, "errors": 9.0, "buckets": {math.inf: 500.0}}
        after = {"requests": 30.0, "errors": 1.0, "buckets": {math.inf: 30.0}}
        window = compare(before, after)
        assert window["requests"] == 30
        assert window["errors"] == 1
