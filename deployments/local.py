"""Local serving: a Prefect server, the local stack and every deployment, together.

This is what ``runbook up`` runs. The Prefect server is started unless
``PREFECT_API_URL`` already points at one; the local stack is started unless the
``RUNBOOK_*`` settings already name a complete target.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prefect import serve
from prefect.settings import PREFECT_API_URL, temporary_settings

from runbook.catalog import load_catalog
from runbook.errors import ConfigError, SandboxError
from runbook.settings import get_settings, load_settings
from sandbox.stack import Sandbox

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def prefect_server(host: str, port: int) -> Iterator[str]:
    """Start a Prefect server with its UI unless one is configured; yield its API."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        logger.info("Using the Prefect server at %s", configured)
        yield configured
        return
    api_url = f"http://{host}:{port}/api"
    process = subprocess.Popen(  # noqa: S603 (fixed argv)
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            host,
            "--port",
            str(port),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_healthy(api_url, process)
        logger.info("Started the Prefect server; UI at http://%s:%s", host, port)
        # Flow runs are subprocesses: they read the variable; this process reads
        # Prefect's settings, which were loaded before the server existed.
        os.environ["PREFECT_API_URL"] = api_url
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield api_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        logger.info("Stopped the Prefect server")


def _wait_healthy(api_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxError(f"the Prefect server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SandboxError(f"the Prefect server at {api_url} did not become healthy")


@contextlib.contextmanager
def target(state_dir: Path | None, size_mb: int) -> Iterator[str]:
    """Use the configured target, or bring the local stack up (and stop it after)."""
    try:
        load_settings()
    except ConfigError:
        pass
    else:
        logger.info("Using the target configured by RUNBOOK_* settings")
        yield "configured"
        return
    sandbox = Sandbox(state_dir)
    sandbox.up(size_mb=size_mb)
    os.environ.update(sandbox.env())
    get_settings.cache_clear()
    logger.info("Pointed the runbooks at the local stack in %s", sandbox.state_dir)
    try:
        yield "sandbox"
    finally:
        sandbox.stop()


def serve_all() -> None:
    """Serve every deployment of prefect.yaml, with its schedules, until Ctrl-C."""
    deployments = []
    for spec in load_catalog():
        flow = spec.load_flow()
        deployments.append(
            flow.to_deployment(
                name=spec.name,
                description=spec.description or None,
                tags=spec.tags,
                schedules=spec.prefect_schedules(),
                parameters=spec.parameters,
                concurrency_limit=spec.prefect_concurrency(),
            )
        )
    logger.info("Serving %s deployments", len(deployments))
    try:
        serve(*deployments)  # type: ignore[arg-type] # sync call returns deployments
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the shutdown of the server and the stack.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        logger.info("Stopping: the deployments are no longer served")


def interrupt_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so ``kill`` also stops everything cleanly."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
