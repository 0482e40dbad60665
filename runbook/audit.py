"""An audit record of every change a runbook makes: who ran what, on what.

Each change becomes a Prefect event (``runbook.<action>``) about the resource it
touched; Prefect relates it to the flow run, flow and deployment by itself, so the
event feed and each run's page show what changed and when.
"""

from __future__ import annotations

import getpass
import logging
import socket
from typing import Any

from prefect.context import FlowRunContext
from prefect.events import emit_event

from runbook.redact import known_secrets, redact

logger = logging.getLogger(__name__)


def actor() -> str:
    """Say who started the current run: a user, a schedule, the API or a shell."""
    context = FlowRunContext.get()
    flow_run = context.flow_run if context else None
    if flow_run is not None:
        if flow_run.created_by is not None:
            by = flow_run.created_by
            return f"{(by.type or 'user').lower()}:{by.display_value or by.id}"
        if flow_run.auto_scheduled:
            return "schedule"
        if flow_run.deployment_id is not None:
            return "deployment (UI or API)"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"local:{user}@{socket.gethostname()}"


def record_change(action: str, target: str, **details: Any) -> None:
    """Emit ``runbook.<action>`` about ``target`` with ``details``, secrets masked.

    Args:
        action: what was done, dotted, e.g. ``deployment.rolled-back``.
        target: what it was done to, e.g. ``k8s/production/deployment/bpmn-studio``.
        details: JSON-friendly facts (revision, image, row counts).
    """
    secrets = known_secrets()
    payload = {
        key: redact(value, secrets) if isinstance(value, str) else value
        for key, value in details.items()
    }
    payload["actor"] = actor()
    emit_event(
        event=f"runbook.{action}",
        resource={
            "prefect.resource.id": f"bpmn-studio.{target.replace('/', '.')}",
            "prefect.resource.name": target,
        },
        payload=payload,
    )
    logger.debug("Recorded audit event runbook.%s on %s", action, target)
