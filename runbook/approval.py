"""Rails for destructive steps: an exact confirmation, and an approval in the UI."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from runbook.errors import RefusedError

APPROVAL_TIMEOUT_SECONDS = 3600
APPROVAL_POLL_SECONDS = 2  # how soon an answer given in the UI takes effect


class Approval(RunInput):
    """What the on-call engineer answers in the UI before a destructive step."""

    approve: bool = False
    comment: str = ""


def require_confirmation(expected: str, confirm: str | None, action: str) -> None:
    """Refuse ``action`` unless ``confirm`` names exactly what it overwrites."""
    if confirm != expected:
        given = "nothing" if not confirm else repr(confirm)
        raise RefusedError(
            f"refusing to {action}: confirm must be exactly {expected!r} "
            f"(got {given}); nothing was changed"
        )


def in_deployment_run() -> bool:
    """Tell whether this run was started through a deployment (UI, API, schedule)."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def request_approval(action: str, details_markdown: str) -> None:
    """In a deployment run, pause until someone approves ``action`` in the UI.

    Runs started from a shell (``runbook run``) rely on ``confirm`` alone.
    """
    if not in_deployment_run():
        return
    logger = get_run_logger()
    logger.warning("Waiting for approval in the UI to %s", action)
    form = Approval.with_initial_data(
        description=f"### Approve: {action}\n\n{details_markdown}", approve=False
    )
    answer = pause_flow_run(
        wait_for_input=form,
        timeout=APPROVAL_TIMEOUT_SECONDS,
        poll_interval=APPROVAL_POLL_SECONDS,
    )
    if not answer.approve:
        raise RefusedError(f"{action} was not approved; nothing was changed")
    logger.info("Approved to %s (%s)", action, answer.comment or "no comment")
