"""The node: runs pods through their lifecycle, keeps their logs and usage."""

from __future__ import annotations

import hashlib
import logging
import shlex
import threading
import time
from dataclasses import dataclass, field

from sandbox.kube.events import EventRecorder
from sandbox.kube.store import Obj, Store, now_rfc3339

log = logging.getLogger(__name__)

NODE_NAME = "sandbox-node-1"
DEFAULT_MEMORY_BYTES = 300 * 1024 * 1024
JOB_MEMORY_BYTES = 48 * 1024 * 1024
COMPONENT = "kubelet"


@dataclass
class PodRecord:
    """What the node remembers about a pod between ticks."""

    started: float
    logs: dict[str, list[str]] = field(default_factory=dict)
    previous: dict[str, list[str]] = field(default_factory=dict)
    next_restart: float = 0.0
    crashing: bool = False


def image_crashloops(image: str) -> bool:
    """Tell whether an image's tag marks it as never starting (``-crashloop``)."""
    return image.rpartition(":")[2].endswith("-crashloop")


def _stamp(line: str) -> str:
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}.000000000Z {line}"


def _owner(obj: Obj, kind: str) -> Obj | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == kind and ref.get("controller"):
            return dict(ref)
    return None


def _exit_code(container: Obj) -> int:
    if image_crashloops(container.get("image", "")):
        return 1
    for env in container.get("env") or []:
        if env.get("name") == "SIMULATED_EXIT_CODE":
            try:
                return int(env.get("value") or 0)
            except ValueError:
                return 1
    return 0


def _job_log(container: Obj, code: int) -> list[str]:
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    lines = [f"$ {shlex.join(argv) if argv else container.get('image', '')}"]
    for env in container.get("env") or []:
        if env.get("name") == "SIMULATED_OUTPUT" and env.get("value"):
            lines += str(env["value"]).split("\n")
    lines.append(f"exit code {code}")
    return lines


class Kubelet:
    """Advance pods on the single simulated node and answer logs and metrics."""

    def __init__(
        self, store: Store, recorder: EventRecorder, ready_delay_seconds: float
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.ready_delay = ready_delay_seconds
        self._pods: dict[str, PodRecord] = {}
        self._lock = threading.Lock()
        self.crashing_deployments: set[tuple[str, str]] = set()
        self.memory_bytes: dict[tuple[str, str], int] = {}

    def deployment_of(self, pod: Obj) -> str | None:
        """Return the name of the Deployment that owns a pod, if any."""
        rs_ref = _owner(pod, "ReplicaSet")
        if rs_ref is None:
            return None
        rs = self.store.find(
            "replicasets.apps", pod["metadata"]["namespace"], rs_ref["name"]
        )
        deploy_ref = _owner(rs, "Deployment") if rs else None
        return deploy_ref["name"] if deploy_ref else None

    def tick(self) -> None:
        """Move every pod one step along its lifecycle."""
        now = time.monotonic()
        live = set()
        for pod in self.store.list("pods"):
            uid = pod["metadata"]["uid"]
            live.add(uid)
            with self._lock:
                record = self._pods.get(uid)
                if record is None:
                    # A pod restored from a snapshot started long ago.
                    restored = (
                        pod.get("status", {}).get("phase", "Pending") != "Pending"
                    )
                    record = PodRecord(started=now - (3600 if restored else 0))
                    self._pods[uid] = record
            self._advance(pod, record, now)
        with self._lock:
            for uid in set(self._pods) - live:
                del self._pods[uid]

    def _wants_crash(self, pod: Obj) -> bool:
        if any(image_crashloops(c.get("image", "")) for c in pod["spec"]["containers"]):
            return True
        deploy = self.deployment_of(pod)
        return (pod["metadata"]["namespace"], deploy or "") in self.crashing_deployments

    def _advance(self, pod: Obj, record: PodRecord, now: float) -> None:
        status = pod.get("status", {})
        phase = status.get("phase", "Pending")
        if phase in ("Succeeded", "Failed"):
            return
        elapsed = now - record.started
        is_job = _owner(pod, "Job") is not None
        if "nodeName" not in pod["spec"]:
            self._schedule(pod)
            return
        if elapsed < self.ready_delay * 0.3:
            return
        if is_job:
            if elapsed >= self.ready_delay:
                self._finish(pod, record)
            elif phase == "Pending":
                self._set_containers(pod, record, running=True, ready=True)
            return
        crash = self._wants_crash(pod)
        if crash and (not record.crashing or now >= record.next_restart):
            self._crash(pod, record, now)
        elif not crash and record.crashing:
            record.crashing = False
            record.started = now - self.ready_delay * 0.3
            self._set_containers(pod, record, running=True, ready=False)
        elif not crash:
            ready = elapsed >= self.ready_delay
            was_ready = any(
                cs.get("ready") for cs in status.get("containerStatuses", [])
            )
            if phase == "Pending" or ready != was_ready:
                self._set_containers(pod, record, running=True, ready=ready)

    def _schedule(self, pod: Obj) -> None:
        ip = int(hashlib.sha256(pod["metadata"]["uid"].encode()).hexdigest()[:4], 16)
        stamp = now_rfc3339()

        def bind(p: Obj) -> None:
            p["spec"]["nodeName"] = NODE_NAME
            st = p.setdefault("status", {})
            st.update(
                phase="Pending",
                hostIP="10.0.0.10",
                podIP=f"10.244.{ip // 256}.{ip % 256}",
                startTime=stamp,
                qosClass=st.get("qosClass", "Burstable"),
            )
            st["podIPs"] = [{"ip": st["podIP"]}]
            st["conditions"] = [_cond("PodScheduled", True, stamp)]

        meta = pod["metadata"]
        self.store.mutate("pods", meta["namespace"], meta["name"], bind)
        self.recorder.record(
            pod,
            "Scheduled",
            f"Successfully assigned {meta['namespace']}/{meta['name']} to {NODE_NAME}",
            component="default-scheduler",
        )

    def _set_containers(
        self, pod: Obj, record: PodRecord, *, running: bool, ready: bool
    ) -> None:
        stamp = now_rfc3339()
        meta = pod["metadata"]
        first_start = pod.get("status", {}).get("phase") == "Pending"
        restarts = {
            cs["name"]: cs.get("restartCount", 0)
            for cs in pod.get("status", {}).get("containerStatuses", [])
        }

        def update(p: Obj) -> None:
            st = p["status"]
            st["phase"] = "Running"
            st["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": f"{c['image']}@sha256:0",
                    "containerID": f"containerd://{meta['uid'][:12]}{i}",
                    "ready": ready,
                    "started": running,
                    "restartCount": restarts.get(c["name"], 0),
                    "state": {"running": {"startedAt": stamp}},
                    "lastState": {},
                }
                for i, c in enumerate(p["spec"]["containers"])
            ]
            st["conditions"] = _pod_conditions(st.get("conditions", []), ready, stamp)

        self.store.mutate("pods", meta["namespace"], meta["name"], update)
        if first_start:
            for c in pod["spec"]["containers"]:
                record.logs[c["name"]] = self._startup_log(pod, c)
                for reason, msg in (
                    (
                        "Pulled",
                        f'Container image "{c["image"]}" already present on machine',
                    ),
                    ("Created", f"Created container: {c['name']}"),
                    ("Started", f"Started container {c['name']}"),
                ):
                    self.recorder.record(pod, reason, msg, component=COMPONENT)

    def _startup_log(self, pod: Obj, container: Obj) -> list[str]:
        if _owner(pod, "Job") is not None:
            return [
                _stamp(line) for line in _job_log(container, _exit_code(container))[:-1]
            ]
        return [
            _stamp(f"starting {container['image']} as {pod['metadata']['name']}"),
            _stamp("  - Local:        http://localhost:3000"),
            _stamp(" ✓ Ready in 412ms"),
        ]

    def _crash(self, pod: Obj, record: PodRecord, now: float) -> None:
        stamp = now_rfc3339()
        meta = pod["metadata"]
        for c in pod["spec"]["containers"]:
            if record.logs.get(c["name"]):
                record.previous[c["name"]] = record.logs[c["name"]]
            record.logs[c["name"]] = [
                _stamp(f"starting {c['image']} as {meta['name']}"),
                _stamp("Error: startup failed: could not initialise the server"),
                _stamp("    at main (/app/server.js:17:11)"),
            ]
        first = not record.crashing
        record.crashing = True
        record.next_restart = now + self.ready_delay

        def update(p: Obj) -> None:
            st = p["status"]
            st["phase"] = "Running"
            old = {cs["name"]: cs for cs in st.get("containerStatuses", [])}
            st["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": f"{c['image']}@sha256:0",
                    "containerID": f"containerd://{meta['uid'][:12]}{i}",
                    "ready": False,
                    "started": False,
                    "restartCount": old.get(c["name"], {}).get("restartCount", -1) + 1,
                    "state": {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off restarting failed container="
                            f"{c['name']} pod={meta['name']}",
                        }
                    },
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "startedAt": stamp,
                            "finishedAt": stamp,
                        }
                    },
                }
                for i, c in enumerate(p["spec"]["containers"])
            ]
            st["conditions"] = _pod_conditions(st.get("conditions", []), False, stamp)

        self.store.mutate("pods", meta["namespace"], meta["name"], update)
        if first:
            log.debug("Pod %s/%s is crash-looping", meta["namespace"], meta["name"])
        for c in pod["spec"]["containers"]:
            self.recorder.record(
                pod,
                "BackOff",
                f"Back-off restarting failed container {c['name']} in pod "
                f"{meta['name']}",
                component=COMPONENT,
                warning=True,
            )

    def _finish(self, pod: Obj, record: PodRecord) -> None:
        stamp = now_rfc3339()
        meta = pod["metadata"]
        codes = {c["name"]: _exit_code(c) for c in pod["spec"]["containers"]}
        for c in pod["spec"]["containers"]:
            record.logs[c["name"]] = [_stamp(x) for x in _job_log(c, codes[c["name"]])]

        def update(p: Obj) -> None:
            st = p["status"]
            st["phase"] = "Failed" if any(codes.values()) else "Succeeded"
            st["containerStatuses"] = [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": f"{c['image']}@sha256:0",
                    "containerID": f"containerd://{meta['uid'][:12]}{i}",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": codes[c["name"]],
                            "reason": "Error" if codes[c["name"]] else "Completed",
                            "startedAt": st.get("startTime", stamp),
                            "finishedAt": stamp,
                        }
                    },
                    "lastState": {},
                }
                for i, c in enumerate(p["spec"]["containers"])
            ]
            st["conditions"] = _pod_conditions(
                st.get("conditions", []), False, stamp, "PodCompleted"
            )

        self.store.mutate("pods", meta["namespace"], meta["name"], update)

    def pod_log(
        self, namespace: str, name: str, container: str, previous: bool
    ) -> list[str]:
        """Return a container's log lines, each prefixed with its RFC 3339 time."""
        pod = self.store.get("pods", namespace, name)
        with self._lock:
            record = self._pods.get(pod["metadata"]["uid"])
            if record is None:
                return []
            source = record.previous if previous else record.logs
            return list(source.get(container, []))

    def _usage(self, pod: Obj, container: Obj) -> tuple[str, str]:
        meta = pod["metadata"]
        seed = int(
            hashlib.sha256(f"{meta['uid']}{container['name']}".encode()).hexdigest()[
                :6
            ],
            16,
        )
        if _owner(pod, "Job") is not None:
            return f"{5 + seed % 20}m", f"{JOB_MEMORY_BYTES // 1024}Ki"
        deploy = self.deployment_of(pod)
        memory = self.memory_bytes.get((meta["namespace"], deploy or ""))
        if memory is None:
            memory = DEFAULT_MEMORY_BYTES + (seed % 40 - 20) * 1024 * 1024
        return f"{40 + seed % 120}m", f"{memory // 1024}Ki"

    def pod_metrics(self, namespace: str | None) -> list[Obj]:
        """Return ``PodMetrics`` for running pods, optionally in one namespace."""
        items = []
        for pod in self.store.list("pods", namespace):
            if pod.get("status", {}).get("phase") != "Running":
                continue
            meta = pod["metadata"]
            containers = [
                {
                    "name": c["name"],
                    "usage": dict(
                        zip(("cpu", "memory"), self._usage(pod, c), strict=True)
                    ),
                }
                for c in pod["spec"]["containers"]
            ]
            items.append(
                {
                    "metadata": {
                        "name": meta["name"],
                        "namespace": meta["namespace"],
                        "creationTimestamp": now_rfc3339(),
                        "labels": meta.get("labels", {}),
                    },
                    "timestamp": now_rfc3339(),
                    "window": "30s",
                    "containers": containers,
                }
            )
        return items

    def node_metrics(self) -> list[Obj]:
        """Return ``NodeMetrics`` summing the usage of every running pod."""
        cpu = mem = 0
        for item in self.pod_metrics(None):
            for c in item["containers"]:
                cpu += int(c["usage"]["cpu"].rstrip("m"))
                mem += int(c["usage"]["memory"].rstrip("Ki"))
        return [
            {
                "metadata": {
                    "name": NODE_NAME,
                    "creationTimestamp": now_rfc3339(),
                    "labels": {},
                },
                "timestamp": now_rfc3339(),
                "window": "30s",
                "usage": {"cpu": f"{cpu + 250}m", "memory": f"{mem + 900 * 1024}Ki"},
            }
        ]


def _cond(kind: str, ok: bool, stamp: str, reason: str | None = None) -> Obj:
    cond: Obj = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "lastTransitionTime": stamp,
    }
    if reason and not ok:
        cond["reason"] = reason
    return cond


def _pod_conditions(
    old: list[Obj], ready: bool, stamp: str, reason: str | None = None
) -> list[Obj]:
    before = {c["type"]: c for c in old}
    wanted = [
        ("PodReadyToStartContainers", True),
        ("Initialized", True),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodScheduled", True),
    ]
    result = []
    for kind, ok in wanted:
        prev = before.get(kind)
        cond = _cond(kind, ok, stamp, reason or "ContainersNotReady")
        if prev and prev.get("status") == cond["status"]:
            cond["lastTransitionTime"] = prev["lastTransitionTime"]
        result.append(cond)
    return result
