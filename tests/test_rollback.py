"""The rollback flow against the local stack's Kubernetes simulator.

A failing migration is the simulator's own rule for Jobs: a pod exits with the code
in its env ``SIMULATED_EXIT_CODE`` after printing ``SIMULATED_OUTPUT``. The flow gives
its Job the app container's environment (the migration needs the app's database
settings), so a test, or an engineer trying it in the sandbox, sets those variables
on the app's Deployment: ``kubectl set env deploy/bpmn-studio SIMULATED_EXIT_CODE=1``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flows.rollback import rollback
from runbook.errors import RefusedError
from sandbox.stack import NAMESPACE, Sandbox
from tasks.kubernetes_jobs import MigrationFailedError
from tests.deploy_support import (
    BASELINE_IMAGE,
    app_deployment,
    app_image,
    audit_events,
    deploy_env,
    outcome,
    ready_images,
    received,
    set_app,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]
__all__ = ["app_deployment", "deploy_env"]  # fixtures used by name

FAILING_MIGRATION = {
    "SIMULATED_EXIT_CODE": "1",
    "SIMULATED_OUTPUT": "Rolling back 20250301_add_lanes\n"
    'ERROR: cannot drop column "lane_id": view diagram_lanes depends on it',
}


def run_logs(flow_run_id: UUID, contains: str) -> list[str]:
    """Return the run's log messages once one containing ``contains`` has arrived."""

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return [log.message for log in logs]

    messages: list[str] = []
    for _ in range(50):  # logs reach the API in batches
        messages = asyncio.run(read())
        if any(contains in message for message in messages):
            break
        time.sleep(0.2)
    return messages


def jobs(stack: Sandbox) -> list[str]:
    """Return the names of the Jobs in the app's namespace."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    info = stack.status()
    api = k8s_config.new_client_from_config(
        config_file=info["kubeconfig"], context=info["k8s_context"]
    )
    listed: Any = k8s.BatchV1Api(api).list_namespaced_job(NAMESPACE)
    return [job.metadata.name for job in listed.items]


class TestRollback:
    """Back to a chosen revision, schema first when asked, refusing what is unknown."""

    def test_rollback_to_a_named_revision_restores_its_image(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        wanted = set_app(deploy_env, "ghcr.io/bpmn-studio/web:1.50.0")
        set_app(deploy_env, "ghcr.io/bpmn-studio/web:1.51.0")

        state, summary = outcome(rollback(to_revision=wanted, return_state=True))

        assert state == "COMPLETED", summary
        assert summary["to_image"] == "ghcr.io/bpmn-studio/web:1.50.0"
        assert app_image(deploy_env) == "ghcr.io/bpmn-studio/web:1.50.0"
        assert set(ready_images(deploy_env)) == {"ghcr.io/bpmn-studio/web:1.50.0"}
        slack = [r["body"]["text"] for r in received(deploy_env, "/slack")]
        assert any("rolled back" in t and "1.50.0" in t for t in slack)

    def test_unknown_revision_is_refused_listing_the_revisions(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        state, error = outcome(rollback(to_revision=9999, return_state=True))

        assert state == "FAILED"
        assert isinstance(error, RefusedError)
        assert "no revision 9999" in str(error)
        assert BASELINE_IMAGE in str(error)
        assert app_image(deploy_env) == BASELINE_IMAGE

    def test_failing_migration_job_stops_the_rollback_with_its_logs_shown(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        image = "ghcr.io/bpmn-studio/web:1.52.0"
        set_app(deploy_env, image, env=FAILING_MIGRATION)

        state = rollback(migration_version="20250201", return_state=True)
        kind, error = outcome(state)

        assert kind == "FAILED"
        assert isinstance(error, MigrationFailedError)
        assert "deployment was not touched" in str(error)
        assert 'cannot drop column "lane_id"' in str(error)
        assert state.state_details.flow_run_id is not None
        logs = run_logs(state.state_details.flow_run_id, "cannot drop column")
        assert any(
            "npm run db:migrate:rollback -- --version=20250201" in m for m in logs
        )
        assert any('cannot drop column "lane_id"' in m for m in logs)
        assert app_image(deploy_env) == image
        assert set(ready_images(deploy_env)) == {image}

    def test_migration_rollback_runs_first_then_the_previous_revision(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        set_app(deploy_env, "ghcr.io/bpmn-studio/web:1.53.0")

        run = rollback(migration_version="20250201", return_state=True)
        state, summary = outcome(run)

        assert state == "COMPLETED", summary
        assert summary["job"]["image"] == "ghcr.io/bpmn-studio/web:1.53.0"
        assert (
            "$ npm run db:migrate:rollback -- --version=20250201"
            in (summary["job"]["log"])
        )
        assert summary["job"]["log"][-1] == "exit code 0"
        assert app_image(deploy_env) == BASELINE_IMAGE
        changes = {"runbook.job.created", "runbook.deployment.rolled-back"}
        assert run.state_details.flow_run_id is not None
        assert changes <= audit_events(run.state_details.flow_run_id, changes)

    def test_dry_run_shows_revisions_images_and_the_job(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        set_app(deploy_env, "ghcr.io/bpmn-studio/web:1.54.0")
        before = jobs(deploy_env)

        state, summary = outcome(
            rollback(migration_version="20250201", dry_run=True, return_state=True)
        )

        assert state == "COMPLETED", summary
        assert summary["outcome"] == "dry run"
        images = {r["image"] for r in summary["revisions"]}
        assert {BASELINE_IMAGE, "ghcr.io/bpmn-studio/web:1.54.0"} <= images
        assert summary["to_image"] == BASELINE_IMAGE
        assert summary["job"]["command"] == (
            "npm run db:migrate:rollback -- --version=20250201"
        )
        assert jobs(deploy_env) == before
        assert app_image(deploy_env) == "ghcr.io/bpmn-studio/web:1.54.0"
