"""The watch's Prometheus path, against a real Prometheus scraping the app stub.

Needs the ``prometheus`` binary (Debian's package ``prometheus``); skipped without it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prefect import flow

from runbook.settings import get_settings
from sandbox import procs
from sandbox.stack import Sandbox
from tasks.metrics import mark_traffic, measure_traffic
from tests.deploy_support import (
    Traffic,
    app_deployment,
    deploy_env,
    set_app,
    traffic,
)

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.prefect,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="no prometheus binary"
    ),
]
__all__ = ["app_deployment", "deploy_env", "traffic"]  # fixtures used by name

CONFIG = """\
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: bpmn-studio
    static_configs:
      - targets: ["{target}"]
"""


@pytest.fixture
def prometheus(
    deploy_env: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Run Prometheus scraping the app every second; point the settings at it."""
    app = urlsplit(deploy_env.status()["app_url"])
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(target=app.netloc))
    port = procs.free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        monkeypatch.setenv("RUNBOOK_PROMETHEUS_URL", url)
        get_settings.cache_clear()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@flow(name="measure-traffic-for-test")
def measure_for(seconds: float) -> dict[str, Any]:
    """Mark the traffic, wait ``seconds``, and measure the window."""
    mark = mark_traffic()
    time.sleep(seconds)
    return measure_traffic(mark)


def scraped_samples(url: str, minimum: int) -> None:
    """Wait until Prometheus holds ``minimum`` scrapes of the app's counters."""
    query = "count_over_time(up[1m])"
    for _ in range(100):
        result = httpx.get(f"{url}/api/v1/query", params={"query": query}).json()
        vector = result["data"]["result"]
        if vector and float(vector[0]["value"][1]) >= minimum:
            return
        time.sleep(0.2)
    raise AssertionError("Prometheus did not scrape the app")


class TestPrometheusWatch:
    """The same verdicts come from Prometheus as from scraping /metrics."""

    def test_healthy_traffic_passes_and_errors_breach(
        self,
        prefect_harness: None,
        deploy_env: Sandbox,
        prometheus: str,
        app_deployment: Any,
        traffic: Traffic,
    ) -> None:
        scraped_samples(prometheus, 3)
        healthy = measure_for(2)
        assert healthy["verdict"] == "ok", healthy
        assert healthy["mark"]["counters"] is None  # the answer came from Prometheus

        set_app(deploy_env, "ghcr.io/bpmn-studio/web:1.60.0-errors")
        time.sleep(2)  # a few more scrapes of the 5% failures
        broken = measure_for(1)
        assert broken["verdict"] == "breach", broken
        assert "error rate" in broken["reason"]
