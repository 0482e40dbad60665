"""REST semantics of the API server: routing, verbs, subresources and watches."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Iterator

from sandbox.kube import openapi, resources, subresources, tables
from sandbox.kube.messages import (
    Request,
    Response,
    Runtime,
    Target,
    apply_body,
    json_body,
    patch_document,
)
from sandbox.kube.objects import prepare
from sandbox.kube.resources import ResourceType
from sandbox.kube.selectors import object_matcher
from sandbox.kube.store import ApiError, Obj, Store, details

log = logging.getLogger(__name__)

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
WATCH_TIMEOUT_SECONDS = 1800


class Api:
    """Answer Kubernetes REST requests from the store and the node runtime."""

    def __init__(self, store: Store, runtime: Runtime) -> None:
        self.store = store
        self.runtime = runtime

    def handle(self, req: Request) -> Response:
        """Dispatch a request, turning ``ApiError`` into a ``Status`` body."""
        try:
            return self._dispatch(req)
        except ApiError as exc:
            return Response(exc.code, exc.status())
        except Exception as exc:
            log.exception("The simulator failed to serve %s %s", req.method, req.path)
            failure = ApiError(500, "InternalError", f"simulator failure: {exc}")
            return Response(500, failure.status())

    def _dispatch(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if path == "/version":
            return Response(body=resources.SERVER_VERSION)
        if path in ("/healthz", "/readyz", "/livez"):
            return Response(body="ok", content_type="text/plain")
        if path in ("/api", "/apis"):
            if "as=APIGroupDiscoveryList" in req.accept:
                body = resources.aggregated_discovery(legacy=path == "/api")
                return Response(body=body, content_type=AGGREGATED)
            if path == "/api":
                return Response(body=resources.api_versions())
            return Response(body=resources.api_group_list())
        if path == "/openapi/v3" or path.startswith("/openapi/v3/"):
            doc = (
                openapi.root()
                if path == "/openapi/v3"
                else openapi.group_version(path.removeprefix("/openapi/v3/"))
            )
            if doc is None:
                raise ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            return Response(body=doc)
        if req.method in ("POST", "PUT", "PATCH") and "protobuf" in req.content_type:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the simulator accepts JSON and YAML bodies only, not protobuf",
            )
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        elif parts[0] == "apis" and len(parts) == 2 and parts[1] in resources.GROUPS:
            return Response(body=_group(parts[1]))
        else:
            raise ApiError(
                404, "NotFound", "the server could not find the requested resource"
            )
        if not rest:
            listing = resources.resource_list(group, version)
            if listing is None:
                raise ApiError(
                    404, "NotFound", "the server could not find the requested resource"
                )
            return Response(body=listing)
        return self._resource(req, _resolve(group, version, rest))

    def _resource(self, req: Request, t: Target) -> Response:
        log.debug(
            "%s %s ns=%s name=%s sub=%s",
            req.method,
            t.res.key,
            t.namespace,
            t.name,
            t.sub,
        )
        if t.res.group == "metrics.k8s.io":
            return subresources.metrics(self.runtime, req, t)
        if t.sub == "log":
            return subresources.pod_log(self.store, self.runtime, req, t)
        if t.sub == "scale":
            return subresources.scale(self.store, req, t)
        table = "as=Table" in req.accept
        if req.method == "GET" and t.name is None:
            if req.query.get("watch") in ("true", "1"):
                return self._watch(req, t.res, t.namespace, None, table)
            return Response(body=self._list(req, t.res, t.namespace, table))
        if req.method == "GET" and req.query.get("watch") in ("true", "1"):
            return self._watch(req, t.res, t.namespace, t.name, table)
        if req.method == "POST" and t.name is None:
            return Response(
                201, self.create(t.res, t.namespace, json_body(req), req.query)
            )
        if t.name is None:
            if req.method == "DELETE":
                return Response(body=self._delete_collection(req, t))
            raise ApiError(
                405, "MethodNotAllowed", f"{req.method} is not supported here"
            )
        if req.method == "GET":
            obj = self.store.get(t.res.key, t.namespace or "", t.name)
            if table:
                return Response(
                    body=tables.render(
                        t.res, [obj], req.query, self.store.resource_version
                    )
                )
            return Response(body=obj)
        if req.method == "PUT":
            return Response(body=self.replace(t, json_body(req), req.query))
        if req.method == "PATCH":
            return Response(body=self.patch(t, req))
        if req.method == "DELETE":
            return Response(
                body=self.delete(t, json_body(req) if req.body else {}, req.query)
            )
        raise ApiError(405, "MethodNotAllowed", f"{req.method} is not supported here")

    def _list(
        self, req: Request, res: ResourceType, namespace: str | None, table: bool
    ) -> Obj:
        match = object_matcher(
            req.query.get("labelSelector"), req.query.get("fieldSelector")
        )
        with self.store.lock:
            rv = self.store.resource_version
            items = [o for o in self.store.list(res.key, namespace) if match(o)]
        if table:
            return tables.render(res, items, req.query, rv)
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _watch(
        self,
        req: Request,
        res: ResourceType,
        namespace: str | None,
        name: str | None,
        table: bool,
    ) -> Response:
        selector = req.query.get("fieldSelector") or ""
        if name:
            selector = ",".join(filter(None, [selector, f"metadata.name={name}"]))
        match = object_matcher(req.query.get("labelSelector"), selector)
        rv_text = req.query.get("resourceVersion") or "0"
        timeout = float(req.query.get("timeoutSeconds") or WATCH_TIMEOUT_SECONDS)
        send_initial = req.query.get("sendInitialEvents") == "true"
        with self.store.lock:
            if rv_text == "0" or send_initial:
                rv = int(self.store.resource_version)
                initial = [o for o in self.store.list(res.key, namespace) if match(o)]
            else:
                rv, initial = int(rv_text), []
            self.store.check_watch_version(rv)
            events = self.store.events_after(res.key, rv, timeout)

        def stream() -> Iterator[bytes]:
            for obj in initial:
                yield self._event_line("ADDED", res, obj, req, table)
            if send_initial:
                # The watch-list protocol: a bookmark marks the end of the state.
                bookmark = {
                    "kind": res.kind,
                    "apiVersion": res.api_version,
                    "metadata": {
                        "resourceVersion": str(rv),
                        "creationTimestamp": None,
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }
                yield (
                    json.dumps({"type": "BOOKMARK", "object": bookmark}).encode()
                    + b"\n"
                )
            for event in events:
                if namespace is not None and event.namespace != namespace:
                    continue
                if match(event.obj):
                    yield self._event_line(event.type, res, event.obj, req, table)

        return Response(stream=stream())

    def _event_line(
        self, kind: str, res: ResourceType, obj: Obj, req: Request, table: bool
    ) -> bytes:
        if table:
            obj = tables.render(
                res, [obj], req.query, obj["metadata"]["resourceVersion"]
            )
        return json.dumps({"type": kind, "object": obj}).encode() + b"\n"

    def create(
        self, res: ResourceType, namespace: str | None, obj: Obj, query: dict[str, str]
    ) -> Obj:
        """Create an object after defaulting and validating it."""
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if res.namespaced:
            body_ns = meta.get("namespace")
            if namespace and body_ns and body_ns != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request",
                )
            meta["namespace"] = namespace or body_ns or "default"
            if self.store.find("namespaces", "", meta["namespace"]) is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{meta["namespace"]}" not found',
                    details("namespaces", meta["namespace"]),
                )
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        for key in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            meta.pop(key, None)
        uid = str(uuid.uuid4())
        prepare(res.key, res.kind, obj, uid, creating=True)
        if res.kind in ("Deployment", "ReplicaSet", "Job"):
            # ReplicaSetStatus.replicas is the one status field never omitted.
            obj["status"] = {"replicas": 0} if res.kind == "ReplicaSet" else {}
        if query.get("dryRun"):
            return obj
        created = self.store.create(res.key, obj, uid=uid)
        log.debug("Created %s %s/%s", res.key, meta.get("namespace", ""), meta["name"])
        return created

    def replace(self, t: Target, obj: Obj, query: dict[str, str]) -> Obj:
        """Replace an object or its status, keeping what that endpoint may not set."""
        assert t.name is not None
        current = self.store.get(t.res.key, t.namespace or "", t.name)
        meta = obj.setdefault("metadata", {})
        if meta.get("name", t.name) != t.name:
            raise ApiError(
                400,
                "BadRequest",
                "the name of the object does not match the name on the URL",
            )
        meta["name"] = t.name
        if t.res.namespaced:
            meta["namespace"] = t.namespace
        obj["kind"], obj["apiVersion"] = t.res.kind, t.res.api_version
        if t.sub == "status":
            merged = copy.deepcopy(current)
            merged["status"] = obj.get("status", {})
            merged["metadata"]["resourceVersion"] = meta.get("resourceVersion")
            obj = merged
        else:
            if "status" in current:
                obj["status"] = current["status"]
            prepare(
                t.res.key, t.res.kind, obj, current["metadata"]["uid"], creating=False
            )
        if query.get("dryRun"):
            return obj
        return self.store.update(t.res.key, obj)

    def patch(self, t: Target, req: Request) -> Obj:
        """Apply a JSON, merge, strategic merge or apply patch to an object."""
        assert t.name is not None
        try:
            current = self.store.get(t.res.key, t.namespace or "", t.name)
        except ApiError:
            if "apply-patch" not in req.content_type:
                raise
            applied = apply_body(req)
            return self.create(t.res, t.namespace, applied, req.query)
        patched = patch_document(current, req)
        patched.setdefault("metadata", {})
        rv = patched["metadata"].get("resourceVersion")
        if (
            rv == current["metadata"]["resourceVersion"]
            or "apply-patch" in req.content_type
        ):
            patched["metadata"].pop("resourceVersion", None)
        return self.replace(t, patched, req.query)

    def delete(self, t: Target, options: Obj, query: dict[str, str]) -> Obj:
        """Delete an object; dependents go with it unless orphaned."""
        assert t.name is not None
        current = self.store.get(t.res.key, t.namespace or "", t.name)
        wanted_uid = (options.get("preconditions") or {}).get("uid")
        if wanted_uid and wanted_uid != current["metadata"]["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {wanted_uid}",
            )
        policy = options.get("propagationPolicy") or query.get("propagationPolicy")
        if query.get("dryRun"):
            return current
        if policy == "Orphan":
            self._orphan(current["metadata"]["uid"])
        removed = self.store.delete(t.res.key, t.namespace or "", t.name)
        if t.res.kind == "Namespace":
            self._delete_namespace_contents(t.name)
        if t.res.kind in ("Pod", "Namespace"):
            return removed
        body = details(t.res.key, t.name)
        body["uid"] = current["metadata"]["uid"]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": body,
        }

    def _delete_collection(self, req: Request, t: Target) -> Obj:
        listing = self._list(req, t.res, t.namespace, table=False)
        for item in listing["items"]:
            meta = item["metadata"]
            self.delete(
                Target(t.res, meta.get("namespace"), meta["name"], None), {}, req.query
            )
        return listing

    def _orphan(self, owner_uid: str) -> None:
        for res in resources.RESOURCES:
            if res.group == "metrics.k8s.io":
                continue
            for obj in self.store.list(res.key):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == owner_uid for r in refs):

                    def drop(o: Obj) -> None:
                        o["metadata"]["ownerReferences"] = [
                            r
                            for r in o["metadata"]["ownerReferences"]
                            if r.get("uid") != owner_uid
                        ]

                    meta = obj["metadata"]
                    self.store.mutate(
                        res.key, meta.get("namespace", ""), meta["name"], drop
                    )

    def _delete_namespace_contents(self, namespace: str) -> None:
        for res in resources.RESOURCES:
            if res.namespaced and res.group != "metrics.k8s.io":
                for obj in self.store.list(res.key, namespace):
                    self.store.delete(res.key, namespace, obj["metadata"]["name"])


def _group(name: str) -> Obj:
    version = resources.GROUPS[name]
    gv = {"groupVersion": f"{name}/{version}", "version": version}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [gv],
        "preferredVersion": gv,
    }


def _resolve(group: str, version: str, rest: list[str]) -> Target:
    """Map path segments after the group version onto a resource target."""
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    res = resources.find_resource(group, version, rest[0])
    if res is None or (namespace is not None and not res.namespaced) or len(rest) > 3:
        raise ApiError(
            404, "NotFound", "the server could not find the requested resource"
        )
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in {s.name for s in res.subresources}:
        raise ApiError(
            404, "NotFound", "the server could not find the requested resource"
        )
    return Target(res, namespace, name, sub)
