"""Open incidents, as the change freeze sees them.

An incident is open while an ``incident-response`` flow run is not in a final
state; its severity is its tag ``severity:P1`` .. ``severity:P4``. The flow itself
lives in its own module; this one only reads its runs from the Prefect API.
"""

from __future__ import annotations

from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType

from runbook.errors import TargetUnreachableError
from tasks._policy import RETRY_JITTER_FACTOR, only_transient

INCIDENT_FLOW = "incident-response"
FREEZE_SEVERITIES = ("P1", "P2")
OPEN_STATES = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
]


def severity_tag(severity: str) -> str:
    """Return the tag an incident-response run of ``severity`` carries."""
    return f"severity:{severity}"


@task(
    name="find-open-incidents",
    retries=2,
    retry_delay_seconds=[1.0, 3.0],
    retry_jitter_factor=RETRY_JITTER_FACTOR,
    retry_condition_fn=only_transient,
    cache_policy=NO_CACHE,
)
def find_open_incidents(
    severities: tuple[str, ...] = FREEZE_SEVERITIES,
) -> list[dict[str, Any]]:
    """List incident-response runs still open with one of ``severities``.

    Args:
        severities: e.g. ("P1", "P2"), the ones that freeze changes.
    """
    tags = [severity_tag(severity) for severity in severities]
    try:
        with get_client(sync_client=True) as prefect:
            runs = prefect.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[INCIDENT_FLOW])),
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(any_=tags),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=OPEN_STATES)
                    ),
                ),
                limit=50,
            )
    except (httpx.TransportError, OSError) as exc:
        raise TargetUnreachableError(
            f"could not ask the Prefect API for open incidents: {exc}"
        ) from None
    found = [
        {
            "flow_run_id": str(run.id),
            "name": run.name,
            "severity": next(t for t in run.tags if t in tags).split(":", 1)[1],
            "state": run.state.name if run.state else "unknown",
            "title": str(run.parameters.get("title", "")),
        }
        for run in runs
    ]
    get_run_logger().info(
        "Found %s open %s incidents", len(found), "/".join(severities)
    )
    return found
