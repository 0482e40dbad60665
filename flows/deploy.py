"""Deploy: roll out a new image of BPMN Studio Web, watch it, undo it if it is bad.

Runbook page "Deploy" used to say: tag and push, curl ``/health``, run the smoke
tests, watch the error rates for 30 minutes and, if it goes wrong, ``kubectl
rollout undo``. Now one run does it and decides by itself: pre-checks, roll out,
verify, watch, roll back on any failure of those three, notify. Every step shows in
the ``deploy`` timeline artifact.
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from pydantic import Field

from flows.backup import backup
from flows.incident import find_open_incidents
from flows.notices import notify, page, timestamp
from flows.timeline import Timeline
from runbook.audit import record_change
from runbook.backups import Component
from runbook.errors import CheckFailedError, RefusedError
from runbook.settings import get_settings
from tasks.http_smoke import check_health, run_smoke_checks
from tasks.kubernetes import (
    check_cluster,
    read_rollout,
    set_image,
    target,
    undo_to_revision,
    wait_for_rollout,
)
from tasks.kubernetes_lease import LeaseHeldError, hold_lease
from tasks.metrics import mark_traffic, measure_traffic
from tasks.notify import post_slack_message
from tasks.statuspage import open_statuspage_incident, update_statuspage_incident
from tasks.storage_backups import find_newest_backup

_NAME = r"(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
_PATH = r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
_TAG = r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"@sha256:[a-f0-9]{64}"
IMAGE_PATTERN = rf"^{_NAME}{_PATH}(?:{_TAG}(?:{_DIGEST})?|{_DIGEST})$"
STEPS = ["pre-checks", "roll out", "verify", "watch", "roll back", "notify"]
BLIND_SAMPLES_MAX = 3  # unreadable samples in a row before the watch gives up


class DeployFailedError(CheckFailedError):
    """The deploy failed (and was rolled back if it got that far); see ``summary``."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.summary))


@flow(name="deploy")
def deploy(
    image: Annotated[
        str,
        Field(
            description="Image to roll out, with a tag or digest, e.g. "
            "ghcr.io/bpmn-studio/web:1.43.0.",
            pattern=IMAGE_PATTERN,
            max_length=255,
        ),
    ],
    watch_minutes: Annotated[
        float,
        Field(
            ge=0,
            le=240,
            description="How long to watch error rate and p95 latency after the "
            "rollout before calling it done; 0 skips the watch.",
        ),
    ] = 30,
    dry_run: Annotated[
        bool, Field(description="Run the pre-checks and show the plan; change nothing.")
    ] = False,
    freeze_override_reason: Annotated[
        str,
        Field(
            max_length=500,
            description="Deploy despite an open P1/P2 incident: say why. Recorded "
            "in the audit event and the timeline. Leave empty to respect the freeze.",
        ),
    ] = "",
) -> dict[str, Any] | State[Any]:
    """Roll out ``image``, verify and watch it, and roll back by itself if it is bad."""
    logger = get_run_logger()
    get_settings()  # a bad setting fails here, before any system is touched
    if image.rpartition(":")[2] == "latest" and "@" not in image:
        raise RefusedError(
            f"refusing to deploy {image}: 'latest' names no fixed release, so it "
            "could not be rolled back to; use a version tag or a digest"
        )
    timeline = Timeline.of("deploy", f"Deploy {image}", STEPS)
    summary: dict[str, Any] = {"image": image, "dry_run": dry_run, "outcome": ""}
    holder = f"deploy run {flow_run.get_name()} ({flow_run.get_id()})"
    lock = (
        contextlib.nullcontext() if dry_run else hold_lease(holder, f"deploy {image}")
    )
    try:
        with lock:
            # Pre-checks: cluster, healthy rollout, no freeze, a recent backup
            current = _pre_checks(image, dry_run, freeze_override_reason, timeline)
            summary.update(
                previous_image=current["image"],
                previous_revision=current["revision"],
                backup_id=current["backup_id"],
                freeze_override=current["freeze_override"],
            )
            if current["image"] == image:
                summary["outcome"] = "already deployed"
                timeline.finish("already deployed")
            elif dry_run:
                summary["plan"] = _plan(image, watch_minutes, current)
                timeline.notes.append(summary["plan"])
                logger.info("Dry run, nothing changed. %s", summary["plan"])
                summary["outcome"] = "dry run"
                timeline.finish("dry run: nothing changed")
            else:
                # Roll out, verify, watch; on a failure roll back, notify, raise
                _roll_out_and_watch(image, watch_minutes, current, timeline, summary)
                logger.info("Deployed %s to %s", image, target())
    except LeaseHeldError as exc:
        # One deploy at a time: the second is cancelled, not queued.
        timeline.finish("cancelled: another run holds the lock")
        return Cancelled(message=str(exc), data=exc)
    return summary | {"timeline": timeline.as_list()}


def _pre_checks(
    image: str, dry_run: bool, override_reason: str, timeline: Timeline
) -> dict[str, Any]:
    """Check cluster, rollout, freeze and backup; return the current rollout."""
    with timeline.step("pre-checks") as step:
        check_cluster()
        current = read_rollout() | {"backup_id": None, "freeze_override": None}
        if current["verdict"] != "done":
            raise RefusedError(
                f"refusing to deploy: the current rollout of {target()} is not "
                f"healthy ({current['detail']}); roll back or fix it first"
            )
        if current["image"] == image:
            step.detail = (
                f"{image} is already deployed (revision {current['revision']})"
            )
            return current
        incidents = find_open_incidents()
        current["freeze_override"] = _check_freeze(incidents, override_reason, timeline)
        current["backup_id"] = _ensure_backup(dry_run, timeline)
        step.detail = (
            f"cluster up; revision {current['revision']} ({current['image']}) "
            f"healthy; {len(incidents)} open P1/P2; backup {current['backup_id']}"
        )
    return current


def _plan(image: str, watch_minutes: float, current: dict[str, Any]) -> str:
    return (
        f"Plan: set {image} on {target()} (now revision {current['revision']}, "
        f"{current['image']}), wait for the rollout, verify, watch "
        f"{watch_minutes:g} min, roll back to revision {current['revision']} on "
        "failure."
    )


def _check_freeze(
    incidents: list[dict[str, Any]], override_reason: str, timeline: Timeline
) -> dict[str, Any] | None:
    """Refuse during an open P1/P2 unless overridden; return the override."""
    if not incidents:
        return None
    names = ", ".join(
        f"{i['severity']} {i['title'] or i['name']} (run {i['flow_run_id']})"
        for i in incidents
    )
    if not override_reason.strip():
        raise RefusedError(
            f"refusing to deploy during a change freeze: open incidents {names}; "
            "resolve them, or set freeze_override_reason to deploy anyway"
        )
    timeline.notes.append(f"Change freeze overridden ({names}): {override_reason}")
    get_run_logger().warning(
        "Deploying despite open incidents %s: %s", names, override_reason
    )
    return {"reason": override_reason, "incidents": incidents}


def _ensure_backup(dry_run: bool, timeline: Timeline) -> str:
    """Return a complete backup younger than the RPO, taking one if there is none."""
    rpo_minutes = get_settings().rpo_minutes
    newest = find_newest_backup([Component.DATABASE])
    if newest is not None and newest.age_minutes(datetime.now(UTC)) <= rpo_minutes:
        return newest.backup_id
    if dry_run:
        timeline.notes.append(
            f"A backup would be taken first (none in {rpo_minutes} min)."
        )
        return "none yet (would take one)"
    get_run_logger().info(
        "No backup younger than %s min: taking one first", rpo_minutes
    )
    return str(backup()["backup_id"])


def _roll_out_and_watch(
    image: str,
    watch_minutes: float,
    current: dict[str, Any],
    timeline: Timeline,
    summary: dict[str, Any],
) -> None:
    """Roll out, verify and watch; on failure roll back, notify and raise."""
    settings = get_settings()
    revision = current["revision"]
    incident = notify(
        open_statuspage_incident,
        f"Deploying BPMN Studio {image.rpartition(':')[2]}",
        "A new release is rolling out; no impact is expected.",
        "monitoring",
    )
    timings = summary.setdefault("timings", {})
    try:
        # Roll out: set the image, wait as `kubectl rollout status` does
        with timeline.step("roll out") as step:
            generation = set_image(image, f"runbook deploy {image}")
            timings["image_set_at"] = timestamp()
            override = current["freeze_override"]
            record_change(
                "deployment.image-set",
                target(),
                image=image,
                previous=current["image"],
                freeze_override=override["reason"] if override else None,
            )
            rolled = wait_for_rollout(
                generation, settings.deploy_rollout_timeout_seconds
            )
            summary["revision"] = rolled["revision"]
            step.detail = f"revision {rolled['revision']} ({image}) rolled out"

        # Verify: /health answers 200, the smoke checks pass
        with timeline.step("verify") as step:
            check_health()
            step.detail = f"/health 200; {len(run_smoke_checks())} smoke checks passed"

        # Watch: error rate and p95 latency, sample by sample
        with timeline.step("watch") as step:
            summary["watch"] = _watch(watch_minutes, timeline)
            step.detail = summary["watch"]["verdict"]
    except Exception as exc:  # whatever failed, the previous release goes back
        timings["decided_at"] = timestamp()
        cause = str(exc)
        summary.update(outcome="rolled back", cause=cause)
        _roll_back(
            image,
            revision,
            cause,
            incident=incident,
            timeline=timeline,
            summary=summary,
        )
        raise DeployFailedError(
            f"deploy of {image} failed and was rolled back to revision {revision}: "
            f"{cause}",
            summary | {"timeline": timeline.as_list()},
        ) from None
    timeline.skip("roll back", "not needed")

    # Notify: Slack and the status page
    with timeline.step("notify") as step:
        notify(post_slack_message, f":white_check_mark: Deployed {image} to {target()}")
        if incident:
            notify(
                update_statuspage_incident,
                incident,
                f"{image} is live and passed its watch.",
                "resolved",
            )
        step.detail = "Slack and status page told"
    summary["outcome"] = "deployed"
    timeline.finish("deployed")


def _watch(minutes: float, timeline: Timeline) -> dict[str, Any]:
    """Sample traffic for ``minutes``; raise at the first breached threshold."""
    interval = get_settings().deploy_watch_interval_seconds
    planned = math.ceil(minutes * 60 / interval) if minutes > 0 else 0
    if not planned:
        return {"samples": 0, "planned": 0, "judged": 0, "verdict": "skipped"}
    mark = mark_traffic()
    started, judged, blind, requests = time.monotonic(), 0, 0, 0
    for sample in range(1, planned + 1):
        time.sleep(max(started + sample * interval - time.monotonic(), 0))
        state = measure_traffic(mark, return_state=True)
        if not state.is_completed():
            blind += 1
            get_run_logger().warning("Could not read traffic (sample %s)", sample)
            if blind >= BLIND_SAMPLES_MAX:
                raise CheckFailedError(
                    f"the watch could not read traffic {blind} times in a row: "
                    f"{state.result(raise_on_failure=False)}"
                )
            continue
        blind, reading = 0, state.result()
        if reading["verdict"] == "breach":
            raise CheckFailedError(
                f"the watch stopped the deploy at sample {sample} of {planned}: "
                f"{reading['reason']}"
            )
        if reading["verdict"] == "ok":
            judged, mark = judged + 1, reading["mark"]
            requests += reading["requests"]
        timeline.update(
            "watch",
            f"sample {sample} of {planned}: {reading['requests']} requests, "
            f"{reading['error_rate_percent']}% errors, p95 {reading['p95_ms']} ms",
        )
    if not judged:
        get_run_logger().warning(
            "The app had too little traffic to judge; check its dashboards by hand"
        )
    verdict = f"{judged} windows judged, {requests} requests, no threshold crossed"
    return {
        "samples": planned,
        "planned": planned,
        "judged": judged,
        "verdict": verdict,
    }


def _roll_back(
    image: str,
    revision: int,
    cause: str,
    *,
    incident: str | None,
    timeline: Timeline,
    summary: dict[str, Any],
) -> None:
    """Undo to ``revision``, check health, and tell people; page if that fails."""
    settings = get_settings()
    try:
        with timeline.step("roll back") as step:
            generation = undo_to_revision(revision, f"runbook deploy of {image} undone")
            record_change(
                "deployment.rolled-back", target(), to_revision=revision, cause=cause
            )
            wait_for_rollout(generation, settings.deploy_rollout_timeout_seconds)
            summary["timings"]["restored_at"] = timestamp()
            check_health()
            step.detail = f"revision {revision} serving again; /health 200"
    except Exception as exc:
        page(
            f"Deploy of {image} failed ({cause}) and its rollback to revision "
            f"{revision} failed too: {exc}",
            f"deploy-rollback-failed-{settings.environment}",
        )
        timeline.finish("failed; rollback failed too")
        raise
    with timeline.step("notify") as step:
        notify(
            post_slack_message,
            f":warning: Deploy of {image} rolled back to revision {revision}: {cause}",
        )
        if incident:
            notify(
                update_statuspage_incident,
                incident,
                "The new release misbehaved and was rolled back; service is restored.",
                "resolved",
            )
        step.detail = "Slack and status page told"
    timeline.finish(f"rolled back to revision {revision}")
