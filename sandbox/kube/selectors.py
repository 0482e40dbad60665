"""Label and field selectors as the API server parses them from query strings."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sandbox.kube.store import ApiError

Matcher = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ_RE = re.compile(r"^\s*([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*$")


def _requirements(text: str) -> list[str]:
    """Split a selector on the commas that are not inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


Requirement = tuple[str, str, frozenset[str]]


def _parse_requirement(req: str) -> Requirement:
    if m := _SET_RE.match(req):
        values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
        return m.group(1), m.group(2), values
    if m := _EQ_RE.match(req):
        op = "!=" if m.group(2) == "!=" else "="
        return m.group(1), op, frozenset({m.group(3)})
    if m := _EXISTS_RE.match(req):
        return m.group(2), "!" if m.group(1) else "exists", frozenset()
    raise ApiError(400, "BadRequest", f"unable to parse requirement: {req.strip()!r}")


def _satisfies(labels: dict[str, str], req: Requirement) -> bool:
    key, op, values = req
    if op in ("in", "="):
        return labels.get(key) in values
    if op in ("notin", "!="):
        return labels.get(key) not in values
    return (key in labels) == (op == "exists")


def parse_label_selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """Compile a label selector (``a=b,c!=d,e in (f,g),!h``) into a predicate."""
    reqs = [_parse_requirement(r) for r in _requirements(text or "")]
    return lambda labels: all(_satisfies(labels, r) for r in reqs)


def selector_from_match(selector: dict[str, Any] | None) -> str:
    """Render a ``LabelSelector`` object in the query-string syntax."""
    selector = selector or {}
    parts = [f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items())]
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In":
            parts.append(f"{key} in ({','.join(sorted(values))})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def matches_label_selector(selector: dict[str, Any] | None, labels: dict) -> bool:
    """Tell whether labels satisfy a ``LabelSelector`` object."""
    return parse_label_selector(selector_from_match(selector))(labels)


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_field_selector(text: str | None) -> Matcher:
    """Compile a field selector (``metadata.name=x,status.phase!=Running``)."""
    reqs: list[tuple[str, bool, str]] = []
    for req in _requirements(text or ""):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", req)
        if m is None:
            raise ApiError(400, "BadRequest", f"invalid field selector: {req!r}")
        reqs.append((m.group(1), m.group(2) != "!=", m.group(3)))
    return lambda obj: all((_field(obj, p) == v) == eq for p, eq, v in reqs)


def object_matcher(label_selector: str | None, field_selector: str | None) -> Matcher:
    """Combine a label and a field selector into one object predicate."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector)
    return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)
