"""Fixtures and helpers shared by the deploy and rollback tests.

The app's Deployment in the session's local stack is shared by every test: each test
here leaves it as it found it (image, progress deadline), whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.states import State

from runbook.settings import get_settings
from sandbox.stack import DEPLOYMENT, NAMESPACE, Sandbox

BASELINE_IMAGE = "ghcr.io/bpmn-studio/web:1.42.0"
PROGRESS_DEADLINE_SECONDS = 3  # the real default is 600; the simulator honours it
TRAFFIC_PATHS = ("/static/js/bpmn.bundle.js", "/api/diagrams?limit=5")


def apps_api(stack: Sandbox) -> k8s.AppsV1Api:
    """Return a client for the stack's primary cluster, as kubectl would use it."""
    info = stack.status()
    api = k8s_config.new_client_from_config(
        config_file=info["kubeconfig"], context=info["k8s_context"]
    )
    return k8s.AppsV1Api(api)


def read_app(stack: Sandbox) -> Any:
    """Return the app's Deployment object."""
    return apps_api(stack).read_namespaced_deployment(DEPLOYMENT, NAMESPACE)


def app_image(stack: Sandbox) -> str:
    """Return the image in the app Deployment's pod template."""
    return str(read_app(stack).spec.template.spec.containers[0].image)


def ready_images(stack: Sandbox) -> list[str]:
    """Return the image of every Ready pod of the app, as the app stub serves them."""
    info = stack.status()
    api = k8s_config.new_client_from_config(
        config_file=info["kubeconfig"], context=info["k8s_context"]
    )
    pods: Any = k8s.CoreV1Api(api).list_namespaced_pod(
        NAMESPACE, label_selector="app=bpmn-studio"
    )
    return [
        pod.spec.containers[0].image
        for pod in pods.items
        if any(
            c.type == "Ready" and c.status == "True"
            for c in pod.status.conditions or []
        )
    ]


def wait_until_rolled_out(stack: Sandbox, image: str, timeout: float = 60) -> None:
    """Wait until every replica of the app runs ``image`` and is available."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deployment = read_app(stack)
        status = deployment.status
        if (
            deployment.spec.template.spec.containers[0].image == image
            and status.observed_generation == deployment.metadata.generation
            and status.updated_replicas == status.replicas == deployment.spec.replicas
            and status.available_replicas == deployment.spec.replicas
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"the app did not roll out {image} in {timeout} s")


def set_app(stack: Sandbox, image: str, env: dict[str, str] | None = None) -> int:
    """Roll the app out to ``image`` (plus env) like kubectl; return its revision."""
    container: dict[str, Any] = {"name": "web", "image": image}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    apps_api(stack).patch_namespaced_deployment(
        DEPLOYMENT,
        NAMESPACE,
        {"spec": {"template": {"spec": {"containers": [container]}}}},
    )
    wait_until_rolled_out(stack, image)
    annotations = read_app(stack).metadata.annotations
    return int(annotations["deployment.kubernetes.io/revision"])


def audit_events(flow_run_id: UUID, wanted: set[str]) -> set[str]:
    """Return the ``runbook.*`` events about a run once ``wanted`` have arrived."""

    async def read() -> set[str]:
        async with get_client() as client:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["runbook."]),
                    related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
                ),
                limit=50,
            )
        return {event.event for event in page.events}

    found: set[str] = set()
    for _ in range(50):  # events are written a moment after they are emitted
        found = asyncio.run(read())
        if wanted <= found:
            break
        time.sleep(0.2)
    return found


def outcome(state: State[Any]) -> tuple[str, Any]:
    """Return a run's final state type and its result or exception."""
    return state.type.value, state.result(raise_on_failure=False)


def received(stack: Sandbox, prefix: str) -> list[dict[str, Any]]:
    """Return what the notification receiver got under a path prefix."""
    url = stack.status()["notifications_url"]
    response = httpx.get(f"{url}/_requests", params={"path_prefix": prefix})
    return list(response.json())


@pytest.fixture
def deploy_env(stack_env: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """Point the settings at the stack with a watch that samples every second."""
    monkeypatch.setenv("RUNBOOK_DEPLOY_WATCH_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("RUNBOOK_DEPLOY_MIN_REQUESTS", "15")
    monkeypatch.setenv("RUNBOOK_DEPLOY_ROLLOUT_TIMEOUT_SECONDS", "60")
    get_settings.cache_clear()
    return stack_env


@pytest.fixture
def app_deployment(stack: Sandbox) -> Iterator[Any]:
    """Give the app a short progress deadline; put its baseline template back after."""
    apps = apps_api(stack)
    wait_until_rolled_out(stack, BASELINE_IMAGE)
    baseline = apps.api_client.sanitize_for_serialization(read_app(stack).spec.template)
    apps.patch_namespaced_deployment(
        DEPLOYMENT,
        NAMESPACE,
        {"spec": {"progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS}},
    )
    yield apps
    current = apps.api_client.sanitize_for_serialization(read_app(stack).spec.template)
    if current != baseline:
        apps.patch_namespaced_deployment(
            DEPLOYMENT,
            NAMESPACE,
            [{"op": "replace", "path": "/spec/template", "value": baseline}],
        )
    wait_until_rolled_out(stack, BASELINE_IMAGE)
    apps.patch_namespaced_deployment(
        DEPLOYMENT, NAMESPACE, {"spec": {"progressDeadlineSeconds": 600}}
    )


class Traffic:
    """Users of the app: a thread sending GETs at a steady pace, bounded in time."""

    def __init__(
        self, base_url: str, per_second: float = 25, limit_seconds: float = 180
    ):
        self.base_url = base_url
        self.per_second = per_second
        self.limit_seconds = limit_seconds
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        ends = time.monotonic() + self.limit_seconds
        with httpx.Client(base_url=self.base_url, timeout=5) as http:
            while not self._stop.is_set() and time.monotonic() < ends:
                path = TRAFFIC_PATHS[self.sent % len(TRAFFIC_PATHS)]
                with contextlib.suppress(httpx.TransportError):
                    http.get(path)
                self.sent += 1
                self._stop.wait(1 / self.per_second)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def traffic(stack: Sandbox) -> Iterator[Traffic]:
    """Send the app steady traffic for the length of one test."""
    with Traffic(stack.status()["app_url"]) as running:
        yield running
