"""The health-check flow against the real local stack, on the real Prefect engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from flows.health_check import Component, UnhealthyError, health_check
from sandbox.stack import Sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]


def run_health_check(**parameters: Any) -> tuple[bool, dict[str, Any]]:
    """Run the flow and return (completed, summary) whatever its outcome."""
    state = health_check(**parameters, return_state=True)
    outcome = state.result(raise_on_failure=False)
    if state.is_completed():
        assert isinstance(outcome, dict)
        return True, outcome
    assert isinstance(outcome, UnhealthyError), outcome
    return False, outcome.summary


class TestHealthCheck:
    """Verdicts with everything up and with each component down."""

    def test_everything_up_gives_200(
        self, prefect_harness: None, stack_env: Sandbox
    ) -> None:
        completed, summary = run_health_check(verbose=True)
        assert completed
        assert summary["verdict"] == 200
        assert set(summary["components"]) == {"app", "database", "redis", "storage"}
        assert all(c["status"] == "up" for c in summary["components"].values())
        assert summary["components"]["database"]["server_version"].startswith("18")

    @pytest.mark.parametrize(
        ("fault_name", "component"),
        [
            ("db-down", "database"),
            ("redis-down", "redis"),
            ("storage-down", "storage"),
            ("app-down", "app"),
        ],
    )
    def test_component_down_fails_the_run_naming_it(
        self,
        prefect_harness: None,
        stack_env: Sandbox,
        fault: Any,
        fault_name: str,
        component: str,
    ) -> None:
        fault(fault_name)
        completed, summary = run_health_check()
        assert not completed
        assert summary["verdict"] == 503
        assert component in summary["down"]
        assert summary["components"][component]["status"] == "down"
        assert summary["components"][component]["error"]

    def test_selected_components_only(
        self, prefect_harness: None, stack_env: Sandbox, fault: Any
    ) -> None:
        fault("db-down")
        completed, summary = run_health_check(
            components=[Component.REDIS, Component.STORAGE]
        )
        assert completed
        assert set(summary["components"]) == {"redis", "storage"}

    def test_leaves_a_keyed_artifact(
        self, prefect_harness: None, stack_env: Sandbox
    ) -> None:
        run_health_check()

        async def latest() -> Any:
            async with get_client() as client:
                return await client.read_latest_artifacts(limit=50)

        import asyncio

        artifacts = asyncio.run(latest())
        found = [a for a in artifacts if a.key == "health-check"]
        assert found
        assert "Health check: 200" in str(found[0].data)

    def test_secrets_stay_out_of_errors(
        self, prefect_harness: None, stack_env: Sandbox, fault: Any
    ) -> None:
        fault("db-down")
        _, summary = run_health_check()
        password = stack_env.env()["RUNBOOK_DATABASE_URL"].split(":")[2].split("@")[0]
        assert password not in json.dumps(summary)


class TestRunCommand:
    """`runbook run health-check` prints the verdict and sets the exit status."""

    def run_cli(self, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        env = {**env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
        return subprocess.run(
            [sys.executable, "-m", "runbook.cli", "run", "health-check"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=180,
            check=False,
        )

    def test_prints_200_then_503_naming_the_database(
        self, prefect_harness: None, stack_env: Sandbox, fault: Any
    ) -> None:
        env = stack_env.env()
        healthy = self.run_cli(env)
        assert healthy.returncode == 0, healthy.stderr[-2000:]
        assert json.loads(healthy.stdout)["verdict"] == 200

        fault("db-down")
        broken = self.run_cli(env)
        assert broken.returncode != 0
        verdict = json.loads(broken.stdout)
        assert verdict["verdict"] == 503
        assert "database" in verdict["down"]
        assert "database" in verdict["error"]
        password = env["RUNBOOK_DATABASE_URL"].split(":")[2].split("@")[0]
        assert password not in broken.stdout + broken.stderr
