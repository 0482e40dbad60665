"""Subresources and aggregated APIs: ``scale``, ``log`` and metrics.k8s.io."""

from __future__ import annotations

from sandbox.kube.messages import (
    Request,
    Response,
    Runtime,
    Target,
    json_body,
    patch_document,
)
from sandbox.kube.selectors import object_matcher, selector_from_match
from sandbox.kube.store import ApiError, Obj, Store, details


def scale(store: Store, req: Request, t: Target) -> Response:
    """Serve the ``scale`` subresource of a Deployment or ReplicaSet."""
    assert t.name is not None
    if req.method not in ("GET", "PUT", "PATCH"):
        raise ApiError(
            405, "MethodNotAllowed", f"{req.method} is not supported on scale"
        )
    current = store.get(t.res.key, t.namespace or "", t.name)
    scale = _scale_of(current)
    if req.method == "GET":
        return Response(body=scale)
    wanted = json_body(req) if req.method == "PUT" else patch_document(scale, req)
    replicas = (wanted.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(
            422,
            "Invalid",
            f'Scale.autoscaling "{t.name}" is invalid: '
            "spec.replicas: Invalid value: must be greater than or equal to 0",
        )
    rv = (wanted.get("metadata") or {}).get("resourceVersion")
    if req.method == "PATCH" and rv == scale["metadata"]["resourceVersion"]:
        rv = None
    current["spec"]["replicas"] = replicas
    current["metadata"]["resourceVersion"] = rv
    if req.query.get("dryRun"):
        return Response(body=_scale_of(current))
    updated = store.update(t.res.key, current)
    return Response(body=_scale_of(updated))


def pod_log(store: Store, runtime: Runtime, req: Request, t: Target) -> Response:
    """Serve a pod's ``log`` subresource as plain text."""
    assert t.name is not None
    pod = store.get("pods", t.namespace or "", t.name)
    names = [c["name"] for c in pod["spec"].get("containers", [])]
    container = req.query.get("container") or ""
    if not container:
        if len(names) != 1:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {t.name}, "
                f"choose one of: [{' '.join(names)}]",
            )
        container = names[0]
    if container not in names:
        raise ApiError(
            400,
            "BadRequest",
            f"container {container} is not valid for pod {t.name}",
        )
    previous = req.query.get("previous") in ("true", "1")
    lines = runtime.pod_log(t.namespace or "", t.name, container, previous)
    tail = req.query.get("tailLines")
    if tail is not None:
        lines = lines[-int(tail) :] if int(tail) > 0 else []
    if req.query.get("timestamps") not in ("true", "1"):
        lines = [line.split(" ", 1)[1] for line in lines]
    text = "".join(line + "\n" for line in lines)
    limit = req.query.get("limitBytes")
    if limit:
        text = text[: int(limit)]
    return Response(body=text, content_type="text/plain")


def metrics(runtime: Runtime, req: Request, t: Target) -> Response:
    """Serve ``PodMetrics`` and ``NodeMetrics`` of metrics.k8s.io."""
    if req.method != "GET":
        raise ApiError(
            405, "MethodNotAllowed", f"{req.method} is not supported on metrics"
        )
    if t.res.kind == "PodMetrics":
        items = runtime.pod_metrics(t.namespace)
    else:
        items = runtime.node_metrics()
    if t.name is not None:
        for item in items:
            if item["metadata"]["name"] == t.name:
                return Response(body=item)
        raise ApiError(
            404,
            "NotFound",
            f'podmetrics.metrics.k8s.io "{t.name}" not found',
            details(t.res.key, t.name),
        )
    match = object_matcher(
        req.query.get("labelSelector"), req.query.get("fieldSelector")
    )
    return Response(
        body={
            "kind": f"{t.res.kind}List",
            "apiVersion": t.res.api_version,
            "metadata": {},
            "items": [i for i in items if match(i)],
        }
    )


def _scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    status = obj.get("status") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "resourceVersion",
                "creationTimestamp",
            )
            if k in meta
        },
        "spec": {"replicas": obj["spec"].get("replicas", 1)},
        "status": {
            "replicas": status.get("replicas", 0),
            "selector": selector_from_match(obj["spec"].get("selector")),
        },
    }
