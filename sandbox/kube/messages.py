"""Decoded requests, responses and request bodies of the simulated API server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from sandbox.kube.patching import json_merge_patch, json_patch, strategic_merge_patch
from sandbox.kube.resources import ResourceType
from sandbox.kube.store import ApiError, Obj


class Runtime(Protocol):
    """What the API needs from the node simulation: logs and usage figures."""

    def pod_log(
        self, namespace: str, name: str, container: str, previous: bool
    ) -> list[str]:
        """Return a container's log lines, each prefixed with its RFC 3339 time."""
        ...

    def pod_metrics(self, namespace: str | None) -> list[Obj]:
        """Return ``PodMetrics`` for running pods."""
        ...

    def node_metrics(self) -> list[Obj]:
        """Return ``NodeMetrics`` for the nodes."""
        ...


@dataclass
class Request:
    """One HTTP request, decoded."""

    method: str
    path: str
    query: dict[str, str]
    accept: str = "application/json"
    content_type: str = "application/json"
    body: bytes = b""


@dataclass
class Response:
    """What to send back: a JSON body, plain text, or a watch stream."""

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    stream: Iterator[bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Target:
    """A request path resolved to a resource, namespace, name and subresource."""

    res: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None


def json_body(req: Request) -> Obj:
    """Decode a JSON object body, or raise 400."""
    try:
        body = json.loads(req.body or b"{}")
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "BadRequest", f"the request body is not valid JSON: {exc}"
        ) from exc
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return body


def apply_body(req: Request) -> Obj:
    """Decode a server-side apply body (YAML, of which JSON is a subset)."""
    body = yaml.safe_load(req.body or b"{}")
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the apply patch must be an object")
    return body


def patch_document(current: Obj, req: Request) -> Obj:
    """Apply the request's patch to ``current`` according to its content type."""
    ctype = req.content_type.split(";")[0].strip()
    if ctype == "application/json-patch+json":
        ops = json.loads(req.body or b"[]")
        if not isinstance(ops, list):
            raise ApiError(
                400, "BadRequest", "a JSON patch must be a list of operations"
            )
        return json_patch(current, ops)
    if ctype == "application/merge-patch+json":
        return json_merge_patch(current, json_body(req))
    if ctype == "application/strategic-merge-patch+json":
        return strategic_merge_patch(current, json_body(req))
    if ctype == "application/apply-patch+yaml":
        return strategic_merge_patch(current, apply_body(req))
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format ({ctype}); accepted "
        "media types include application/json-patch+json, "
        "application/merge-patch+json, application/strategic-merge-patch+json "
        "and application/apply-patch+yaml",
    )
