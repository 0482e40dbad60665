"""The ``runbook`` command: serve the runbooks, run one, and drive the local stack."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from runbook.errors import RunbookError

if TYPE_CHECKING:
    from prefect.states import State

app = typer.Typer(
    help="BPMN Studio Web's operations runbook, as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sandbox_app = typer.Typer(help="The local stack.", no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")

StateDir = Annotated[
    Path | None,
    typer.Option(help="Folder holding the local stack's state [default: ./.sandbox]."),
]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _setup_logging(verbose: bool = False) -> None:
    from runbook.redact import RedactingFilter

    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # Our own modules log here; Prefect's loggers keep Prefect's handlers.
    for name in ("runbook", "sandbox", "deployments"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for prefect_handler in logging.getLogger("prefect").handlers:
        prefect_handler.addFilter(RedactingFilter())


@app.command()
def up(
    state_dir: StateDir = None,
    host: Annotated[str, typer.Option(help="Address of the Prefect UI.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the Prefect UI.")] = 4200,
    size_mb: Annotated[int, typer.Option(help="Seed data size on first start.")] = 5,
) -> None:
    """Start Prefect's server and UI, the local stack, and serve every deployment."""
    from deployments.local import (
        interrupt_on_sigterm,
        prefect_server,
        serve_all,
        target,
    )

    _setup_logging()
    interrupt_on_sigterm()
    try:
        with prefect_server(host, port), target(state_dir, size_mb):
            serve_all()
    except KeyboardInterrupt:
        pass
    except RunbookError as exc:
        _fail(str(exc))


def _parse_parameters(pairs: list[str]) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            _fail(f"parameter {pair!r} is not of the form name=value")
        try:
            parameters[name] = json.loads(raw)
        except ValueError:
            parameters[name] = raw
    return parameters


@app.command()
def run(
    flow_name: Annotated[str, typer.Argument(metavar="FLOW", help="Flow name.")],
    parameter: Annotated[
        list[str] | None,
        typer.Option("-p", "--param", help="name=value (JSON values allowed)."),
    ] = None,
) -> None:
    """Run one flow here, against the configured target; print its result as JSON."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from runbook.catalog import find_flow
    from runbook.settings import get_settings

    _setup_logging()
    parameters = _parse_parameters(parameter or [])
    try:
        flow = find_flow(flow_name)
        get_settings()
    except RunbookError as exc:
        _fail(str(exc))
    # A flow-run heartbeat lets the server notice a worker that died unseen; a run
    # started here reports its end to whoever started it, and Prefect joins the
    # heartbeat thread at the end of every run, which costs up to a second.
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        state = cast("State[Any]", flow(**parameters, return_state=True))
    outcome = state.result(raise_on_failure=False)
    if state.is_completed():
        typer.echo(json.dumps(outcome, indent=2, default=str))
        return
    summary = getattr(outcome, "summary", None)
    body = dict(summary) if isinstance(summary, dict) else {}
    body.update(state=state.type.value, error=str(outcome))
    typer.echo(json.dumps(body, indent=2, default=str))
    raise typer.Exit(1)


@app.command("list")
def list_flows() -> None:
    """List the flows with their deployments and schedules."""
    from runbook.catalog import load_catalog

    for spec in load_catalog():
        flow = spec.load_flow()
        deployment = f"{flow.name}/{spec.name}"
        typer.echo(f"{flow.name:<20} {deployment:<36} {spec.describe_schedules()}")
        if spec.description:
            typer.echo(f"{'':<20} {spec.description}")


@sandbox_app.command("up")
def sandbox_up(
    state_dir: StateDir = None,
    size_mb: Annotated[int, typer.Option(help="Seed data size on first start.")] = 5,
) -> None:
    """Start the local stack (idempotent); restart what a crash left dead."""
    from sandbox.stack import Sandbox

    _setup_logging()
    try:
        info = Sandbox(state_dir).up(size_mb=size_mb)
    except RunbookError as exc:
        _fail(str(exc))
    typer.echo(f"local stack up in {info['state_dir']}; app at {info['app_url']}")
    typer.echo('point the runbooks at it with: eval "$(runbook sandbox env)"')


@sandbox_app.command("down")
def sandbox_down(state_dir: StateDir = None) -> None:
    """Stop every process of the local stack and remove its state."""
    from sandbox.stack import Sandbox

    _setup_logging()
    Sandbox(state_dir).down()


@sandbox_app.command("status")
def sandbox_status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Describe the local stack: URLs, what runs, active faults."""
    from sandbox.stack import Sandbox

    try:
        info = Sandbox(state_dir).status()
    except RunbookError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:<20} {value}")
    if not info["running"]:
        raise typer.Exit(1)


@sandbox_app.command("env")
def sandbox_env(state_dir: StateDir = None) -> None:
    """Print ``export RUNBOOK_...`` lines that point every setting at the stack."""
    from sandbox.stack import Sandbox

    try:
        typer.echo(Sandbox(state_dir).env_lines(), nl=False)
    except RunbookError as exc:
        _fail(str(exc))


@sandbox_app.command("fault")
def sandbox_fault(
    name: Annotated[str, typer.Argument(help="Fault name, e.g. db-down.")],
    clear: Annotated[bool, typer.Option("--clear", help="Clear the fault.")] = False,
    state_dir: StateDir = None,
) -> None:
    """Inject a failure into the local stack, or clear it."""
    from sandbox.stack import Sandbox

    _setup_logging()
    try:
        active = Sandbox(state_dir).fault(name, clear=clear)
    except RunbookError as exc:
        _fail(str(exc))
    typer.echo(f"active faults: {', '.join(active) or 'none'}")


def _exit_now(status: list[int]) -> None:
    """End the process with ``status[0]``, skipping the interpreter's teardown.

    Registered before a flow runs, so it is the last exit handler: Prefect's log and
    event workers have drained (at thread shutdown) and every handler registered during
    the run has finished. What it skips, freeing some two thousand modules, takes
    about 0.4 s after a flow run and changes nothing outside the process.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status[0])


def main() -> None:
    """Run the command line."""
    # This machine may have no route to Prefect's telemetry endpoint.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    status = [1]  # an exception that escapes the command ends the process with 1
    if sys.argv[1:2] == ["run"]:
        atexit.register(_exit_now, status)
    try:
        app()
    except SystemExit as exc:
        code = exc.code
        status[0] = code if isinstance(code, int) else (0 if code is None else 1)
        raise


if __name__ == "__main__":
    main()
