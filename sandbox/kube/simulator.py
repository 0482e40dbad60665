"""``KubeSimulator``: the store, the controllers and the HTTP server together."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.kube.api import Api
from sandbox.kube.deployments import DeploymentController
from sandbox.kube.events import EventRecorder
from sandbox.kube.kubelet import NODE_NAME, Kubelet
from sandbox.kube.resources import resource_by_key
from sandbox.kube.server import ApiHTTPServer, serve
from sandbox.kube.store import Obj, Store
from sandbox.kube.workloads import (
    JobController,
    ReplicaSetController,
    collect_garbage,
    pod_ready,
)

log = logging.getLogger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SNAPSHOT_INTERVAL_SECONDS = 1.0


class KubeSimulator:
    """Run a simulated Kubernetes cluster that real clients and kubectl can use."""

    def __init__(
        self,
        name: str = "primary",
        *,
        ready_delay_seconds: float = 1.0,
        tick_seconds: float = 0.1,
        state_file: Path | None = None,
    ) -> None:
        self.name = name
        self.tick_seconds = tick_seconds
        self.ready_delay_seconds = ready_delay_seconds
        self.state_file = state_file
        self.store = Store()
        if state_file is not None and state_file.exists():
            self.store.load(state_file)
        recorder = EventRecorder(self.store)
        self.kubelet = Kubelet(self.store, recorder, ready_delay_seconds)
        self._controllers = (
            self.kubelet,
            ReplicaSetController(self.store, recorder),
            DeploymentController(self.store, recorder),
            JobController(self.store, recorder, ready_delay_seconds),
        )
        self.api = Api(self.store, self.kubelet)
        self._httpd: ApiHTTPServer | None = None
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self._url: str | None = None
        self._bootstrap()

    def _bootstrap(self) -> None:
        for namespace in SYSTEM_NAMESPACES:
            self.ensure("namespaces", {"metadata": {"name": namespace}})
        node = {
            "metadata": {
                "name": NODE_NAME,
                "labels": {
                    "kubernetes.io/hostname": NODE_NAME,
                    "node-role.kubernetes.io/control-plane": "",
                },
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "kubelet is posting ready status",
                    }
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.33.1",
                    "osImage": "sandbox",
                    "containerRuntimeVersion": "containerd://2.0.0",
                },
            },
        }
        self.ensure("nodes", node)

    def ensure(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        """Create an object through the API unless one of that name exists."""
        res = resource_by_key(resource)
        found = self.store.find(resource, namespace or "", obj["metadata"]["name"])
        if found is not None:
            return found
        return self.api.create(res, namespace, obj, {})

    @property
    def url(self) -> str:
        """Return the base URL the API server listens on."""
        if self._url is None:
            raise RuntimeError(f"The {self.name!r} simulator has not been started.")
        return self._url

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve the API and run the controllers in daemon threads; return the URL."""
        self._httpd, _ = serve(self.api, host, port)
        bound_port = self._httpd.server_address[1]
        self._url = f"http://{host}:{bound_port}"
        self._stop.clear()
        self._loop = threading.Thread(
            target=self._run, name=f"kube-{self.name}", daemon=True
        )
        self._loop.start()
        log.info("Started the %s Kubernetes simulator at %s", self.name, self._url)
        return self._url

    def stop(self) -> None:
        """Stop serving, end watches and controllers, and save the snapshot."""
        self._stop.set()
        self.store.close()
        if self._loop is not None:
            self._loop.join(timeout=5)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self.state_file is not None:
            self.store.save(self.state_file)
        log.info("Stopped the %s Kubernetes simulator", self.name)

    def reconcile(self) -> None:
        """Run every controller once, as one tick of the control loop."""
        with self.store.lock:
            for controller in self._controllers:
                controller.tick()
            collect_garbage(self.store)

    def _run(self) -> None:
        last_save = time.monotonic()
        while not self._stop.wait(self.tick_seconds):
            try:
                self.reconcile()
            except Exception:
                log.exception(
                    "The %s simulator's control loop failed a tick", self.name
                )
            due = time.monotonic() - last_save >= SNAPSHOT_INTERVAL_SECONDS
            if self.state_file is not None and self.store.dirty and due:
                self.store.save(self.state_file)
                last_save = time.monotonic()

    def seed_app(
        self,
        namespace: str = "production",
        name: str = "bpmn-studio",
        image: str = "ghcr.io/bpmn-studio/web:1.42.0",
        replicas: int = 3,
        container: str = "web",
    ) -> Obj:
        """Create the app's namespace and Deployment and wait until it is ready."""
        self._bootstrap()
        self.ensure("namespaces", {"metadata": {"name": namespace}})
        labels = {"app": name}
        self.ensure(
            "deployments.apps",
            _app_deployment(name, labels, image, replicas, container),
            namespace,
        )
        service = {
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "type": "ClusterIP",
                "selector": labels,
                "clusterIP": "10.96.0.42",
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 3000, "protocol": "TCP"}
                ],
            },
        }
        self.ensure("services", service, namespace)
        deadline = time.monotonic() + max(15.0, 30 * self.ready_delay_seconds)
        while time.monotonic() < deadline:
            if self._loop is None:
                self.reconcile()
            deploy = self.store.get("deployments.apps", namespace, name)
            status = deploy.get("status") or {}
            if (
                status.get("availableReplicas", 0)
                == replicas
                == status.get("updatedReplicas", 0)
            ):
                return deploy
            time.sleep(self.tick_seconds)
        raise TimeoutError(
            f"Deployment {namespace}/{name} did not become ready in time."
        )

    def _pods_of(self, namespace: str, name: str) -> list[Obj]:
        return [
            pod
            for pod in self.store.list("pods", namespace)
            if self.kubelet.deployment_of(pod) == name
        ]

    def serving_images(self, namespace: str, name: str) -> list[str]:
        """Return the image of each Ready pod of a Deployment, one entry per pod."""
        return [
            pod["spec"]["containers"][0]["image"]
            for pod in self._pods_of(namespace, name)
            if pod_ready(pod)
        ]

    def set_memory_usage(
        self, namespace: str, name: str, bytes_per_pod: int | None
    ) -> None:
        """Report ``bytes_per_pod`` of memory per pod of a Deployment; None resets."""
        if bytes_per_pod is None:
            self.kubelet.memory_bytes.pop((namespace, name), None)
        else:
            self.kubelet.memory_bytes[(namespace, name)] = bytes_per_pod

    def set_pods_crashing(self, namespace: str, name: str, crashing: bool) -> None:
        """Make every pod of a Deployment crash-loop, or let them recover."""
        key = (namespace, name)
        if crashing:
            self.kubelet.crashing_deployments.add(key)
        else:
            self.kubelet.crashing_deployments.discard(key)
        log.info("Set pods of %s/%s crashing=%s", namespace, name, crashing)


def _app_deployment(
    name: str, labels: dict[str, str], image: str, replicas: int, container: str
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "containers": [
                        {
                            "name": container,
                            "image": image,
                            "ports": [{"name": "http", "containerPort": 3000}],
                            "env": [{"name": "NODE_ENV", "value": "production"}],
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "512Mi"},
                                "limits": {"cpu": "1", "memory": "1Gi"},
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 3000},
                                "initialDelaySeconds": 5,
                                "periodSeconds": 10,
                            },
                        }
                    ]
                },
            },
        },
    }
