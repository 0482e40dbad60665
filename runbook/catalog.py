"""The runbook's deployments, read from prefect.yaml (their one source of truth)."""

from __future__ import annotations

import datetime
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.schedules import Cron, Interval, Schedule

from runbook.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as prefect.yaml declares it."""

    name: str
    entrypoint: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    concurrency_limit: dict[str, Any] | int | None = None

    def load_flow(self) -> Flow[Any, Any]:
        """Import the flow object the entrypoint names."""
        path, _, attribute = self.entrypoint.partition(":")
        module = path.removesuffix(".py").replace("/", ".")
        found = getattr(importlib.import_module(module), attribute, None)
        if not isinstance(found, Flow):
            raise ConfigError(f"entrypoint {self.entrypoint!r} is not a flow")
        return found

    def prefect_schedules(self) -> list[Schedule]:
        """Return the schedules as Prefect schedule objects."""
        result = []
        for item in self.schedules:
            if "cron" in item:
                result.append(Cron(item["cron"], timezone=item.get("timezone", "UTC")))
            elif "interval" in item:
                result.append(Interval(datetime.timedelta(seconds=item["interval"])))
            else:
                raise ConfigError(f"deployment {self.name!r}: unknown schedule {item}")
        return result

    def prefect_concurrency(self) -> ConcurrencyLimitConfig | int | None:
        """Return the deployment's concurrency limit as Prefect wants it."""
        if isinstance(self.concurrency_limit, dict):
            return ConcurrencyLimitConfig(**self.concurrency_limit)
        return self.concurrency_limit

    def describe_schedules(self) -> str:
        """Return the schedules in a few words ("every 60 s", cron text)."""
        parts = []
        for item in self.schedules:
            if "cron" in item:
                parts.append(f"cron {item['cron']} {item.get('timezone', 'UTC')}")
            elif "interval" in item:
                parts.append(f"every {item['interval']} s")
        return ", ".join(parts) or "manual"


def load_catalog(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """Read every deployment declared in prefect.yaml."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"could not read {path}: {exc}") from exc
    specs = []
    for entry in document.get("deployments") or []:
        specs.append(
            DeploymentSpec(
                name=entry["name"],
                entrypoint=entry["entrypoint"],
                description=entry.get("description", ""),
                tags=list(entry.get("tags") or []),
                schedules=list(entry.get("schedules") or []),
                parameters=dict(entry.get("parameters") or {}),
                concurrency_limit=entry.get("concurrency_limit"),
            )
        )
    return specs


def find_flow(name: str) -> Flow[Any, Any]:
    """Return the flow called ``name``, listing the known ones when there is none."""
    specs = load_catalog()
    # A deployment's name needs only its own module; a flow's name needs them all
    for spec in specs:
        if spec.name == name:
            return spec.load_flow()
    for spec in specs:
        flow = spec.load_flow()
        if flow.name == name:
            return flow
    known = ", ".join(sorted(spec.name for spec in specs))
    raise ConfigError(f"no flow named {name!r}; known flows: {known}")
