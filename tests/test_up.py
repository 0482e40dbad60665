"""`runbook up`: a Prefect server, the local stack and every deployment, together."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import IntervalSchedule

from runbook.catalog import load_catalog
from sandbox import procs
from sandbox.stack import Sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def wait_for(
    condition: Callable[[], object], what: str, timeout_seconds: float = 180.0
) -> object:
    """Poll ``condition`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def deployment_exists(api_url: str) -> bool:
    """Tell whether the server answers and knows the health-check deployment."""
    try:
        response = httpx.get(
            f"{api_url}/deployments/name/health-check/health-check", timeout=5
        )
    except httpx.TransportError:
        return False
    return response.status_code == 200


async def serve_and_run_health_check(api_url: str) -> tuple[DeploymentResponse, str]:
    """Return the served health-check deployment and the final state of one run."""
    async with PrefectClient(api_url) as client:
        deployment = await client.read_deployment_by_name("health-check/health-check")
        flow_run = await client.create_flow_run_from_deployment(deployment.id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            flow_run = await client.read_flow_run(flow_run.id)
            if flow_run.state is not None and flow_run.state.is_final():
                break
            await asyncio.sleep(1)
        assert flow_run.state is not None
        return deployment, flow_run.state.type.value


class TestUp:
    """One `runbook up` started as a user would, checked through the API, stopped."""

    def test_serves_every_deployment_then_stops_everything(
        self, tmp_path: Path
    ) -> None:
        port = procs.free_port()
        state_dir = tmp_path / "sandbox"
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("RUNBOOK_", "PREFECT_API_URL"))
        }
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
        log = (tmp_path / "up.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "runbook.cli", "up", "--port", str(port),
             "--state-dir", str(state_dir), "--size-mb", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        api_url = f"http://127.0.0.1:{port}/api"
        try:
            # "Serving" is logged before Prefect registers them: ask the API
            wait_for(
                lambda: process.poll() is None and deployment_exists(api_url),
                "the deployments to be served",
            )
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200

            deployment, final = asyncio.run(serve_and_run_health_check(api_url))
            assert final == "COMPLETED"
            assert deployment.schedules
            schedule = deployment.schedules[0].schedule
            assert isinstance(schedule, IntervalSchedule)
            interval = schedule.interval
            assert interval.total_seconds() == 60

            async def served_names() -> set[str]:
                async with PrefectClient(api_url) as client:
                    found = await client.read_deployments()
                    flows = {f.id: f.name for f in await client.read_flows()}
                return {f"{flows[d.flow_id]}/{d.name}" for d in found}

            declared = {f"{s.load_flow().name}/{s.name}" for s in load_catalog()}
            assert asyncio.run(served_names()) == declared
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=90)
            log.close()
        assert not procs.port_is_open(port)
        # The stack keeps its data for the next `up`, but no process of it runs.
        pg_root = json.loads((state_dir / "state.json").read_text())["pg_root"]
        leftovers = [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit()
            and any(str(p).encode() in _cmdline(pid) for p in (state_dir, pg_root))
        ]
        assert leftovers == []
        Sandbox(state_dir).down()


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
