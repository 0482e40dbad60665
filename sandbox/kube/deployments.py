"""The Deployment controller: revisions, rolling updates, status and conditions."""

from __future__ import annotations

import copy
import logging
import math
import time

from sandbox.kube.events import EventRecorder
from sandbox.kube.objects import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    strip_hash,
    template_hash,
)
from sandbox.kube.store import Obj, Store, now_rfc3339, parse_rfc3339
from sandbox.kube.workloads import owned_by, owner_ref

log = logging.getLogger(__name__)

COMPONENT = "deployment-controller"
HISTORY_ANNOTATION = "deployment.kubernetes.io/revision-history"
# Deployment annotations that are not copied onto its ReplicaSets.
SKIPPED_ANNOTATIONS = frozenset(
    {
        REVISION_ANNOTATION,
        HISTORY_ANNOTATION,
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)


def revision(obj: Obj) -> int:
    """Return an object's ``deployment.kubernetes.io/revision`` as an int."""
    annotations = obj["metadata"].get("annotations") or {}
    try:
        return int(annotations.get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def resolve_percent(value: int | str | None, total: int, *, round_up: bool) -> int:
    """Turn ``maxSurge``/``maxUnavailable`` (int or ``"25%"``) into a count."""
    if value is None:
        value = "25%"
    if isinstance(value, int):
        return value
    fraction = int(value.rstrip("%")) * total / 100
    return math.ceil(fraction) if round_up else math.floor(fraction)


def surge_and_unavailable(deploy: Obj) -> tuple[int, int]:
    """Return a deployment's resolved (maxSurge, maxUnavailable)."""
    spec = deploy["spec"]
    replicas = spec.get("replicas", 1)
    if spec.get("strategy", {}).get("type") == "Recreate":
        return 0, replicas
    rolling = spec.get("strategy", {}).get("rollingUpdate") or {}
    surge = resolve_percent(rolling.get("maxSurge"), replicas, round_up=True)
    unavailable = resolve_percent(
        rolling.get("maxUnavailable"), replicas, round_up=False
    )
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas)


def _replicas(rs: Obj) -> int:
    return int(rs["spec"].get("replicas", 0))


def _status(rs: Obj, key: str) -> int:
    return int((rs.get("status") or {}).get(key, 0))


def set_condition(
    status: Obj, kind: str, ok: bool, reason: str, message: str, *, touch: bool = False
) -> None:
    """Set a condition; keep it unless its status or reason changed or ``touch``."""
    stamp = now_rfc3339()
    conditions = status.setdefault("conditions", [])
    current = next((c for c in conditions if c["type"] == kind), None)
    value = "True" if ok else "False"
    if (
        current
        and current["status"] == value
        and current["reason"] == reason
        and not touch
    ):
        return
    cond = {
        "type": kind,
        "status": value,
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
        "reason": reason,
        "message": message,
    }
    if current:
        if current["status"] == value:
            cond["lastTransitionTime"] = current["lastTransitionTime"]
        conditions[conditions.index(current)] = cond
    else:
        conditions.append(cond)


class DeploymentController:
    """Reconcile Deployments into ReplicaSets the way kube-controller-manager does."""

    def __init__(self, store: Store, recorder: EventRecorder) -> None:
        self.store = store
        self.recorder = recorder
        # When each Progressing condition was last updated, closer than the
        # condition's whole-second timestamp: uid -> (lastUpdateTime, epoch).
        self._progress_at: dict[str, tuple[str, float]] = {}

    def tick(self) -> None:
        """Reconcile every Deployment once."""
        all_rs = self.store.list("replicasets.apps")
        for deploy in self.store.list("deployments.apps"):
            uid = deploy["metadata"]["uid"]
            self._sync(deploy, [rs for rs in all_rs if owned_by(rs, uid)])

    def _sync(self, deploy: Obj, rss: list[Obj]) -> None:
        spec = deploy["spec"]
        status = copy.deepcopy(deploy.get("status") or {})
        wanted = strip_hash(spec["template"])
        new_rs = next(
            (rs for rs in rss if strip_hash(rs["spec"]["template"]) == wanted), None
        )
        old = [rs for rs in rss if rs is not new_rs]
        if spec.get("paused"):
            set_condition(
                status, "Progressing", False, "DeploymentPaused", "Deployment is paused"
            )
            status["conditions"][-1]["status"] = "Unknown"
            self._write_status(deploy, rss, new_rs, status)
            return
        if any(
            c.get("reason") == "DeploymentPaused" for c in status.get("conditions", [])
        ):
            set_condition(
                status,
                "Progressing",
                True,
                "DeploymentResumed",
                "Deployment is resumed",
            )
            status["conditions"][-1]["status"] = "Unknown"
        top = max((revision(rs) for rs in rss), default=0)
        if new_rs is None:
            new_rs = self._create_rs(deploy, top + 1)
            rss.append(new_rs)
            set_condition(
                status,
                "Progressing",
                True,
                "NewReplicaSetCreated",
                f'Created new replica set "{new_rs["metadata"]["name"]}"',
            )
            self._mark_progress(deploy, status)
        elif revision(new_rs) < top or revision(deploy) != revision(new_rs):
            new_rs = self._adopt_revision(deploy, new_rs, top)
        if revision(deploy) != revision(new_rs):
            self._annotate(deploy, revision(new_rs))
        if spec.get("strategy", {}).get("type") == "Recreate":
            self._recreate(deploy, new_rs, old)
        else:
            self._roll(deploy, new_rs, old)
        self._clean_history(deploy, old)
        self._write_status(deploy, rss, new_rs, status)

    def _create_rs(self, deploy: Obj, rev: int) -> Obj:
        meta = deploy["metadata"]
        template = copy.deepcopy(deploy["spec"]["template"])
        hash_ = template_hash(template)
        template["metadata"].setdefault("labels", {})[HASH_LABEL] = hash_
        selector = copy.deepcopy(deploy["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = hash_
        annotations = {
            k: v
            for k, v in (meta.get("annotations") or {}).items()
            if k not in SKIPPED_ANNOTATIONS
        }
        annotations[REVISION_ANNOTATION] = str(rev)
        annotations["deployment.kubernetes.io/desired-replicas"] = str(
            deploy["spec"]["replicas"]
        )
        annotations["deployment.kubernetes.io/max-replicas"] = str(
            deploy["spec"]["replicas"] + surge_and_unavailable(deploy)[0]
        )
        rs = {
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "metadata": {
                "name": f"{meta['name']}-{hash_}",
                "namespace": meta["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": annotations,
                "ownerReferences": [owner_ref(deploy)],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": deploy["spec"].get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
            "status": {"replicas": 0},
        }
        created = self.store.create("replicasets.apps", rs)
        log.debug(
            "Created ReplicaSet %s at revision %s", created["metadata"]["name"], rev
        )
        return created

    def _adopt_revision(self, deploy: Obj, rs: Obj, top: int) -> Obj:
        """Give a reused (rolled-back-to) ReplicaSet the next revision number."""
        old_rev = revision(rs)
        new_rev = top + 1 if old_rev < top else old_rev
        skip = SKIPPED_ANNOTATIONS
        copied = {
            k: v
            for k, v in (deploy["metadata"].get("annotations") or {}).items()
            if k not in skip
        }

        def bump(obj: Obj) -> None:
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations.update(copied)
            if new_rev != old_rev:
                history = [
                    h for h in annotations.get(HISTORY_ANNOTATION, "").split(",") if h
                ]
                annotations[HISTORY_ANNOTATION] = ",".join([*history, str(old_rev)])
            annotations[REVISION_ANNOTATION] = str(new_rev)

        meta = rs["metadata"]
        return (
            self.store.mutate("replicasets.apps", meta["namespace"], meta["name"], bump)
            or rs
        )

    def _annotate(self, deploy: Obj, rev: int) -> None:
        def write(obj: Obj) -> None:
            obj["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = str(
                rev
            )

        meta = deploy["metadata"]
        updated = self.store.mutate(
            "deployments.apps", meta["namespace"], meta["name"], write
        )
        if updated:
            deploy["metadata"] = updated["metadata"]

    def _scale(self, deploy: Obj, rs: Obj, replicas: int) -> None:
        before = _replicas(rs)
        if before == replicas:
            return

        def write(obj: Obj) -> None:
            obj["spec"]["replicas"] = replicas
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations["deployment.kubernetes.io/desired-replicas"] = str(
                deploy["spec"]["replicas"]
            )

        meta = rs["metadata"]
        updated = self.store.mutate(
            "replicasets.apps", meta["namespace"], meta["name"], write
        )
        if updated:
            rs.update(updated)
        direction = "up" if replicas > before else "down"
        self.recorder.record(
            deploy,
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {meta['name']} "
            f"from {before} to {replicas}",
            component=COMPONENT,
        )

    def _recreate(self, deploy: Obj, new_rs: Obj, old: list[Obj]) -> None:
        for rs in old:
            self._scale(deploy, rs, 0)
        if all(_status(rs, "replicas") == 0 for rs in old):
            self._scale(deploy, new_rs, deploy["spec"]["replicas"])

    def _roll(self, deploy: Obj, new_rs: Obj, old: list[Obj]) -> None:
        replicas = deploy["spec"]["replicas"]
        surge, unavailable = surge_and_unavailable(deploy)
        # Scale up the new ReplicaSet as far as maxSurge allows.
        if _replicas(new_rs) > replicas:
            self._scale(deploy, new_rs, replicas)
        elif _replicas(new_rs) < replicas:
            total = _replicas(new_rs) + sum(_replicas(rs) for rs in old)
            room = replicas + surge - total
            if room > 0:
                self._scale(deploy, new_rs, min(_replicas(new_rs) + room, replicas))
        # Scale down old ReplicaSets as far as maxUnavailable allows, unhealthy first.
        active_old = sorted(
            (rs for rs in old if _replicas(rs) > 0),
            key=lambda rs: rs["metadata"]["creationTimestamp"],
        )
        if not active_old:
            return
        min_available = replicas - unavailable
        all_pods = _replicas(new_rs) + sum(_replicas(rs) for rs in active_old)
        new_unavailable = _replicas(new_rs) - _status(new_rs, "availableReplicas")
        budget = all_pods - min_available - new_unavailable
        if budget <= 0:
            return
        for rs in active_old:
            unhealthy = _replicas(rs) - _status(rs, "availableReplicas")
            if budget <= 0 or unhealthy <= 0:
                continue
            cut = min(budget, unhealthy)
            self._scale(deploy, rs, _replicas(rs) - cut)
            budget -= cut
        available = _status(new_rs, "availableReplicas") + sum(
            min(_status(rs, "availableReplicas"), _replicas(rs)) for rs in active_old
        )
        remaining = available - min_available
        for rs in active_old:
            if remaining <= 0:
                break
            cut = min(remaining, _replicas(rs))
            if cut:
                self._scale(deploy, rs, _replicas(rs) - cut)
                remaining -= cut

    def _clean_history(self, deploy: Obj, old: list[Obj]) -> None:
        limit = deploy["spec"].get("revisionHistoryLimit", 10)
        idle = [rs for rs in old if _replicas(rs) == 0 and _status(rs, "replicas") == 0]
        idle.sort(key=revision)
        for rs in idle[: max(len(idle) - limit, 0)]:
            meta = rs["metadata"]
            self.store.delete("replicasets.apps", meta["namespace"], meta["name"])
            log.debug(
                "Deleted ReplicaSet %s beyond the revision history limit", meta["name"]
            )

    def _write_status(
        self, deploy: Obj, rss: list[Obj], new_rs: Obj | None, status: Obj
    ) -> None:
        meta, spec = deploy["metadata"], deploy["spec"]
        fresh = {
            rs["metadata"]["uid"]: rs
            for rs in self.store.list("replicasets.apps", meta["namespace"])
        }
        rss = [
            fresh[rs["metadata"]["uid"]] for rs in rss if rs["metadata"]["uid"] in fresh
        ]
        new = fresh.get(new_rs["metadata"]["uid"]) if new_rs else None
        before = deploy.get("status") or {}
        available = sum(_status(rs, "availableReplicas") for rs in rss)
        counts = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": sum(_status(rs, "replicas") for rs in rss),
            "updatedReplicas": _status(new, "replicas") if new else 0,
            "readyReplicas": sum(_status(rs, "readyReplicas") for rs in rss),
            "availableReplicas": available,
            "unavailableReplicas": max(sum(_replicas(rs) for rs in rss) - available, 0),
        }
        for key, value in counts.items():
            if value:
                status[key] = value
            else:
                status.pop(key, None)
        _, max_unavailable = surge_and_unavailable(deploy)
        if available >= spec["replicas"] - max_unavailable:
            set_condition(
                status,
                "Available",
                True,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        else:
            set_condition(
                status,
                "Available",
                False,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        if new is not None and not spec.get("paused"):
            self._progress(deploy, status, before, new, rss)
        status["conditions"].sort(key=lambda c: c["type"] != "Available")
        if status != before:

            def write(obj: Obj) -> None:
                obj["status"] = status

            self.store.mutate(
                "deployments.apps", meta["namespace"], meta["name"], write
            )

    def _mark_progress(self, deploy: Obj, status: Obj) -> None:
        cond = next(c for c in status["conditions"] if c["type"] == "Progressing")
        self._progress_at[deploy["metadata"]["uid"]] = (
            cond["lastUpdateTime"],
            time.time(),
        )

    def _last_progress(self, deploy: Obj, condition: Obj) -> float:
        uid, stamp = deploy["metadata"]["uid"], condition["lastUpdateTime"]
        seen = self._progress_at.get(uid)
        if seen is None or seen[0] != stamp:
            epoch = parse_rfc3339(stamp).timestamp() + 0.999
            seen = (stamp, min(time.time(), epoch))
            self._progress_at[uid] = seen
        return seen[1]

    def _progress(
        self, deploy: Obj, status: Obj, before: Obj, new: Obj, rss: list[Obj]
    ) -> None:
        replicas = deploy["spec"]["replicas"]
        name = new["metadata"]["name"]
        old_pods = sum(_status(rs, "replicas") for rs in rss if rs is not new)
        complete = (
            status.get("updatedReplicas", 0) == replicas
            and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas
        )
        progressed = (
            status.get("updatedReplicas", 0) > before.get("updatedReplicas", 0)
            or old_pods < before.get("replicas", 0) - before.get("updatedReplicas", 0)
            or status.get("readyReplicas", 0) > before.get("readyReplicas", 0)
            or status.get("availableReplicas", 0) > before.get("availableReplicas", 0)
        )
        current = next(
            (c for c in status.get("conditions", []) if c["type"] == "Progressing"),
            None,
        )
        if complete:
            set_condition(
                status,
                "Progressing",
                True,
                "NewReplicaSetAvailable",
                f'ReplicaSet "{name}" has successfully progressed.',
            )
        elif progressed:
            set_condition(
                status,
                "Progressing",
                True,
                "ReplicaSetUpdated",
                f'ReplicaSet "{name}" is progressing.',
                touch=True,
            )
            self._mark_progress(deploy, status)
        elif current is not None and current["reason"] not in (
            "NewReplicaSetAvailable",
            "ProgressDeadlineExceeded",
        ):
            deadline = deploy["spec"].get("progressDeadlineSeconds", 600)
            if time.time() - self._last_progress(deploy, current) > deadline:
                set_condition(
                    status,
                    "Progressing",
                    False,
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{name}" has timed out progressing.',
                )
                self.recorder.record(
                    deploy,
                    "ProgressDeadlineExceeded",
                    f'Deployment "{deploy["metadata"]["name"]}" has timed out '
                    "progressing.",
                    component=COMPONENT,
                    warning=True,
                )
