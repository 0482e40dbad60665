"""Defaulting and validation of incoming objects, as the API server's strategies do."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import re

from sandbox.kube.selectors import matches_label_selector
from sandbox.kube.store import ApiError, Obj, details

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def invalid(
    resource: str, kind: str, name: str, causes: list[tuple[str, str]]
) -> ApiError:
    """Build the 422 Invalid error listing each field and what is wrong with it."""
    text = "; ".join(f"{f}: {m}" for f, m in causes)
    body = details(resource, name)
    body["kind"] = kind
    body["causes"] = [
        {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes
    ]
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {text}', body)


def safe_suffix(seed: str, length: int) -> str:
    """Return ``length`` characters of the API server's name-safe alphabet."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_SAFE_ALPHABET[b % len(_SAFE_ALPHABET)] for b in digest[:length])


def template_hash(template: Obj) -> str:
    """Hash a pod template, ignoring its own ``pod-template-hash`` label."""
    return safe_suffix(json.dumps(strip_hash(template), sort_keys=True), 10)


def strip_hash(template: Obj) -> Obj:
    """Return a copy of a pod template without the ``pod-template-hash`` label."""
    clean = copy.deepcopy(template)
    labels = clean.get("metadata", {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return clean


def default_pod_spec(spec: Obj, restart_policy: str = "Always") -> None:
    """Fill a pod spec's defaulted fields so templates compare like a server's."""
    spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        tag = container.get("image", "").rpartition(":")[2]
        pull = "Always" if tag in ("latest", container.get("image")) else "IfNotPresent"
        container.setdefault("imagePullPolicy", pull)
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for port in container.get("ports", []):
            port.setdefault("protocol", "TCP")
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(probe_name)
            if probe:
                for key, value in (
                    ("timeoutSeconds", 1),
                    ("periodSeconds", 10),
                    ("successThreshold", 1),
                    ("failureThreshold", 3),
                ):
                    probe.setdefault(key, value)
                if "httpGet" in probe:
                    probe["httpGet"].setdefault("scheme", "HTTP")


def _check_pod_spec(spec: Obj, path: str, causes: list[tuple[str, str]]) -> None:
    containers = spec.get("containers") or []
    if not containers:
        causes.append((f"{path}.containers", "Required value"))
    for i, container in enumerate(containers):
        if not container.get("name"):
            causes.append((f"{path}.containers[{i}].name", "Required value"))
        if not container.get("image"):
            causes.append((f"{path}.containers[{i}].image", "Required value"))


def _prepare_workload(obj: Obj, kind: str, causes: list[tuple[str, str]]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    template = spec.setdefault("template", {})
    default_pod_spec(template.setdefault("spec", {}))
    template.setdefault("metadata", {}).setdefault("creationTimestamp", None)
    if kind == "Deployment":
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy["type"] = "RollingUpdate"
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
    labels = template["metadata"].get("labels") or {}
    if not spec.get("selector"):
        causes.append(("spec.selector", "Required value"))
    elif not matches_label_selector(spec["selector"], labels):
        causes.append(
            (
                "spec.template.metadata.labels",
                "`selector` does not match template `labels`",
            )
        )
    if not isinstance(spec["replicas"], int) or spec["replicas"] < 0:
        causes.append(("spec.replicas", "must be greater than or equal to 0"))
    _check_pod_spec(template["spec"], "spec.template.spec", causes)


def _prepare_job(obj: Obj, uid: str, causes: list[tuple[str, str]]) -> None:
    spec = obj.setdefault("spec", {})
    for key, value in (
        ("backoffLimit", 6),
        ("completions", 1),
        ("parallelism", 1),
        ("completionMode", "NonIndexed"),
        ("suspend", False),
    ):
        spec.setdefault(key, value)
    template = spec.setdefault("template", {})
    tmeta = template.setdefault("metadata", {})
    name = obj["metadata"]["name"]
    if "selector" not in spec:
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        labels = tmeta.setdefault("labels", {})
        for key in ("batch.kubernetes.io/controller-uid", "controller-uid"):
            labels[key] = uid
        for key in ("batch.kubernetes.io/job-name", "job-name"):
            labels[key] = name
    pod_spec = template.setdefault("spec", {})
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(
            (
                "spec.template.spec.restartPolicy",
                'Unsupported value: must be "OnFailure" or "Never"',
            )
        )
    default_pod_spec(pod_spec, "Never")
    _check_pod_spec(pod_spec, "spec.template.spec", causes)


def _prepare_secret(obj: Obj, causes: list[tuple[str, str]]) -> None:
    obj.setdefault("type", "Opaque")
    data = obj.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError):
            causes.append((f"data[{key}]", "illegal base64 data"))
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data


def prepare(resource: str, kind: str, obj: Obj, uid: str, *, creating: bool) -> Obj:
    """Default and validate an object about to be stored; raise 422 if invalid."""
    meta = obj.setdefault("metadata", {})
    name = meta.get("name", "")
    causes: list[tuple[str, str]] = []
    if not name:
        causes.append(
            ("metadata.name", "Required value: name or generateName is required")
        )
    elif not _NAME_RE.match(name):
        causes.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain'
                " must consist of lower case alphanumeric characters, '-' or '.'",
            )
        )
    if kind in ("Deployment", "ReplicaSet"):
        _prepare_workload(obj, kind, causes)
    elif kind == "Job":
        _prepare_job(obj, uid, causes)
    elif kind == "Secret":
        _prepare_secret(obj, causes)
    elif kind == "Pod":
        default_pod_spec(obj.setdefault("spec", {}))
        _check_pod_spec(obj["spec"], "spec", causes)
        if creating:
            obj["status"] = {"phase": "Pending", "qosClass": "Burstable"}
    elif kind == "Namespace":
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
    if causes:
        raise invalid(resource, kind, name, causes)
    return obj
