"""A minimal OpenAPI v3 index: enough for kubectl to see server-side validation.

kubectl reads ``/openapi/v3`` to learn whether the server validates fields
itself (a ``fieldValidation`` query parameter on each kind's PATCH operation);
when it does, it sends ``fieldValidation=Strict`` and needs no schemas.
"""

from __future__ import annotations

import hashlib

from sandbox.kube.resources import RESOURCES, ResourceType
from sandbox.kube.store import Obj


def _prefix(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _served(group: str, version: str) -> list[ResourceType]:
    return [
        r
        for r in RESOURCES
        if (r.group, r.version) == (group, version) and "patch" in r.verbs
    ]


def root() -> Obj:
    """Return the ``/openapi/v3`` index of group-version documents."""
    paths = {}
    for group, version in sorted({(r.group, r.version) for r in RESOURCES}):
        if not _served(group, version):
            continue
        prefix = _prefix(group, version)
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:16].upper()
        paths[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash={digest}"}
    return {"paths": paths}


def group_version(prefix: str) -> Obj | None:
    """Return the OpenAPI v3 document of one group version, or None."""
    parts = prefix.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        group, version = "", parts[1]
    elif parts[0] == "apis" and len(parts) == 3:
        group, version = parts[1], parts[2]
    else:
        return None
    served = _served(group, version)
    if not served:
        return None
    paths = {}
    for res in served:
        scope = "/namespaces/{namespace}" if res.namespaced else ""
        path = f"/{_prefix(group, version)}{scope}/{res.plural}/{{name}}"
        paths[path] = {
            "patch": {
                "operationId": f"patch{res.kind}",
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": res.group,
                    "version": res.version,
                    "kind": res.kind,
                },
                "parameters": [
                    {
                        "name": "fieldValidation",
                        "in": "query",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "fieldManager",
                        "in": "query",
                        "schema": {"type": "string"},
                    },
                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.1-sandbox"},
        "paths": paths,
        "components": {"schemas": {}},
    }
