"""Write a kubeconfig that points kubectl and the Python client at simulators."""

from __future__ import annotations

from pathlib import Path

import yaml

USER = "sandbox-user"
TOKEN = "sandbox-token"  # noqa: S105 - a placeholder the simulator ignores


def write_kubeconfig(path: Path, clusters: dict[str, str]) -> None:
    """Write one context per ``name -> server URL``; the first is current."""
    if not clusters:
        raise ValueError("A kubeconfig needs at least one cluster.")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {"name": name, "cluster": {"server": url}} for name, url in clusters.items()
        ],
        "users": [{"name": USER, "user": {"token": TOKEN}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": USER}}
            for name in clusters
        ],
        "current-context": next(iter(clusters)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
