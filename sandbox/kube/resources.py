"""The resource types the simulator serves and the discovery documents for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)
READ_VERBS = ("get", "list")
SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.1-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-05-15T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


@dataclass(frozen=True)
class Subresource:
    """Describe a subresource such as ``scale``, ``status`` or ``log``."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


@dataclass(frozen=True)
class ResourceType:
    """Describe one served resource: where it lives and what it answers to."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: tuple[Subresource, ...] = field(default=())

    @property
    def key(self) -> str:
        """Return the store key, ``plural.group`` as error messages name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        """Return ``apiVersion`` as objects of this type carry it."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        """Return the lower-case singular name."""
        return self.kind.lower()


_STATUS = Subresource("status", "", ("get", "patch", "update"))
_SCALE = Subresource("scale", "Scale", ("get", "patch", "update"), "autoscaling", "v1")

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "", "v1", "Namespace", "namespaces", False, ("ns",), (), ALL_VERBS, (_STATUS,)
    ),
    ResourceType("", "v1", "Node", "nodes", False, ("no",)),
    ResourceType(
        "",
        "v1",
        "Pod",
        "pods",
        True,
        ("po",),
        ("all",),
        ALL_VERBS,
        (_STATUS, Subresource("log", "Pod", ("get",))),
    ),
    ResourceType("", "v1", "Secret", "secrets"),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
    ResourceType("", "v1", "Service", "services", True, ("svc",), ("all",)),
    ResourceType("", "v1", "Event", "events", True, ("ev",)),
    ResourceType(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        True,
        ("deploy",),
        ("all",),
        ALL_VERBS,
        (_STATUS, _SCALE),
    ),
    ResourceType(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        True,
        ("rs",),
        ("all",),
        ALL_VERBS,
        (_STATUS, _SCALE),
    ),
    ResourceType(
        "batch", "v1", "Job", "jobs", True, (), ("all",), ALL_VERBS, (_STATUS,)
    ),
    # The runbook's deploy and rollback flows lock a Deployment with a Lease.
    ResourceType("coordination.k8s.io", "v1", "Lease", "leases"),
    ResourceType(
        "metrics.k8s.io", "v1beta1", "PodMetrics", "pods", True, (), (), READ_VERBS
    ),
    ResourceType(
        "metrics.k8s.io", "v1beta1", "NodeMetrics", "nodes", False, (), (), READ_VERBS
    ),
)
GROUPS: dict[str, str] = {
    "apps": "v1",
    "batch": "v1",
    "coordination.k8s.io": "v1",
    "metrics.k8s.io": "v1beta1",
}


def find_resource(group: str, version: str, plural: str) -> ResourceType | None:
    """Return the resource served at ``group/version/plural``, if any."""
    for res in RESOURCES:
        if (res.group, res.version, res.plural) == (group, version, plural):
            return res
    return None


def resource_by_key(key: str) -> ResourceType:
    """Return the served (non-metrics) resource with a store key."""
    for res in RESOURCES:
        if res.key == key:
            return res
    raise KeyError(key)


def _legacy_entry(res: ResourceType) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": res.plural,
        "singularName": res.singular,
        "namespaced": res.namespaced,
        "kind": res.kind,
        "verbs": list(res.verbs),
    }
    if res.short_names:
        entry["shortNames"] = list(res.short_names)
    if res.categories:
        entry["categories"] = list(res.categories)
    entries = [entry]
    for sub in res.subresources:
        item: dict[str, Any] = {
            "name": f"{res.plural}/{sub.name}",
            "singularName": "",
            "namespaced": res.namespaced,
            "kind": sub.kind or res.kind,
            "verbs": list(sub.verbs),
        }
        if sub.group:
            item.update(group=sub.group, version=sub.version)
        entries.append(item)
    return entries


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    """Return the ``APIResourceList`` for one group version, or None."""
    served = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not served:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [e for r in served for e in _legacy_entry(r)],
    }


def api_versions() -> dict[str, Any]:
    """Return the ``APIVersions`` document served at ``/api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:0"}
        ],
    }


def api_group_list() -> dict[str, Any]:
    """Return the ``APIGroupList`` document served at ``/apis``."""
    groups = []
    for name, version in GROUPS.items():
        gv = {"groupVersion": f"{name}/{version}", "version": version}
        groups.append({"name": name, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _aggregated_resource(res: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": res.plural,
        "responseKind": {"group": res.group, "version": res.version, "kind": res.kind},
        "scope": "Namespaced" if res.namespaced else "Cluster",
        "singularResource": res.singular,
        "verbs": list(res.verbs),
    }
    if res.short_names:
        entry["shortNames"] = list(res.short_names)
    if res.categories:
        entry["categories"] = list(res.categories)
    subs = []
    for sub in res.subresources:
        kind = {
            "group": sub.group or res.group,
            "version": sub.version or res.version,
            "kind": sub.kind or res.kind,
        }
        subs.append(
            {"subresource": sub.name, "responseKind": kind, "verbs": [*sub.verbs]}
        )
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated_discovery(legacy: bool) -> dict[str, Any]:
    """Return the ``APIGroupDiscoveryList`` for ``/api`` or for ``/apis``."""
    groups = {"": "v1"} if legacy else GROUPS
    items = []
    for name, version in groups.items():
        served = [r for r in RESOURCES if (r.group, r.version) == (name, version)]
        items.append(
            {
                "metadata": {"name": name, "creationTimestamp": None},
                "versions": [
                    {
                        "version": version,
                        "resources": [_aggregated_resource(r) for r in served],
                        "freshness": "Current",
                    }
                ],
            }
        )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }
