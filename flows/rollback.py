"""Rollback: put an earlier release of BPMN Studio Web back, schema first if asked.

Runbook page "Rollback" used to say: ``kubectl rollout undo`` (or
``--to-revision=42``) and ``npm run db:migrate:rollback --version=...``. Now one run
does both in the safe order: the schema is rolled back by the release that made it,
as a Job whose log shows in this run; only if that succeeded is the Deployment given
the chosen revision's pod template, waited for and checked. Every step shows in the
``rollback`` timeline artifact.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from pydantic import Field

from flows.notices import notify
from flows.timeline import Timeline
from runbook.audit import record_change
from runbook.errors import RefusedError
from runbook.settings import get_settings
from tasks.http_smoke import check_health
from tasks.kubernetes import (
    check_cluster,
    list_revisions,
    target,
    undo_to_revision,
    wait_for_rollout,
)
from tasks.kubernetes_jobs import migration_job, run_migration_rollback
from tasks.kubernetes_lease import LeaseHeldError, hold_lease
from tasks.notify import post_slack_message
from tasks.statuspage import open_statuspage_incident

STEPS = ["pre-checks", "migration rollback", "roll back", "verify", "notify"]


@flow(name="rollback")
def rollback(
    to_revision: Annotated[
        int | None,
        Field(
            ge=1,
            description="Revision to go back to, numbered as `kubectl rollout "
            "history` shows; the one before the current when empty.",
        ),
    ] = None,
    migration_version: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
            description="First roll the database schema back to this migration "
            "version (npm run db:migrate:rollback) with the current release's "
            "image; empty leaves the schema alone.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        Field(description="Show the revisions, images and the Job; change nothing."),
    ] = False,
) -> dict[str, Any] | State[Any]:
    """Roll the schema back if asked, then the Deployment to an earlier revision."""
    logger = get_run_logger()
    settings = get_settings()
    timeline = Timeline.of("rollback", f"Rollback of {target()}", STEPS)
    summary: dict[str, Any] = {"dry_run": dry_run, "outcome": ""}

    # Pre-checks: the cluster answers, the revision exists, the Job to run
    with timeline.step("pre-checks") as step:
        check_cluster()
        revisions = list_revisions()
        if not revisions:
            raise RefusedError(f"refusing to roll back: {target()} has no revisions")
        current = next((r for r in revisions if r["current"]), revisions[-1])
        chosen = _choose(revisions, current, to_revision)
        summary.update(
            from_revision=current["revision"],
            from_image=current["image"],
            to_revision=chosen["revision"],
            to_image=chosen["image"],
            revisions=[
                {k: r[k] for k in ("revision", "image", "change_cause", "current")}
                for r in revisions
            ],
        )
        job = None
        if migration_version:
            name = f"{settings.k8s_deployment}-migrate-rollback-{_suffix()}"
            job = migration_job(migration_version, name)
            container = job["spec"]["template"]["spec"]["containers"][0]
            summary["job"] = {
                "name": name,
                "image": container["image"],
                "command": " ".join(container["command"]),
            }
        step.detail = (
            f"revision {current['revision']} ({current['image']}) now; going to "
            f"revision {chosen['revision']} ({chosen['image']})"
        )
    timeline.notes += _plan(revisions, summary)
    if chosen["revision"] == current["revision"] and not job:
        summary["outcome"] = "already at revision"
        timeline.finish(f"already at revision {chosen['revision']}")
        return summary | {"timeline": timeline.as_list()}
    if dry_run:
        logger.info("Dry run, nothing changed: %s", "; ".join(timeline.notes))
        summary["outcome"] = "dry run"
        timeline.finish("dry run: nothing changed")
        return summary | {"timeline": timeline.as_list()}

    holder = f"rollback run {flow_run.get_name()} ({flow_run.get_id()})"
    try:
        with hold_lease(holder, f"roll back to revision {chosen['revision']}"):
            # Migration rollback: stop here, before the Deployment, if it fails
            if job is None:
                timeline.skip("migration rollback", "no migration_version given")
            else:
                with timeline.step("migration rollback") as step:
                    summary["job"]["log"] = run_migration_rollback(job)["log"]
                    step.detail = f"Job {job['metadata']['name']} completed"

            # Roll back: the chosen revision's pod template, as `rollout undo` does
            with timeline.step("roll back") as step:
                generation = undo_to_revision(
                    chosen["revision"], f"runbook rollback to {chosen['revision']}"
                )
                record_change(
                    "deployment.rolled-back",
                    target(),
                    to_revision=chosen["revision"],
                    image=chosen["image"],
                    migration_version=migration_version,
                )
                rolled = wait_for_rollout(
                    generation, settings.deploy_rollout_timeout_seconds
                )
                summary["revision"] = rolled["revision"]
                step.detail = (
                    f"{chosen['image']} rolled out as revision {rolled['revision']}"
                )
    except LeaseHeldError as exc:
        timeline.finish("cancelled: another run holds the lock")
        return Cancelled(message=str(exc), data=exc)

    # Verify: /health answers 200
    with timeline.step("verify") as step:
        step.detail = f"/health 200 in {check_health()} ms"

    # Notify: Slack and the status page
    with timeline.step("notify") as step:
        text = (
            f"{target()} rolled back from revision {current['revision']} "
            f"({current['image']}) to {chosen['image']}"
        )
        notify(post_slack_message, f":rewind: {text}")
        notify(
            open_statuspage_incident,
            "BPMN Studio rolled back to an earlier release",
            f"We rolled back to {chosen['image']}; service is healthy.",
            "resolved",
        )
        step.detail = "Slack and status page told"
    summary["outcome"] = "rolled back"
    timeline.finish(f"rolled back to {chosen['image']}")
    logger.info("Rolled back %s to %s", target(), chosen["image"])
    return summary | {"timeline": timeline.as_list()}


def _choose(
    revisions: list[dict[str, Any]], current: dict[str, Any], wanted: int | None
) -> dict[str, Any]:
    """Return the revision asked for, or the one before the current."""
    known = ", ".join(f"{r['revision']} ({r['image']})" for r in revisions)
    if wanted is None:
        earlier = [r for r in revisions if r["revision"] < current["revision"]]
        if not earlier:
            raise RefusedError(
                f"refusing to roll back: {target()} has no revision before "
                f"{current['revision']}; revisions: {known}"
            )
        return earlier[-1]
    for revision in revisions:
        if revision["revision"] == wanted:
            return revision
    raise RefusedError(
        f"refusing to roll back: {target()} has no revision {wanted}; "
        f"revisions: {known}"
    )


def _suffix() -> str:
    run_id = flow_run.get_id() or ""
    return run_id.replace("-", "")[:8] or "manual"


def _plan(revisions: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    lines = [
        f"revision {r['revision']}: {r['image']}"
        + (" (current)" if r["current"] else "")
        + (f" - {r['change_cause']}" if r["change_cause"] else "")
        for r in revisions
    ]
    if "job" in summary:
        job = summary["job"]
        lines.append(f"Job {job['name']}: `{job['command']}` in {job['image']}")
    return lines
