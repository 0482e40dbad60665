"""ReplicaSet and Job controllers, plus the garbage collector for owned objects."""

from __future__ import annotations

import copy
import logging
import time
import uuid

from sandbox.kube.events import EventRecorder
from sandbox.kube.objects import safe_suffix
from sandbox.kube.resources import RESOURCES
from sandbox.kube.store import Obj, Store, now_rfc3339

log = logging.getLogger(__name__)


def owner_ref(owner: Obj) -> Obj:
    """Return a controller ``ownerReference`` pointing at ``owner``."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Obj, uid: str) -> bool:
    """Tell whether ``obj`` is controlled by the object with ``uid``."""
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def pod_ready(pod: Obj) -> bool:
    """Tell whether a pod's Ready condition is True."""
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def is_terminal(pod: Obj) -> bool:
    """Tell whether a pod has finished (Succeeded or Failed)."""
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


def create_pod(store: Store, owner: Obj, template: Obj) -> Obj:
    """Create a pod from ``template`` owned by ``owner``, named after it."""
    meta = owner["metadata"]
    name = f"{meta['name']}-{safe_suffix(str(uuid.uuid4()), 5)}"
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": dict(template.get("metadata", {}).get("labels") or {}),
            "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
            "ownerReferences": [owner_ref(owner)],
        },
        "spec": copy.deepcopy(template.get("spec", {})),
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }
    if not pod["metadata"]["annotations"]:
        del pod["metadata"]["annotations"]
    return store.create("pods", pod)


class ReplicaSetController:
    """Keep each ReplicaSet's pod count at ``spec.replicas`` and report status."""

    def __init__(self, store: Store, recorder: EventRecorder) -> None:
        self.store = store
        self.recorder = recorder

    def tick(self) -> None:
        """Reconcile every ReplicaSet once."""
        pods = self.store.list("pods")
        for rs in self.store.list("replicasets.apps"):
            uid = rs["metadata"]["uid"]
            mine = [p for p in pods if owned_by(p, uid) and not is_terminal(p)]
            self._sync(rs, mine)

    def _sync(self, rs: Obj, pods: list[Obj]) -> None:
        meta = rs["metadata"]
        wanted = rs["spec"].get("replicas", 1)
        for _ in range(wanted - len(pods)):
            pod = create_pod(self.store, rs, rs["spec"]["template"])
            pods.append(pod)
            self.recorder.record(
                rs,
                "SuccessfulCreate",
                f"Created pod: {pod['metadata']['name']}",
                component="replicaset-controller",
            )
        if len(pods) > wanted:
            # Delete the least useful pods first: not ready, most restarted, newest.
            pods.sort(
                key=lambda p: (
                    pod_ready(p),
                    -sum(
                        cs.get("restartCount", 0)
                        for cs in p.get("status", {}).get("containerStatuses", [])
                    ),
                    p["metadata"]["creationTimestamp"],
                ),
            )
            for pod in pods[: len(pods) - wanted]:
                self.store.delete("pods", meta["namespace"], pod["metadata"]["name"])
                self.recorder.record(
                    rs,
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    component="replicaset-controller",
                )
            pods = pods[len(pods) - wanted :]
        ready = sum(1 for p in pods if pod_ready(p))
        status = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": meta.get("generation", 1),
        }
        status = {k: v for k, v in status.items() if v or k == "replicas"}
        if rs.get("status") != status:

            def write(obj: Obj) -> None:
                obj["status"] = status

            self.store.mutate(
                "replicasets.apps", meta["namespace"], meta["name"], write
            )


class JobController:
    """Run each Job's pods to completion, honouring ``backoffLimit``."""

    def __init__(
        self, store: Store, recorder: EventRecorder, retry_delay_seconds: float
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.retry_delay = retry_delay_seconds
        self._last_failure: dict[str, float] = {}

    def tick(self) -> None:
        """Reconcile every Job once."""
        pods = self.store.list("pods")
        for job in self.store.list("jobs.batch"):
            uid = job["metadata"]["uid"]
            self._sync(job, [p for p in pods if owned_by(p, uid)])

    def _sync(self, job: Obj, pods: list[Obj]) -> None:
        meta, spec = job["metadata"], job["spec"]
        status = copy.deepcopy(job.get("status") or {})
        conditions = status.setdefault("conditions", [])
        if any(
            c["type"] in ("Complete", "Failed") and c["status"] == "True"
            for c in conditions
        ):
            return
        if spec.get("suspend"):
            return
        stamp = now_rfc3339()
        status.setdefault("startTime", stamp)
        active = [p for p in pods if not is_terminal(p)]
        succeeded = sum(
            1 for p in pods if p.get("status", {}).get("phase") == "Succeeded"
        )
        failed = sum(1 for p in pods if p.get("status", {}).get("phase") == "Failed")
        if failed > status.get("failed", 0):
            self._last_failure[meta["uid"]] = time.monotonic()
        if succeeded >= spec.get("completions", 1):
            reason, message = (
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            conditions += [
                _cond("SuccessCriteriaMet", reason, message, stamp),
                _cond("Complete", reason, message, stamp),
            ]
            status["completionTime"] = stamp
            self.recorder.record(
                job, "Completed", "Job completed", component="job-controller"
            )
        elif failed > spec.get("backoffLimit", 6):
            reason, message = (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
            conditions += [
                _cond("FailureTarget", reason, message, stamp),
                _cond("Failed", reason, message, stamp),
            ]
            for pod in active:
                self.store.delete("pods", meta["namespace"], pod["metadata"]["name"])
            active = []
            self.recorder.record(
                job, reason, message, component="job-controller", warning=True
            )
        elif not active and self._may_retry(meta["uid"], failed):
            pod = create_pod(self.store, job, spec["template"])
            active.append(pod)
            self.recorder.record(
                job,
                "SuccessfulCreate",
                f"Created pod: {pod['metadata']['name']}",
                component="job-controller",
            )
        counts = {
            "active": len(active),
            "succeeded": succeeded,
            "failed": failed,
            "ready": sum(
                1 for p in active if p.get("status", {}).get("phase") == "Running"
            ),
        }
        for key, value in counts.items():
            if value or key == "ready":
                status[key] = value
            else:
                status.pop(key, None)
        status["terminating"] = 0
        status["uncountedTerminatedPods"] = {}
        if not conditions:
            del status["conditions"]
        if status != job.get("status"):

            def write(obj: Obj) -> None:
                obj["status"] = status

            self.store.mutate("jobs.batch", meta["namespace"], meta["name"], write)

    def _may_retry(self, uid: str, failed: int) -> bool:
        if not failed:
            return True
        delay = self.retry_delay * min(2 ** (failed - 1), 8)
        return time.monotonic() - self._last_failure.get(uid, 0.0) >= delay


def _cond(kind: str, reason: str, message: str, stamp: str) -> Obj:
    return {
        "type": kind,
        "status": "True",
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
        "reason": reason,
        "message": message,
    }


def collect_garbage(store: Store) -> None:
    """Delete objects whose controlling owner no longer exists."""
    with store.lock:
        kinds = [r for r in RESOURCES if r.group != "metrics.k8s.io"]
        everything = {r.key: store.list(r.key) for r in kinds}
        uids = {o["metadata"]["uid"] for items in everything.values() for o in items}
        for key, items in everything.items():
            for obj in items:
                refs = obj["metadata"].get("ownerReferences") or []
                if refs and not any(r.get("uid") in uids for r in refs):
                    meta = obj["metadata"]
                    log.debug(
                        "Collecting orphaned %s %s/%s",
                        key,
                        meta.get("namespace"),
                        meta["name"],
                    )
                    store.delete(key, meta.get("namespace", ""), meta["name"])
