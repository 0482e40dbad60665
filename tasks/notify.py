"""Tasks that tell people: a Slack message, a PagerDuty page."""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger, task

from runbook.errors import CheckFailedError, ConfigError
from runbook.redact import known_secrets, redact
from runbook.settings import get_settings
from tasks._policy import transient_retries
from tasks.http import call_api

Severity = Literal["critical", "error", "warning", "info"]
SOURCE = "bpmn-studio-runbook"


@task(name="post-slack-message", **transient_retries())
def post_slack_message(text: str, channel: str | None = None) -> str:
    """Post ``text`` to Slack with chat.postMessage and return the message's ts.

    Args:
        text: the message, Slack mrkdwn.
        channel: channel name or id; the settings' channel when omitted.
    """
    settings = get_settings()
    token = settings.secret("slack_token")
    if not token:
        raise ConfigError("RUNBOOK_SLACK_TOKEN is not set; cannot post to Slack")
    target = channel or settings.slack_channel
    response = call_api(
        "POST",
        f"{str(settings.slack_api_url).rstrip('/')}/chat.postMessage",
        "post to Slack",
        headers={"Authorization": f"Bearer {token}"},
        json={"channel": target, "text": text},
    )
    body = response.json()
    if not body.get("ok"):
        raise CheckFailedError(f"Slack refused the message: {body.get('error')}")
    get_run_logger().info("Posted to Slack channel %s", target)
    return str(body["ts"])


@task(name="trigger-pagerduty", **transient_retries())
def trigger_pagerduty(
    summary: str, dedup_key: str, severity: Severity = "error"
) -> str:
    """Trigger a PagerDuty alert through the Events API v2; return its dedup key.

    Args:
        summary: one line saying what is wrong (PagerDuty cuts at 1024).
        dedup_key: groups repeats of the same problem into one alert.
        severity: critical, error, warning or info.
    """
    settings = get_settings()
    routing_key = settings.secret("pagerduty_routing_key")
    if not routing_key:
        raise ConfigError("RUNBOOK_PAGERDUTY_ROUTING_KEY is not set; cannot page")
    response = call_api(
        "POST",
        str(settings.pagerduty_events_url),
        "trigger a PagerDuty alert",
        json={
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": summary[:1024],
                "source": SOURCE,
                "severity": severity,
                "custom_details": {"environment": settings.environment},
            },
        },
    )
    get_run_logger().info("Triggered PagerDuty alert %s", dedup_key)
    return str(response.json().get("dedup_key", dedup_key))


def alert(summary: str, dedup_key: str, severity: Severity = "error") -> list[str]:
    """Send ``summary`` to Slack and PagerDuty; return what could not be sent.

    A failed alert must not hide the failure it reports, so errors are returned
    (and logged) rather than raised.

    Args:
        summary: one line saying what failed and why.
        dedup_key: groups repeats of the same problem into one PagerDuty alert.
        severity: PagerDuty severity.
    """
    logger = get_run_logger()
    failures = []
    for send, args in (
        (post_slack_message, (f":rotating_light: {summary}",)),
        (trigger_pagerduty, (summary, dedup_key, severity)),
    ):
        state = send(*args, return_state=True)
        if not state.is_completed():
            reason = redact(str(state.result(raise_on_failure=False)), known_secrets())
            logger.warning("Could not send an alert (%s); page on-call by hand", reason)
            failures.append(reason)
    return failures
