"""A run's timeline: its runbook steps as a keyed markdown artifact, kept current.

Each step is published when it starts, when its detail changes and when it ends, so
the artifact in the UI always shows how far a deploy or rollback got and why it
stopped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import create_markdown_artifact

from runbook.redact import known_secrets, redact

PENDING, RUNNING, DONE, FAILED, SKIPPED = (
    "pending",
    "running",
    "done",
    "failed",
    "skipped",
)
_ICONS = {PENDING: "·", RUNNING: "…", DONE: "✓", FAILED: "✗", SKIPPED: "-"}


@dataclass
class Step:
    """One runbook step: its status, when it ran and what it found."""

    name: str
    status: str = PENDING
    started_at: float | None = None
    seconds: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Return the step as JSON-friendly data for a run's summary."""
        return {
            "step": self.name,
            "status": self.status,
            "seconds": self.seconds,
            "detail": self.detail,
        }


@dataclass
class Timeline:
    """The steps of one run, published as the artifact ``key`` on every change."""

    key: str
    title: str
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    outcome: str = "running"

    @classmethod
    def of(cls, key: str, title: str, names: list[str]) -> Timeline:
        """Return a timeline of pending steps called ``names``."""
        return cls(key, title, [Step(name) for name in names])

    def get(self, name: str) -> Step:
        """Return the step called ``name``."""
        return next(step for step in self.steps if step.name == name)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Run the block as step ``name``: running, then done or failed with why."""
        current = self.get(name)
        current.status, current.started_at = RUNNING, time.monotonic()
        self.publish()
        try:
            yield current
        except BaseException as exc:
            current.status = FAILED
            current.detail = " ".join(filter(None, [current.detail, str(exc)]))
            self.outcome = f"failed at {name}"
            raise
        else:
            current.status = DONE
        finally:
            current.seconds = round(time.monotonic() - current.started_at, 1)
            self.publish()

    def update(self, name: str, detail: str) -> None:
        """Replace a step's detail and publish it."""
        self.get(name).detail = detail
        self.publish()

    def skip(self, name: str, why: str) -> None:
        """Mark a step as skipped, saying why."""
        step = self.get(name)
        step.status, step.detail = SKIPPED, why
        self.publish()

    def finish(self, outcome: str) -> None:
        """Record the run's outcome; steps never reached are marked skipped."""
        self.outcome = outcome
        for step in self.steps:
            if step.status == PENDING:
                step.status = SKIPPED
        self.publish()

    def as_list(self) -> list[dict[str, Any]]:
        """Return the steps as JSON-friendly data."""
        return [step.as_dict() for step in self.steps]

    def render(self) -> str:
        """Return the timeline as markdown."""
        lines = [f"## {self.title}: {self.outcome}", ""]
        lines += [f"- {note}" for note in self.notes]
        lines += [
            "",
            f"Updated {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC.",
            "",
            "| | step | seconds | detail |",
            "|---|---|---|---|",
        ]
        for step in self.steps:
            detail = step.detail.replace("|", "\\|").replace("\n", " ")
            seconds = "" if step.seconds is None else step.seconds
            lines.append(
                f"| {_ICONS[step.status]} | {step.name} | {seconds} | {detail} |"
            )
        return "\n".join(lines)

    def publish(self) -> None:
        """Write the timeline to its keyed artifact, secrets masked."""
        create_markdown_artifact(
            key=self.key,
            markdown=redact(self.render(), known_secrets()),
            description=f"{self.title}: {self.outcome}",
        )
