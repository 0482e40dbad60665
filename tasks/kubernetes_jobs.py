"""Tasks that run the app's one-off commands as Kubernetes Jobs: migration rollback.

The Job runs the release now deployed (only its image knows how to undo its own
migrations) with the app container's environment, so it reaches the same database
with the same credentials. It is never retried by Kubernetes (``backoffLimit: 0``):
a half-undone migration needs a person, not a second attempt.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from runbook.audit import record_change
from runbook.errors import CheckFailedError
from runbook.settings import get_settings
from tasks.kubernetes import REQUEST_TIMEOUT_SECONDS, api_client, kube_errors

MIGRATION_ROLLBACK_COMMAND = ["npm", "run", "db:migrate:rollback", "--"]
JOB_LABEL = "runbook.bpmn-studio.io/job"
JOB_DEADLINE_SECONDS = 1800
JOB_KEPT_SECONDS = 86_400  # finished Jobs stay a day for a post-mortem
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 20


class MigrationFailedError(CheckFailedError):
    """The migration rollback Job failed; nothing after it was attempted."""


def migration_job(version: str, name: str) -> dict[str, Any]:
    """Return the manifest of a Job rolling the schema back to ``version``.

    Args:
        version: the migration version to roll back to.
        name: the Job's name.
    """
    settings = get_settings()
    with api_client() as api:
        apps = k8s.AppsV1Api(api)
        with kube_errors(f"read deployment {settings.k8s_deployment}"):
            deployment: Any = apps.read_namespaced_deployment(
                settings.k8s_deployment,
                settings.k8s_namespace,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        pod = api.sanitize_for_serialization(deployment.spec.template.spec)
    app = next(
        (c for c in pod["containers"] if c["name"] == settings.k8s_container), None
    )
    if app is None:
        raise CheckFailedError(
            f"deployment {settings.k8s_deployment} has no container "
            f"{settings.k8s_container!r} to take the migration's image from"
        )
    container = {
        "name": "migrate",
        "image": app["image"],
        "command": [*MIGRATION_ROLLBACK_COMMAND, f"--version={version}"],
        "env": copy.deepcopy(app.get("env", [])),
        "envFrom": copy.deepcopy(app.get("envFrom", [])),
    }
    # Not the app's own labels: its Service must never send traffic to this pod.
    labels = {"app.kubernetes.io/managed-by": "bpmn-studio-runbook", JOB_LABEL: name}
    spec = {
        "restartPolicy": "Never",
        "containers": [{k: v for k, v in container.items() if v}],
    }
    for key in ("serviceAccountName", "imagePullSecrets"):
        if pod.get(key):
            spec[key] = pod[key]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": JOB_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": JOB_KEPT_SECONDS,
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def _finished(job: Any) -> str:
    for condition in job.status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return f"{condition.type}:{condition.reason or ''}"
    return ""


def _stream_logs(core: k8s.CoreV1Api, name: str, seen: dict[str, int]) -> list[str]:
    """Log the lines the Job's pods printed since last time; return all so far."""
    settings = get_settings()
    logger = get_run_logger()
    pods: Any = core.list_namespaced_pod(
        settings.k8s_namespace,
        label_selector=f"{JOB_LABEL}={name}",
        _request_timeout=REQUEST_TIMEOUT_SECONDS,
    )
    everything: list[str] = []
    for pod in sorted(pods.items, key=lambda p: p.metadata.creation_timestamp):
        pod_name = pod.metadata.name
        try:
            text = core.read_namespaced_pod_log(
                pod_name,
                settings.k8s_namespace,
                _request_timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except ApiException as exc:  # not started yet: no log to read
            logger.debug("No log from pod %s yet: %s", pod_name, exc.reason)
            continue
        lines = str(text).splitlines()
        for line in lines[seen.get(pod_name, 0) :]:
            logger.info("[%s] %s", pod_name, line)
        seen[pod_name] = len(lines)
        everything += lines
    return everything


@task(name="run-migration-rollback", retries=0, cache_policy=NO_CACHE)
def run_migration_rollback(manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the migration rollback Job, stream its logs, and fail if it fails.

    Args:
        manifest: what ``migration_job`` returned.
    """
    logger = get_run_logger()
    namespace = get_settings().k8s_namespace
    name = manifest["metadata"]["name"]
    command = " ".join(manifest["spec"]["template"]["spec"]["containers"][0]["command"])
    seen: dict[str, int] = {}
    with api_client() as api:
        batch, core = k8s.BatchV1Api(api), k8s.CoreV1Api(api)
        with kube_errors(f"create Job {namespace}/{name}"):
            body: Any = manifest  # the client sends a plain manifest as it is
            batch.create_namespaced_job(
                namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        record_change("job.created", f"k8s/{namespace}/job/{name}", command=command)
        logger.info("Created Job %s/%s running %s", namespace, name, command)
        deadline = time.monotonic() + JOB_DEADLINE_SECONDS + 60
        outcome = ""
        while not outcome:
            if time.monotonic() > deadline:
                outcome = "Failed:DeadlineExceeded"
                break
            time.sleep(POLL_SECONDS)
            with kube_errors(f"read Job {namespace}/{name}"):
                job: Any = batch.read_namespaced_job(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
                outcome = _finished(job)
                lines = _stream_logs(core, name, seen)
    kind, _, reason = outcome.partition(":")
    if kind != "Complete":
        tail = " | ".join(lines[-LOG_TAIL_LINES:]) or "no log"
        raise MigrationFailedError(
            f"the migration rollback Job {namespace}/{name} failed ({reason}); the "
            f"deployment was not touched. Its log: {tail}"
        )
    logger.info("Job %s/%s completed", namespace, name)
    return {"job": name, "command": command, "log": lines}
