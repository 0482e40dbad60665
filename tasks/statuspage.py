"""Tasks that keep the public status page current: open and update an incident.

The API is Statuspage.io's: ``POST /pages/{page_id}/incidents`` and ``PATCH
/pages/{page_id}/incidents/{id}`` under ``statuspage_api_url``, authorised with
``Authorization: OAuth <token>``.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import get_run_logger, task

from runbook.errors import ConfigError
from runbook.settings import get_settings
from tasks._policy import (
    transient_retries,
)
from tasks.http import call_api

Status = Literal["investigating", "identified", "monitoring", "resolved"]
Impact = Literal["none", "minor", "major", "critical"]
RETRIES = transient_retries()


def _send(method: str, path: str, what: str, fields: dict[str, Any]) -> Any:
    settings = get_settings()
    token = settings.secret("statuspage_token")
    if settings.statuspage_api_url is None or not settings.statuspage_page_id:
        raise ConfigError(
            "RUNBOOK_STATUSPAGE_API_URL and RUNBOOK_STATUSPAGE_PAGE_ID are not set; "
            f"cannot {what}"
        )
    if not token:
        raise ConfigError(f"RUNBOOK_STATUSPAGE_TOKEN is not set; cannot {what}")
    base = str(settings.statuspage_api_url).rstrip("/")
    url = f"{base}/pages/{settings.statuspage_page_id}/incidents{path}"
    response = call_api(
        method,
        url,
        what,
        json={"incident": fields},
        headers={"Authorization": f"OAuth {token}"},
    )
    return response.json()


@task(name="open-statuspage-incident", **RETRIES)
def open_statuspage_incident(
    name: str, body: str, status: Status = "investigating", impact: Impact = "none"
) -> str:
    """Open an incident on the status page and return its id.

    Args:
        name: the incident's title, e.g. "Deploying BPMN Studio 1.43.0".
        body: the first update's text.
        status: investigating, identified, monitoring or resolved.
        impact: none, minor, major or critical.
    """
    fields = {"name": name, "body": body, "status": status, "impact_override": impact}
    incident = _send("POST", "", "open a status page incident", fields)
    get_run_logger().info("Opened status page incident %s", incident["id"])
    return str(incident["id"])


@task(name="update-statuspage-incident", **RETRIES)
def update_statuspage_incident(incident_id: str, body: str, status: Status) -> None:
    """Post an update to a status page incident, changing its status.

    Args:
        incident_id: what ``open_statuspage_incident`` returned.
        body: the update's text.
        status: investigating, identified, monitoring or resolved.
    """
    _send(
        "PATCH",
        f"/{incident_id}",
        f"update status page incident {incident_id}",
        {"body": body, "status": status},
    )
    get_run_logger().info("Updated status page incident %s to %s", incident_id, status)
