"""Record core/v1 Events about objects, as controllers and kubelets do."""

from __future__ import annotations

import hashlib
import logging

from sandbox.kube.store import Obj, Store, now_rfc3339

log = logging.getLogger(__name__)


class EventRecorder:
    """Write Events to the store, counting repeats of the same one."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(
        self,
        obj: Obj,
        reason: str,
        message: str,
        *,
        component: str,
        warning: bool = False,
    ) -> None:
        """Record that ``reason`` happened to ``obj``; repeats bump ``count``."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        seed = f"{meta.get('uid')}/{reason}/{message}"
        name = f"{meta['name']}.{hashlib.sha256(seed.encode()).hexdigest()[:16]}"
        stamp = now_rfc3339()

        def repeat(event: Obj) -> None:
            event["count"] = event.get("count", 1) + 1
            event["lastTimestamp"] = stamp

        with self.store.lock:
            if self.store.mutate("events", namespace, name, repeat) is not None:
                return
            self.store.create(
                "events",
                {
                    "kind": "Event",
                    "apiVersion": "v1",
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": {
                        "kind": obj.get("kind"),
                        "namespace": meta.get("namespace"),
                        "name": meta["name"],
                        "uid": meta.get("uid"),
                        "apiVersion": obj.get("apiVersion"),
                        "resourceVersion": meta.get("resourceVersion"),
                    },
                    "reason": reason,
                    "message": message,
                    "source": {"component": component},
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                    "type": "Warning" if warning else "Normal",
                    "eventTime": None,
                    "reportingComponent": component,
                    "reportingInstance": "",
                },
            )
        log.debug("Recorded event %s on %s: %s", reason, meta["name"], message)
