"""The deploy flow against the local stack's Kubernetes simulator and app stub.

Runs go through the real Prefect engine; the Deployment is changed through the
official Kubernetes client. Watch windows are a few seconds long (one sample a
second) and the progress deadline is a few seconds, so each test takes seconds.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Running

from flows.deploy import DeployFailedError, deploy
from flows.incident import INCIDENT_FLOW, severity_tag
from runbook.catalog import load_catalog
from runbook.errors import RefusedError
from sandbox.stack import Sandbox
from tasks.kubernetes_lease import LeaseHeldError
from tests.deploy_support import (
    BASELINE_IMAGE,
    Traffic,
    app_deployment,
    app_image,
    audit_events,
    deploy_env,
    outcome,
    ready_images,
    received,
    traffic,
)

pytestmark = [pytest.mark.sandbox, pytest.mark.prefect]
__all__ = ["app_deployment", "deploy_env", "traffic"]  # fixtures used by name


def latest_artifact(key: str) -> str:
    """Return the newest version of the keyed artifact's markdown."""

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_latest_artifacts(limit=100)

    found = [a for a in asyncio.run(read()) if a.key == key]
    assert found, f"no artifact {key}"
    return str(found[0].data)


class TestDeploy:
    """A good image goes live; bad ones are rolled back by the flow itself."""

    def test_good_image_deploys_and_passes_the_watch(
        self,
        prefect_harness: None,
        deploy_env: Sandbox,
        app_deployment: Any,
        traffic: Traffic,
    ) -> None:
        image = "ghcr.io/bpmn-studio/web:1.43.0"
        state, summary = outcome(
            deploy(image=image, watch_minutes=0.1, return_state=True)
        )

        assert state == "COMPLETED", summary
        assert summary["outcome"] == "deployed"
        assert summary["previous_image"] == BASELINE_IMAGE
        assert summary["backup_id"]
        assert summary["watch"]["judged"] >= 1
        assert app_image(deploy_env) == image
        assert set(ready_images(deploy_env)) == {image}
        slack = [r["body"]["text"] for r in received(deploy_env, "/slack")]
        assert any("Deployed" in text and image in text for text in slack)
        incidents = [
            r["body"]["incident"]["status"]
            for r in received(deploy_env, "/statuspage")
            if r["method"] == "PATCH"
        ]
        assert incidents[-1] == "resolved"
        assert "Deploy ghcr.io/bpmn-studio/web:1.43.0: deployed" in latest_artifact(
            "deploy"
        )

    def test_crashloop_image_is_rolled_back_after_the_progress_deadline(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        image = "ghcr.io/bpmn-studio/web:1.44.0-crashloop"
        run = deploy(image=image, watch_minutes=1, return_state=True)
        state, error = outcome(run)

        assert state == "FAILED"
        assert isinstance(error, DeployFailedError)
        assert "exceeded its progress deadline" in str(error)
        assert "CrashLoopBackOff" in str(error)
        steps = {s["step"]: s["status"] for s in error.summary["timeline"]}
        assert steps["roll out"] == "failed"
        assert steps["roll back"] == "done"
        assert app_image(deploy_env) == BASELINE_IMAGE
        assert set(ready_images(deploy_env)) == {BASELINE_IMAGE}
        slack = [r["body"]["text"] for r in received(deploy_env, "/slack")]
        assert any("rolled back" in text and image in text for text in slack)
        changes = {"runbook.deployment.image-set", "runbook.deployment.rolled-back"}
        assert run.state_details.flow_run_id is not None
        assert changes <= audit_events(run.state_details.flow_run_id, changes)

    def test_errors_image_passes_the_rollout_and_is_rolled_back_by_the_watch(
        self,
        prefect_harness: None,
        deploy_env: Sandbox,
        app_deployment: Any,
        traffic: Traffic,
    ) -> None:
        image = "ghcr.io/bpmn-studio/web:1.45.0-errors"
        state, error = outcome(deploy(image=image, watch_minutes=1, return_state=True))

        assert state == "FAILED"
        assert isinstance(error, DeployFailedError)
        steps = {s["step"]: s["status"] for s in error.summary["timeline"]}
        assert steps["roll out"] == "done"
        assert steps["watch"] == "failed"
        assert steps["roll back"] == "done"
        assert "error rate" in error.summary["cause"]
        # A one-minute window sampled every second: stopped long before its end.
        sample, planned = _stopped_at(error.summary["cause"])
        assert planned == 60
        assert sample < planned / 2
        assert app_image(deploy_env) == BASELINE_IMAGE
        assert set(ready_images(deploy_env)) == {BASELINE_IMAGE}

    def test_latest_tag_is_refused_before_anything_is_touched(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        state, error = outcome(
            deploy(image="ghcr.io/bpmn-studio/web:latest", return_state=True)
        )
        assert state == "FAILED"
        assert isinstance(error, RefusedError)
        assert app_image(deploy_env) == BASELINE_IMAGE

    def test_malformed_image_is_refused_by_parameter_validation(
        self, prefect_harness: None, deploy_env: Sandbox
    ) -> None:
        state, _ = outcome(deploy(image="not an image!", return_state=True))
        assert state == "FAILED"
        assert app_image(deploy_env) == BASELINE_IMAGE


def _stopped_at(cause: str) -> tuple[int, int]:
    words = cause.split("at sample ", 1)[1].split()
    return int(words[0]), int(words[2].rstrip(":"))


@pytest.fixture
def open_p1(prefect_harness: None) -> Iterator[str]:
    """Open a P1 incident: an incident-response flow run left Running, tagged P1."""

    @flow(name=INCIDENT_FLOW)
    def incident_response(title: str) -> None:
        """Stand in for the incident-response flow, which is built elsewhere."""

    async def create() -> str:
        async with get_client() as client:
            run = await client.create_flow_run(
                incident_response,
                parameters={"title": "Canvas fails to load"},
                tags=[severity_tag("P1")],
                state=Running(),
            )
            return str(run.id)

    async def close(run_id: str) -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Completed(), force=True)

    run_id = asyncio.run(create())
    yield run_id
    asyncio.run(close(run_id))


class TestChangeFreeze:
    """An open P1/P2 incident stops deploys unless an override says why."""

    def test_deploy_during_an_open_p1_is_refused(
        self, deploy_env: Sandbox, app_deployment: Any, open_p1: str
    ) -> None:
        state, error = outcome(
            deploy(image="ghcr.io/bpmn-studio/web:1.46.0", return_state=True)
        )
        assert state == "FAILED"
        assert isinstance(error, RefusedError)
        assert "change freeze" in str(error)
        assert open_p1 in str(error)
        assert app_image(deploy_env) == BASELINE_IMAGE

    def test_override_is_recorded(
        self, deploy_env: Sandbox, app_deployment: Any, open_p1: str
    ) -> None:
        reason = "hotfix for the open P1 itself"
        state, summary = outcome(
            deploy(
                image="ghcr.io/bpmn-studio/web:1.46.1",
                dry_run=True,
                freeze_override_reason=reason,
                return_state=True,
            )
        )
        assert state == "COMPLETED", summary
        assert summary["outcome"] == "dry run"
        assert summary["freeze_override"]["reason"] == reason
        assert summary["freeze_override"]["incidents"][0]["flow_run_id"] == open_p1
        assert reason in latest_artifact("deploy")
        assert app_image(deploy_env) == BASELINE_IMAGE


class TestOneDeployAtATime:
    """Two deploys started together: one goes ahead, the other is cancelled."""

    def test_two_concurrent_deploys_never_both_run(
        self, prefect_harness: None, deploy_env: Sandbox, app_deployment: Any
    ) -> None:
        images = ["ghcr.io/bpmn-studio/web:1.47.0", "ghcr.io/bpmn-studio/web:1.47.1"]
        start = threading.Barrier(2)
        states: dict[str, Any] = {}

        def run(image: str) -> None:
            start.wait()
            states[image] = outcome(
                deploy(image=image, watch_minutes=0.05, return_state=True)
            )

        threads = [threading.Thread(target=run, args=(image,)) for image in images]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)

        kinds = sorted(state for state, _ in states.values())
        assert kinds == ["CANCELLED", "COMPLETED"], states
        winner = next(i for i, (s, _) in states.items() if s == "COMPLETED")
        loser = next(i for i, (s, _) in states.items() if s == "CANCELLED")
        assert isinstance(states[loser][1], LeaseHeldError)
        assert app_image(deploy_env) == winner
        history = {
            rs.spec.template.spec.containers[0].image
            for rs in app_deployment.list_namespaced_replica_set("production").items
        }
        assert loser not in history


class TestDeclaredDeployments:
    """prefect.yaml runs deploy and rollback by hand, one at a time, never queued."""

    @pytest.mark.parametrize("name", ["deploy", "rollback"])
    def test_manual_with_one_run_at_a_time(self, name: str) -> None:
        spec = next(s for s in load_catalog() if s.name == name)
        assert spec.schedules == []
        assert spec.load_flow().name == name
        assert spec.concurrency_limit == {
            "limit": 1,
            "collision_strategy": "CANCEL_NEW",
        }
