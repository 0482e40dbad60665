"""The restore flow's approval in the UI, in a deployment run served by a runner."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.deployments.runner import RunnerDeployment
from prefect.flow_runs import resume_flow_run
from prefect.runner import Runner

from flows.backup import backup
from flows.restore import restore
from runbook.backups import Component, staging_database_name
from sandbox.stack import Sandbox
from tests.backup_helpers import (
    database_url,
    databases,
    run,
    table_fingerprints,
    wait_until,
)

pytest_plugins = ["tests.backup_fixtures"]
pytestmark = [pytest.mark.sandbox, pytest.mark.prefect, pytest.mark.slow]

DATABASE = "bpmn_studio"
KEPT_PREFIX = f"{DATABASE}_before_restore_"


@pytest.fixture
def restore_deployment(backup_env: Sandbox) -> Iterator[str]:
    """Serve the restore flow as a deployment from a runner; stop it after the test."""
    name = f"approval-{uuid.uuid4().hex[:8]}"
    runner = Runner(name=name, query_seconds=1, pause_on_shutdown=False)
    deployment = restore.to_deployment(name=name)
    assert isinstance(deployment, RunnerDeployment)
    runner.add_deployment(deployment)
    serving = threading.Thread(
        target=contextvars.copy_context().run,
        args=(asyncio.run, runner.start()),
        name=name,
        daemon=True,
    )
    serving.start()
    try:
        wait_until(lambda: runner.started, "the runner to start")
        yield f"restore/{name}"
    finally:
        if runner.started:
            runner.execute_in_background(runner.astop).result(timeout=60)
        serving.join(timeout=60)
    assert not serving.is_alive(), "the runner did not stop"


@pytest.fixture
def backup_then_damage(backup_env: Sandbox) -> dict[str, Any]:
    """Back the database up, then delete rows; return the backup id and both states."""
    completed, made = run(backup, components=[Component.DATABASE])
    assert completed, made
    backed_up = table_fingerprints()
    with psycopg.connect(database_url(), autocommit=True) as conn:
        deleted = [
            row[0]
            for row in conn.execute(
                "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions LIMIT 20) "
                "RETURNING id"
            )
        ]
    assert len(deleted) == 20
    return {
        "backup_id": made["backup_id"],
        "backed_up": backed_up,
        "damaged": table_fingerprints(),
        "deleted": deleted,
    }


def start_replace(deployment: str, backup_id: str) -> UUID:
    """Start a replacing restore of the database through the deployment."""
    flow_run = run_deployment(
        deployment,
        parameters={
            "backup_id": backup_id,
            "components": ["database"],
            "mode": "replace",
            "confirm": DATABASE,
        },
        timeout=0,
    )
    assert isinstance(flow_run, FlowRun)
    return flow_run.id


def run_inputs(client: SyncPrefectClient, flow_run: FlowRun) -> dict[str, Any]:
    """Return the inputs of the run's pause (description, schema) the UI shows."""
    keyset = flow_run.state.state_details.run_input_keyset if flow_run.state else None
    if not keyset:
        return {}
    found = client.filter_flow_run_input(
        flow_run.id, key_prefix="", limit=100, exclude_keys=set()
    )
    wanted = {key: name for name, key in keyset.items()}
    return {wanted[i.key]: i.decoded_value for i in found if i.key in wanted}


def wait_for_state(
    flow_run_id: UUID, final: bool, timeout_seconds: float = 120
) -> tuple[FlowRun, dict[str, Any]]:
    """Wait until the run is paused for input (or, with ``final``, finished).

    Return the run and its pause inputs, read through the Prefect API.
    """
    deadline = time.monotonic() + timeout_seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            flow_run = client.read_flow_run(flow_run_id)
            state = flow_run.state
            if state and (state.is_final() or (not final and state.is_paused())):
                inputs = run_inputs(client, flow_run)
                if state.is_final() or "description" in inputs:
                    return flow_run, inputs
            time.sleep(0.5)
    what = "finish" if final else "pause for approval"
    raise AssertionError(f"gave up waiting for the run to {what}")


@dataclass
class PausedReplace:
    """A replacing restore paused for approval, and the databases before it began."""

    flow_run: FlowRun
    inputs: dict[str, Any]
    staged: str
    before: set[str]


def pause_a_replace(deployment: str, backup_id: str) -> PausedReplace:
    """Start a replacing restore through ``deployment``; return it once paused.

    By then the backup is staged beside the live database, and nothing else changed.
    """
    before = databases()
    paused, inputs = wait_for_state(start_replace(deployment, backup_id), final=False)
    staged = staging_database_name(DATABASE, backup_id)
    assert databases() == before | {staged}
    return PausedReplace(paused, inputs, staged, before)


def run_logs(flow_run_id: UUID) -> list[str]:
    """Return the messages the run logged, as stored by the Prefect API."""
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def session_ids(ids: list[Any]) -> set[Any]:
    """Return which of ``ids`` the live sessions table holds."""
    with psycopg.connect(database_url(), autocommit=True) as conn:
        rows = conn.execute("SELECT id FROM sessions WHERE id = ANY(%s)", (ids,))
        return {row[0] for row in rows}


class TestApprovalInADeploymentRun:
    """A replacing restore started through a deployment waits for a human's answer."""

    def test_pauses_with_a_form_naming_what_it_replaces_then_replaces_on_approval(
        self, restore_deployment: str, backup_then_damage: dict[str, Any]
    ) -> None:
        backup_id = backup_then_damage["backup_id"]
        run = pause_a_replace(restore_deployment, backup_id)
        paused, inputs, staged, before = (
            run.flow_run,
            run.inputs,
            run.staged,
            run.before,
        )
        flow_run_id = paused.id
        assert paused.deployment_id is not None
        assert paused.state is not None and paused.state.is_paused(), paused.state
        description = inputs["description"]
        assert f"replace {DATABASE} with backup {backup_id}" in description
        assert f"`{DATABASE}` is renamed aside" in description
        assert f"`{staged}`" in description
        schema = inputs["schema"]
        assert schema["properties"]["approve"]["default"] is False
        assert "comment" in schema["properties"]

        assert table_fingerprints() == backup_then_damage["damaged"]
        assert not session_ids(backup_then_damage["deleted"])

        resume_flow_run(
            flow_run_id, run_input={"approve": True, "comment": "restore ticket 42"}
        )
        done, _ = wait_for_state(flow_run_id, final=True)
        assert done.state is not None and done.state.is_completed(), done.state

        assert table_fingerprints() == backup_then_damage["backed_up"]
        assert session_ids(backup_then_damage["deleted"]) == set(
            backup_then_damage["deleted"]
        )
        kept = databases() - before
        assert len(kept) == 1 and next(iter(kept)).startswith(KEPT_PREFIX), kept
        assert table_fingerprints(kept.pop()) == backup_then_damage["damaged"]
        wait_until(
            lambda: any("restore ticket 42" in m for m in run_logs(flow_run_id)),
            "the approver's comment in the run's logs",
        )

    def test_refusal_fails_the_run_and_drops_the_staged_copy(
        self, restore_deployment: str, backup_then_damage: dict[str, Any]
    ) -> None:
        run = pause_a_replace(restore_deployment, backup_then_damage["backup_id"])
        flow_run_id = run.flow_run.id

        resume_flow_run(flow_run_id, run_input={"approve": False})
        done, _ = wait_for_state(flow_run_id, final=True)
        assert done.state is not None and done.state.is_failed(), done.state
        assert "was not approved; nothing was changed" in (done.state.message or "")

        assert table_fingerprints() == backup_then_damage["damaged"]
        assert not session_ids(backup_then_damage["deleted"])
        assert databases() == run.before
