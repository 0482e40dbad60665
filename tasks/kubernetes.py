"""Tasks that talk to the app's Deployment: read it, set its image, undo, wait.

The client is the official ``kubernetes`` one, built from settings: the kubeconfig
file and context when one is set, else the pod's service account, else
``~/.kube/config``. Its errors are translated here, once: 5xx, 429 and connection
failures are transient (retried); every other refusal is not.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.errors import (
    CheckFailedError,
    ConfigError,
    RunbookError,
    TargetUnreachableError,
)
from runbook.settings import get_settings
from tasks._policy import (
    transient_retries,
)

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
HASH_LABEL = "pod-template-hash"
REQUEST_TIMEOUT_SECONDS = (5, 30)  # connect, read
ROLLOUT_POLL_SECONDS = 0.5
RETRIES = transient_retries()


class RolloutFailedError(CheckFailedError):
    """A rollout ended without every replica updated and available."""


def api_client() -> k8s.ApiClient:
    """Return a client for the primary cluster, configured from settings."""
    settings = get_settings()
    try:
        if settings.kubeconfig is not None:
            return k8s_config.new_client_from_config(
                config_file=str(settings.kubeconfig), context=settings.k8s_context
            )
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            return k8s_config.new_client_from_config(context=settings.k8s_context)
        return k8s.ApiClient(configuration)
    except (ConfigException, OSError) as exc:
        raise ConfigError(
            f"could not configure the Kubernetes client: {exc}; set "
            "RUNBOOK_KUBECONFIG and RUNBOOK_K8S_CONTEXT, or run in a pod"
        ) from None


def translate(exc: Exception, attempted: str) -> RunbookError:
    """Return the runbook error for a Kubernetes client failure while ``attempted``.

    Args:
        exc: what the client raised.
        attempted: what was being done, e.g. "read deployment production/web".
    """
    if isinstance(exc, ApiException):
        status = exc.status or 0
        message = exc.reason or ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            message = json.loads(str(exc.body)).get("message", message)
        if status == 0 or status >= 500 or status == 429:
            return TargetUnreachableError(
                f"could not {attempted}: the Kubernetes API answered {status} {message}"
            )
        return CheckFailedError(
            f"could not {attempted}: the Kubernetes API answered {status} {message}"
        )
    return TargetUnreachableError(
        f"could not {attempted}: the Kubernetes API did not answer "
        f"({type(exc).__name__})"
    )


@contextlib.contextmanager
def kube_errors(attempted: str) -> Iterator[None]:
    """Translate Kubernetes client errors raised inside the block."""
    try:
        yield
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, attempted) from None


def target() -> str:
    """Return the audit name of the app's Deployment."""
    settings = get_settings()
    return f"k8s/{settings.k8s_namespace}/deployment/{settings.k8s_deployment}"


def _names() -> tuple[str, str, str]:
    settings = get_settings()
    return settings.k8s_namespace, settings.k8s_deployment, settings.k8s_container


def _revision(obj: Any) -> int:
    annotations = obj.metadata.annotations or {}
    try:
        return int(annotations.get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def _image(template: Any, container: str) -> str:
    for item in template.spec.containers:
        if item.name == container:
            return str(item.image)
    names = ", ".join(item.name for item in template.spec.containers)
    raise CheckFailedError(f"the pod template has no container {container!r} ({names})")


def _read_deployment(apps: k8s.AppsV1Api) -> Any:
    namespace, name, _ = _names()
    with kube_errors(f"read deployment {namespace}/{name}"):
        return apps.read_namespaced_deployment(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )


def _replica_sets(apps: k8s.AppsV1Api, deployment: Any) -> list[Any]:
    namespace, name, _ = _names()
    with kube_errors(f"list the ReplicaSets of {namespace}/{name}"):
        listed: Any = apps.list_namespaced_replica_set(
            namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    uid = deployment.metadata.uid
    return [
        rs
        for rs in listed.items
        if any(ref.uid == uid for ref in rs.metadata.owner_references or [])
    ]


def rollout_verdict(deployment: Any) -> tuple[str, str]:
    """Judge a Deployment as ``kubectl rollout status`` does: done, waiting or failed.

    Args:
        deployment: a ``V1Deployment`` as read from the API.
    """
    name = deployment.metadata.name
    status = deployment.status
    if (deployment.metadata.generation or 0) > (status.observed_generation or 0):
        return "waiting", "waiting for the deployment spec update to be observed"
    for condition in status.conditions or []:
        if (
            condition.type == "Progressing"
            and condition.reason == "ProgressDeadlineExceeded"
        ):
            deadline = deployment.spec.progress_deadline_seconds
            return "failed", (
                f"deployment {name} exceeded its progress deadline of {deadline} s"
            )
    wanted = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    updated = status.updated_replicas or 0
    if updated < wanted:
        return "waiting", f"{updated} of {wanted} new replicas updated"
    if (status.replicas or 0) > updated:
        old = (status.replicas or 0) - updated
        return "waiting", f"{old} old replicas pending termination"
    if (status.available_replicas or 0) < updated:
        return "waiting", (
            f"{status.available_replicas or 0} of {updated} updated replicas available"
        )
    return "done", f"deployment {name} successfully rolled out"


def _describe(deployment: Any) -> dict[str, Any]:
    _, _, container = _names()
    verdict, detail = rollout_verdict(deployment)
    status = deployment.status
    return {
        "revision": _revision(deployment),
        "image": _image(deployment.spec.template, container),
        "generation": deployment.metadata.generation,
        "replicas": deployment.spec.replicas,
        "updated_replicas": status.updated_replicas or 0,
        "available_replicas": status.available_replicas or 0,
        "progress_deadline_seconds": deployment.spec.progress_deadline_seconds,
        "verdict": verdict,
        "detail": detail,
    }


@task(name="check-cluster", **RETRIES)
def check_cluster() -> str:
    """Ask the cluster for its version: does the Kubernetes API answer?"""
    with api_client() as api, kube_errors("reach the Kubernetes API"):
        version: Any = k8s.VersionApi(api).get_code(
            _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    get_run_logger().info("Reached Kubernetes %s", version.git_version)
    return str(version.git_version)


@task(name="read-rollout", **RETRIES)
def read_rollout() -> dict[str, Any]:
    """Read the Deployment's revision, image and rollout verdict."""
    with api_client() as api:
        apps = k8s.AppsV1Api(api)
        state = _describe(_read_deployment(apps))
    get_run_logger().info(
        "Read deployment %s: revision %s, image %s, %s",
        target(),
        state["revision"],
        state["image"],
        state["detail"],
    )
    return state


@task(name="list-revisions", **RETRIES)
def list_revisions() -> list[dict[str, Any]]:
    """List the Deployment's revisions (its ReplicaSets), oldest first."""
    _, _, container = _names()
    with api_client() as api:
        apps = k8s.AppsV1Api(api)
        deployment = _read_deployment(apps)
        current = _revision(deployment)
        revisions = [
            {
                "revision": _revision(rs),
                "image": _image(rs.spec.template, container),
                "replica_set": rs.metadata.name,
                "ready_replicas": rs.status.ready_replicas or 0,
                "change_cause": (rs.metadata.annotations or {}).get(
                    CHANGE_CAUSE_ANNOTATION, ""
                ),
                "current": _revision(rs) == current,
            }
            for rs in _replica_sets(apps, deployment)
        ]
    revisions.sort(key=lambda item: item["revision"])
    get_run_logger().info("Listed %s revisions of %s", len(revisions), target())
    return revisions


@task(name="set-image", **RETRIES)
def set_image(image: str, change_cause: str) -> int:
    """Set the app container's image; return the Deployment's new generation.

    Args:
        image: the image reference to roll out.
        change_cause: why, shown by ``kubectl rollout history``.
    """
    namespace, name, container = _names()
    patch = {
        "metadata": {"annotations": {CHANGE_CAUSE_ANNOTATION: change_cause}},
        "spec": {
            "template": {"spec": {"containers": [{"name": container, "image": image}]}}
        },
    }
    with api_client() as api:
        apps = k8s.AppsV1Api(api)
        _image(_read_deployment(apps).spec.template, container)
        with kube_errors(f"set the image of {namespace}/{name}"):
            updated: Any = apps.patch_namespaced_deployment(
                name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
    get_run_logger().info(
        "Set image of %s container %s to %s", target(), container, image
    )
    return int(updated.metadata.generation)


@task(name="undo-to-revision", **RETRIES)
def undo_to_revision(revision: int, change_cause: str) -> int:
    """Apply a revision's pod template to the Deployment, as ``rollout undo`` does.

    Args:
        revision: the revision to go back to; it must still have a ReplicaSet.
        change_cause: why, shown by ``kubectl rollout history``.
    """
    namespace, name, _ = _names()
    with api_client() as api:
        apps = k8s.AppsV1Api(api)
        deployment = _read_deployment(apps)
        found = [
            rs for rs in _replica_sets(apps, deployment) if _revision(rs) == revision
        ]
        if not found:
            raise CheckFailedError(
                f"deployment {namespace}/{name} has no revision {revision} to undo to"
            )
        template = copy.deepcopy(api.sanitize_for_serialization(found[0].spec.template))
        template.get("metadata", {}).get("labels", {}).pop(HASH_LABEL, None)
        patch = [
            {"op": "replace", "path": "/spec/template", "value": template},
            {
                "op": "add",
                "path": "/metadata/annotations/kubernetes.io~1change-cause",
                "value": change_cause,
            },
        ]
        with kube_errors(f"roll {namespace}/{name} back to revision {revision}"):
            updated: Any = apps.patch_namespaced_deployment(
                name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
    get_run_logger().info(
        "Applied revision %s's pod template to %s", revision, target()
    )
    return int(updated.metadata.generation)


@task(name="wait-for-rollout", retries=0, cache_policy=NO_CACHE)
def wait_for_rollout(generation: int, timeout_seconds: float) -> dict[str, Any]:
    """Wait until ``generation`` is rolled out; fail on its progress deadline.

    Args:
        generation: the Deployment generation the wait is for.
        timeout_seconds: the longest wait, whatever the progress deadline says.
    """
    logger = get_run_logger()
    deadline = time.monotonic() + timeout_seconds
    last_detail = ""
    with api_client() as api:
        apps = k8s.AppsV1Api(api)
        while True:
            try:
                deployment = _read_deployment(apps)
            except TargetUnreachableError as exc:
                # One unanswered poll is no verdict; the deadline still holds.
                logger.warning("Rollout status unknown for now: %s", exc)
                deployment = None
            if deployment is not None:
                verdict, detail = rollout_verdict(deployment)
                if (deployment.status.observed_generation or 0) < generation:
                    verdict = "waiting"
                if detail != last_detail:
                    logger.debug("Rollout of %s: %s", target(), detail)
                    last_detail = detail
                if verdict == "done":
                    state = _describe(deployment)
                    logger.info(
                        "Rolled out revision %s of %s", state["revision"], target()
                    )
                    return state
                if verdict == "failed":
                    raise RolloutFailedError(
                        f"{detail}: {_why_not_ready(api, deployment)}"
                    )
            if time.monotonic() > deadline:
                raise RolloutFailedError(
                    f"the rollout of {target()} did not finish within "
                    f"{timeout_seconds:g} s ({last_detail})"
                )
            time.sleep(ROLLOUT_POLL_SECONDS)


def _why_not_ready(api: k8s.ApiClient, deployment: Any) -> str:
    """Say what the Deployment's unready pods are waiting on, in a few words."""
    namespace = deployment.metadata.namespace
    labels = deployment.spec.selector.match_labels or {}
    selector = ",".join(f"{key}={value}" for key, value in labels.items())
    try:
        pods: Any = k8s.CoreV1Api(api).list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    except (ApiException, urllib3.exceptions.HTTPError, OSError):
        return "its pods could not be read"
    reasons = []
    for pod in pods.items:
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting if status.state else None
            if not status.ready and waiting is not None:
                reasons.append(
                    f"pod {pod.metadata.name} {waiting.reason} "
                    f"({status.restart_count} restarts)"
                )
    return "; ".join(reasons) or "no pod reported why"
