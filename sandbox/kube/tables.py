"""Server-side ``Table`` rendering, which ``kubectl get`` asks for and prints."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sandbox.kube.resources import ResourceType
from sandbox.kube.selectors import selector_from_match
from sandbox.kube.store import Obj, parse_rfc3339

Column = tuple[str, str, int, Callable[[Obj], Any]]


def human_duration(seconds: float) -> str:
    """Format an age the way the API server's printers do (``5m3s``, ``2d4h``)."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y"


def age(obj: Obj, field: str = "creationTimestamp") -> str:
    """Return how long ago a metadata timestamp was, or ``<unknown>``."""
    stamp = obj["metadata"].get(field)
    if not stamp:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - parse_rfc3339(stamp)).total_seconds())


def _since(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    return human_duration((datetime.now(UTC) - parse_rfc3339(stamp)).total_seconds())


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec", {})
    pod_spec = spec.get("template", {}).get("spec", spec)
    return list(pod_spec.get("containers", []))


def _workload_wide() -> list[Column]:
    return [
        (
            "Containers",
            "string",
            1,
            lambda o: ",".join(c["name"] for c in _containers(o)),
        ),
        ("Images", "string", 1, lambda o: ",".join(c["image"] for c in _containers(o))),
        (
            "Selector",
            "string",
            1,
            lambda o: selector_from_match(o["spec"].get("selector")),
        ),
    ]


def pod_status_reason(pod: Obj) -> str:
    """Return the STATUS column kubectl shows for a pod."""
    status = pod.get("status", {})
    reason = status.get("reason") or status.get("phase", "Pending")
    for cs in status.get("containerStatuses", []):
        state = cs.get("state", {})
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Terminating"
    return str(reason)


def _pod_ready(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    ready = sum(1 for cs in statuses if cs.get("ready"))
    return f"{ready}/{len(pod['spec'].get('containers', []))}"


def _restarts(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses", [])
    count = sum(cs.get("restartCount", 0) for cs in statuses)
    finished = [
        cs["lastState"]["terminated"]["finishedAt"]
        for cs in statuses
        if cs.get("lastState", {}).get("terminated", {}).get("finishedAt")
    ]
    return (
        f"{count} ({_since(max(finished))} ago)" if count and finished else str(count)
    )


def _job_status(job: Obj) -> str:
    for cond in job.get("status", {}).get("conditions", []):
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return "Running"


def _job_duration(job: Obj) -> str:
    status = job.get("status", {})
    if not status.get("startTime"):
        return ""
    end = status.get("completionTime")
    start = parse_rfc3339(status["startTime"])
    stop = parse_rfc3339(end) if end else datetime.now(UTC)
    return human_duration((stop - start).total_seconds())


def _event_object(ev: Obj) -> str:
    inv = ev.get("involvedObject", {})
    return f"{inv.get('kind', '').lower()}/{inv.get('name', '')}"


def _ports(svc: Obj) -> str:
    ports = svc["spec"].get("ports") or []
    return (
        ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"
    )


def _pairs(labels: dict[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def _status(o: Obj, key: str) -> Any:
    return o.get("status", {}).get(key, 0)


COLUMNS: dict[str, list[Column]] = {
    "Deployment": [
        (
            "Ready",
            "string",
            0,
            lambda o: f"{_status(o, 'readyReplicas')}/{o['spec'].get('replicas', 1)}",
        ),
        ("Up-to-date", "integer", 0, lambda o: _status(o, "updatedReplicas")),
        ("Available", "integer", 0, lambda o: _status(o, "availableReplicas")),
        ("Age", "string", 0, age),
        *_workload_wide(),
    ],
    "ReplicaSet": [
        ("Desired", "integer", 0, lambda o: o["spec"].get("replicas", 1)),
        ("Current", "integer", 0, lambda o: _status(o, "replicas")),
        ("Ready", "integer", 0, lambda o: _status(o, "readyReplicas")),
        ("Age", "string", 0, age),
        *_workload_wide(),
    ],
    "Pod": [
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, pod_status_reason),
        ("Restarts", "string", 0, _restarts),
        ("Age", "string", 0, age),
        ("IP", "string", 1, lambda o: o.get("status", {}).get("podIP", "<none>")),
        ("Node", "string", 1, lambda o: o["spec"].get("nodeName", "<none>")),
        ("Nominated Node", "string", 1, lambda o: "<none>"),
        ("Readiness Gates", "string", 1, lambda o: "<none>"),
    ],
    "Job": [
        ("Status", "string", 0, _job_status),
        (
            "Completions",
            "string",
            0,
            lambda o: f"{_status(o, 'succeeded')}/{o['spec'].get('completions', 1)}",
        ),
        ("Duration", "string", 0, _job_duration),
        ("Age", "string", 0, age),
        *_workload_wide(),
    ],
    "Service": [
        ("Type", "string", 0, lambda o: o["spec"].get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: o["spec"].get("clusterIP", "<none>")),
        ("External-IP", "string", 0, lambda o: "<none>"),
        ("Port(s)", "string", 0, _ports),
        ("Age", "string", 0, age),
        ("Selector", "string", 1, lambda o: _pairs(o["spec"].get("selector"))),
    ],
    "Namespace": [
        ("Status", "string", 0, lambda o: o.get("status", {}).get("phase", "Active")),
        ("Age", "string", 0, age),
    ],
    "Node": [
        ("Status", "string", 0, lambda o: "Ready"),
        ("Roles", "string", 0, lambda o: "control-plane"),
        ("Age", "string", 0, age),
        (
            "Version",
            "string",
            0,
            lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
        ),
    ],
    "Secret": [
        ("Type", "string", 0, lambda o: o.get("type", "Opaque")),
        ("Data", "string", 0, lambda o: len(o.get("data") or {})),
        ("Age", "string", 0, age),
    ],
    "Event": [
        ("Last Seen", "string", 0, lambda o: _since(o.get("lastTimestamp"))),
        ("Type", "string", 0, lambda o: o.get("type", "")),
        ("Reason", "string", 0, lambda o: o.get("reason", "")),
        ("Object", "string", 0, _event_object),
        ("Message", "string", 0, lambda o: o.get("message", "")),
    ],
}
GENERIC: list[Column] = [("Age", "string", 0, age)]


def render(res: ResourceType, items: list[Obj], query: dict[str, str], rv: str) -> Obj:
    """Render objects as a ``meta.k8s.io/v1`` Table for ``kubectl get``."""
    columns = COLUMNS.get(res.kind, GENERIC)
    name: Column = ("Name", "string", 0, lambda o: o["metadata"]["name"])
    if res.kind == "Event":
        # Events print their name only in wide output, last.
        columns = [*columns, ("Name", "string", 1, name[3])]
    else:
        columns = [name, *columns]
    definitions = [
        {
            "name": title,
            "type": kind,
            "format": "name" if title == "Name" else "",
            "description": title,
            "priority": prio,
        }
        for title, kind, prio, _ in columns
    ]
    full = query.get("includeObject") == "Object"
    rows = []
    for obj in items:
        cells = [fn(obj) for _, _, _, fn in columns]
        if full:
            row_obj = obj
        else:
            row_obj = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append({"cells": cells, "object": row_obj})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions,
        "rows": rows,
    }
