"""One deploy or rollback at a time: a Lease beside the app's Deployment.

Why a Kubernetes Lease rather than a Prefect concurrency limit: the lock lives in the
cluster it protects, so it holds whoever changes the Deployment from whichever
Prefect server (a served deployment, ``runbook run`` on a laptop with its own
temporary server), and ``kubectl get lease`` shows who holds it. It is taken with
a create or a compare-and-swap replace (``resourceVersion``), renewed by a thread
while held, and freed on exit; a holder that died stops renewing, and its lease
expires ``LEASE_SECONDS`` later.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prefect import get_run_logger, task

from runbook.errors import RefusedError
from runbook.settings import get_settings
from tasks.kubernetes import (
    REQUEST_TIMEOUT_SECONDS,
    RETRIES,
    api_client,
    kube_errors,
    translate,
)

LEASE_SECONDS = 60
RENEW_EVERY_SECONDS = 15
PURPOSE_ANNOTATION = "runbook.bpmn-studio.io/purpose"


class LeaseHeldError(RefusedError):
    """Another run holds the Deployment's lease; this one changed nothing."""


def lease_name() -> str:
    """Return the name of the Lease that guards the app's Deployment."""
    return f"{get_settings().k8s_deployment}-runbook"


def _expires_at(lease: Any) -> datetime:
    renewed = lease.spec.renew_time or lease.spec.acquire_time
    if renewed is None:
        return datetime.min.replace(tzinfo=UTC)
    return renewed + timedelta(seconds=lease.spec.lease_duration_seconds or 0)


def _held_by_other(lease: Any, holder: str, now: datetime) -> bool:
    current = lease.spec.holder_identity
    return bool(current) and current != holder and _expires_at(lease) > now


def _refusal(lease: Any) -> LeaseHeldError:
    purpose = (lease.metadata.annotations or {}).get(PURPOSE_ANNOTATION, "")
    return LeaseHeldError(
        f"another run holds lease {lease.metadata.name} ({lease.spec.holder_identity}"
        f"{': ' + purpose if purpose else ''}) until "
        f"{_expires_at(lease):%H:%M:%S} UTC unless renewed; nothing was changed"
    )


def _spec(holder: str, now: datetime) -> k8s.V1LeaseSpec:
    return k8s.V1LeaseSpec(
        holder_identity=holder,
        lease_duration_seconds=LEASE_SECONDS,
        acquire_time=now,
        renew_time=now,
    )


@task(name="acquire-lease", **RETRIES)
def acquire_lease(holder: str, purpose: str) -> str:
    """Take the Deployment's lease for ``holder``; refuse while another holds it.

    Args:
        holder: who takes it, e.g. "deploy run brave-fox (uuid)".
        purpose: what the holder is doing, shown to anyone refused.
    """
    namespace, name = get_settings().k8s_namespace, lease_name()
    now = datetime.now(UTC)
    meta = k8s.V1ObjectMeta(name=name, annotations={PURPOSE_ANNOTATION: purpose})
    with api_client() as api:
        leases = k8s.CoordinationV1Api(api)
        try:
            lease: Any = leases.read_namespaced_lease(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as exc:
            if exc.status != 404:
                raise translate(exc, f"read lease {namespace}/{name}") from None
            lease = None
        try:
            if lease is None:
                leases.create_namespaced_lease(
                    namespace,
                    k8s.V1Lease(metadata=meta, spec=_spec(holder, now)),
                    _request_timeout=REQUEST_TIMEOUT_SECONDS,
                )
            elif _held_by_other(lease, holder, now):
                raise _refusal(lease)
            else:
                lease.metadata.annotations = meta.annotations
                lease.spec = _spec(holder, now)
                # resourceVersion from the read: a concurrent taker makes this 409.
                leases.replace_namespaced_lease(
                    name, namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
        except ApiException as exc:
            if exc.status != 409:
                raise translate(exc, f"take lease {namespace}/{name}") from None
            with kube_errors(f"read lease {namespace}/{name}"):
                winner: Any = leases.read_namespaced_lease(
                    name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            raise _refusal(winner) from None
    get_run_logger().info("Took lease %s/%s for %s", namespace, name, holder)
    return name


def _renew(holder: str) -> bool:
    """Push the lease's renew time forward; return False once it is not ours."""
    namespace, name = get_settings().k8s_namespace, lease_name()
    with api_client() as api:
        leases = k8s.CoordinationV1Api(api)
        lease: Any = leases.read_namespaced_lease(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        if lease.spec.holder_identity != holder:
            return False
        lease.spec.renew_time = datetime.now(UTC)
        leases.replace_namespaced_lease(
            name, namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    return True


@task(name="release-lease", **RETRIES)
def release_lease(holder: str) -> None:
    """Free the Deployment's lease if ``holder`` still holds it."""
    namespace, name = get_settings().k8s_namespace, lease_name()
    with api_client() as api, kube_errors(f"release lease {namespace}/{name}"):
        leases = k8s.CoordinationV1Api(api)
        lease: Any = leases.read_namespaced_lease(
            name, namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        if lease.spec.holder_identity != holder:
            return
        lease.spec.holder_identity = None
        lease.spec.renew_time = None
        leases.replace_namespaced_lease(
            name, namespace, lease, _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
    get_run_logger().info("Released lease %s/%s", namespace, name)


@contextlib.contextmanager
def hold_lease(holder: str, purpose: str) -> Iterator[None]:
    """Hold the Deployment's lease for the block, renewing it in the background."""
    logger = get_run_logger()
    acquire_lease(holder, purpose)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_EVERY_SECONDS):
            try:
                if not _renew(holder):
                    logger.error(
                        "Lost lease %s to another run; stop changing the Deployment "
                        "and check who holds it with kubectl get lease",
                        lease_name(),
                    )
                    return
            except Exception as exc:  # the next round tries again
                logger.warning("Could not renew lease %s: %s", lease_name(), exc)

    renewer = threading.Thread(target=renew, name="lease-renewer", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=REQUEST_TIMEOUT_SECONDS[1])
        state = release_lease(holder, return_state=True)
        if not state.is_completed():
            logger.warning(
                "Could not release lease %s; it expires by itself within %s s",
                lease_name(),
                LEASE_SECONDS,
            )
