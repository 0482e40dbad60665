"""The Kubernetes API simulator, driven by the official client and by kubectl."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from sandbox.kube import KubeSimulator, write_kubeconfig

NS = "production"
APP = "bpmn-studio"
IMAGE = "ghcr.io/bpmn-studio/web:1.42.0"
REVISION = "deployment.kubernetes.io/revision"
READY_DELAY_SECONDS = 0.2
KUBECTL = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def sim() -> Iterator[KubeSimulator]:
    simulator = KubeSimulator(
        "primary", ready_delay_seconds=READY_DELAY_SECONDS, tick_seconds=0.03
    )
    simulator.start()
    simulator.seed_app()
    yield simulator
    simulator.stop()


@pytest.fixture
def kubeconfig(sim: KubeSimulator, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, {"sandbox-primary": sim.url})
    return path


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(
        config_file=str(kubeconfig), context="sandbox-primary"
    )
    yield api_client
    api_client.close()


@pytest.fixture
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


@pytest.fixture
def kubectl(kubeconfig: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    if not Path(KUBECTL).exists():
        pytest.skip("kubectl is not installed")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    return run


def set_image(apps: client.AppsV1Api, image: str) -> None:
    body = {
        "spec": {
            "template": {"spec": {"containers": [{"name": "web", "image": image}]}}
        }
    }
    apps.patch_namespaced_deployment(APP, NS, body)


def plain(model: Any) -> dict[str, Any]:
    """Return a client model as the JSON the server sent (camelCase, no nulls)."""
    data: dict[str, Any] = model.model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    return data


def read_deployment(apps: client.AppsV1Api) -> dict[str, Any]:
    return plain(apps.read_namespaced_deployment(APP, NS))


def list_pods(core: client.CoreV1Api, selector: str = "") -> list[dict[str, Any]]:
    return [
        plain(p) for p in core.list_namespaced_pod(NS, label_selector=selector).items
    ]


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    """Map each True-or-False condition type to its reason."""
    return {c["type"]: c.get("reason", "") for c in obj["status"].get("conditions", [])}


def rolled_out(apps: client.AppsV1Api, image: str) -> bool:
    d = read_deployment(apps)
    s = d["status"]
    return bool(
        d["spec"]["template"]["spec"]["containers"][0]["image"] == image
        and s.get("observedGeneration") == d["metadata"]["generation"]
        and s.get("updatedReplicas")
        == s.get("replicas")
        == s.get("availableReplicas")
        == d["spec"]["replicas"]
    )


def replica_sets(apps: client.AppsV1Api) -> dict[str, dict[str, Any]]:
    items = apps.list_namespaced_replica_set(NS, label_selector=f"app={APP}").items
    return {rs["metadata"]["name"]: rs for rs in map(plain, items)}


def revision(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][REVISION])


class TestSeededApp:
    """The seeded app settles like a fresh deployment on a real cluster."""

    def test_seeded_deployment_is_ready_at_revision_one(
        self, sim: KubeSimulator, apps: client.AppsV1Api
    ) -> None:
        d = read_deployment(apps)
        assert revision(d) == "1"
        assert d["status"]["readyReplicas"] == d["status"]["availableReplicas"] == 3
        assert d["status"]["observedGeneration"] == d["metadata"]["generation"] == 1
        assert conditions(d) == {
            "Available": "MinimumReplicasAvailable",
            "Progressing": "NewReplicaSetAvailable",
        }
        container = d["spec"]["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["memory"] == "1Gi"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert sim.serving_images(NS, APP) == [IMAGE] * 3

    def test_pods_carry_hash_label_owner_and_ready_status(
        self, core: client.CoreV1Api, apps: client.AppsV1Api
    ) -> None:
        (rs,) = replica_sets(apps).values()
        pods = list_pods(core, f"app={APP}")
        assert len(pods) == 3
        for pod in pods:
            hash_label = pod["metadata"]["labels"]["pod-template-hash"]
            assert rs["metadata"]["name"] == f"{APP}-{hash_label}"
            assert pod["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
            assert pod["status"]["phase"] == "Running"
            assert pod["status"]["containerStatuses"][0]["ready"]

    def test_kubectl_get_lists_workloads_across_namespaces(
        self, kubectl: Callable[..., subprocess.CompletedProcess[str]]
    ) -> None:
        out = kubectl("get", "deploy,rs,pods", "-A").stdout
        assert "deployment.apps/bpmn-studio   3/3" in out
        assert out.count("1/1     Running") == 3
        namespaces = kubectl("get", "namespaces", "-o", "name").stdout.split()
        assert {"namespace/default", "namespace/kube-system"} <= set(namespaces)
        assert f"namespace/{NS}" in namespaces


class TestRollouts:
    """Template changes roll out as new revisions; old templates are reused."""

    def test_image_change_creates_revision_two_and_replaces_pods(
        self, sim: KubeSimulator, apps: client.AppsV1Api, core: client.CoreV1Api
    ) -> None:
        set_image(apps, "ghcr.io/bpmn-studio/web:1.43.0")
        wait_for(lambda: rolled_out(apps, "ghcr.io/bpmn-studio/web:1.43.0"), "rollout")
        assert revision(read_deployment(apps)) == "2"
        by_revision = {revision(rs): rs for rs in replica_sets(apps).values()}
        assert by_revision["2"]["spec"]["replicas"] == 3
        assert by_revision["1"]["spec"]["replicas"] == 0
        wait_for(lambda: len(sim.serving_images(NS, APP)) == 3, "three ready pods")
        assert sim.serving_images(NS, APP) == ["ghcr.io/bpmn-studio/web:1.43.0"] * 3
        events = core.list_namespaced_event(
            NS, field_selector=f"involvedObject.name={APP}"
        ).items
        assert any(e.reason == "ScalingReplicaSet" for e in events)

    def test_applying_an_old_template_reuses_its_replicaset_with_next_revision(
        self, apps: client.AppsV1Api
    ) -> None:
        (first,) = replica_sets(apps).values()
        set_image(apps, "ghcr.io/bpmn-studio/web:1.43.0")
        wait_for(lambda: rolled_out(apps, "ghcr.io/bpmn-studio/web:1.43.0"), "rollout")

        # Roll back the way kubectl does: a JSON patch with the old RS template.
        template = first["spec"]["template"]
        del template["metadata"]["labels"]["pod-template-hash"]
        patch = [{"op": "replace", "path": "/spec/template", "value": template}]
        apps.patch_namespaced_deployment(APP, NS, patch)
        wait_for(lambda: rolled_out(apps, IMAGE), "rollback")

        sets = replica_sets(apps)
        assert len(sets) == 2
        reused = sets[first["metadata"]["name"]]
        assert revision(reused) == "3"
        assert reused["spec"]["replicas"] == 3
        assert revision(read_deployment(apps)) == "3"

    def test_kubectl_set_image_rollout_status_history_and_undo(
        self,
        sim: KubeSimulator,
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
    ) -> None:
        deploy = ["-n", NS, "deployment/bpmn-studio"]
        kubectl("set", "image", *deploy, "web=ghcr.io/bpmn-studio/web:1.43.0")
        status = kubectl("rollout", "status", *deploy, "--timeout=30s")
        assert "successfully rolled out" in status.stdout
        assert sim.serving_images(NS, APP) == ["ghcr.io/bpmn-studio/web:1.43.0"] * 3

        kubectl("rollout", "undo", *deploy)
        kubectl("rollout", "status", *deploy, "--timeout=30s")
        assert sim.serving_images(NS, APP) == [IMAGE] * 3
        history = kubectl("rollout", "history", *deploy).stdout
        revisions = [line.split()[0] for line in history.splitlines()[2:] if line]
        assert revisions == ["2", "3"]
        detail = kubectl("rollout", "history", *deploy, "--revision=3").stdout
        assert IMAGE in detail

    def test_crashloop_image_exceeds_progress_deadline_while_old_pods_serve(
        self,
        sim: KubeSimulator,
        apps: client.AppsV1Api,
        core: client.CoreV1Api,
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
    ) -> None:
        deadline = {"spec": {"progressDeadlineSeconds": 2}}
        apps.patch_namespaced_deployment(APP, NS, deadline)
        set_image(apps, "ghcr.io/bpmn-studio/web:1.43.0-crashloop")

        wait_for(
            lambda: (
                conditions(read_deployment(apps)).get("Progressing")
                == "ProgressDeadlineExceeded"
            ),
            "ProgressDeadlineExceeded",
        )
        assert sim.serving_images(NS, APP) == [IMAGE] * 3
        crashing = [
            p
            for p in list_pods(core)
            if p["spec"]["containers"][0]["image"].endswith("-crashloop")
        ]
        assert crashing
        state = crashing[0]["status"]["containerStatuses"][0]
        assert state["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert not state["ready"]
        name = crashing[0]["metadata"]["name"]

        def restarts() -> int:
            pod = plain(core.read_namespaced_pod(name, NS))
            return int(pod["status"]["containerStatuses"][0]["restartCount"])

        wait_for(lambda: restarts() >= 2, "a climbing restart count")
        result = kubectl(
            "rollout", "status", "-n", NS, "deployment/bpmn-studio", check=False
        )
        assert result.returncode != 0
        assert "exceeded its progress deadline" in result.stderr

    def test_revision_history_limit_prunes_idle_replica_sets(
        self, apps: client.AppsV1Api
    ) -> None:
        limit = {"spec": {"revisionHistoryLimit": 1}}
        apps.patch_namespaced_deployment(APP, NS, limit)
        for version in ("1.43.0", "1.44.0", "1.45.0"):
            image = f"ghcr.io/bpmn-studio/web:{version}"
            set_image(apps, image)
            wait_for(partial(rolled_out, apps, image), f"rollout of {image}")
        wait_for(lambda: len(replica_sets(apps)) == 2, "pruned replica sets")
        revisions = sorted(int(revision(rs)) for rs in replica_sets(apps).values())
        assert revisions == [3, 4]


class TestScale:
    """The scale subresource and kubectl scale change the replica count."""

    def test_scale_subresource_reads_and_patches_replicas(
        self, apps: client.AppsV1Api
    ) -> None:
        scale = plain(apps.read_namespaced_deployment_scale(APP, NS))
        assert scale["spec"]["replicas"] == 3
        assert scale["status"]["selector"] == f"app={APP}"
        apps.patch_namespaced_deployment_scale(APP, NS, {"spec": {"replicas": 5}})
        wait_for(
            lambda: read_deployment(apps)["status"].get("readyReplicas") == 5,
            "five ready replicas",
        )
        assert revision(read_deployment(apps)) == "1"

    def test_kubectl_scale_down_removes_pods(
        self,
        sim: KubeSimulator,
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
    ) -> None:
        kubectl("scale", "-n", NS, "deployment/bpmn-studio", "--replicas=1")
        wait_for(lambda: len(sim.serving_images(NS, APP)) == 1, "one ready pod")


def make_job(name: str, image: str = "busybox:1.36", **env: str) -> dict[str, Any]:
    """Return a Job manifest running ``npm run migrate`` once (backoffLimit 1)."""
    container = {
        "name": "main",
        "image": image,
        "command": ["npm", "run", "migrate"],
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    return {
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def create_job(batch: client.BatchV1Api, manifest: dict[str, Any]) -> None:
    job = client.V1Job.from_dict(manifest)
    assert job is not None
    batch.create_namespaced_job(NS, job)


def finished(batch: client.BatchV1Api, name: str) -> dict[str, str]:
    """Return the job's True conditions and their reasons."""
    job = plain(batch.read_namespaced_job(name, NS))
    return {
        c["type"]: c["reason"]
        for c in job["status"].get("conditions", [])
        if c["status"] == "True"
    }


class TestJobs:
    """Jobs run to completion or fail by the image and env rules, with logs."""

    def test_job_completes_and_its_log_shows_command_and_output(
        self, batch: client.BatchV1Api, core: client.CoreV1Api
    ) -> None:
        create_job(batch, make_job("migrate", SIMULATED_OUTPUT="applied 3\nall done"))
        wait_for(lambda: "Complete" in finished(batch, "migrate"), "completion")
        job = plain(batch.read_namespaced_job("migrate", NS))
        assert job["status"]["succeeded"] == 1
        assert job["status"]["completionTime"]
        (pod,) = list_pods(core, "job-name=migrate")
        assert pod["status"]["phase"] == "Succeeded"
        log = core.read_namespaced_pod_log(pod["metadata"]["name"], NS)
        assert log.splitlines() == [
            "$ npm run migrate",
            "applied 3",
            "all done",
            "exit code 0",
        ]

    def test_nonzero_exit_code_fails_the_job_after_its_backoff_limit(
        self, batch: client.BatchV1Api, core: client.CoreV1Api
    ) -> None:
        create_job(batch, make_job("broken", SIMULATED_EXIT_CODE="3"))
        wait_for(lambda: "Failed" in finished(batch, "broken"), "failure")
        assert finished(batch, "broken")["Failed"] == "BackoffLimitExceeded"
        assert plain(batch.read_namespaced_job("broken", NS))["status"]["failed"] == 2
        pods = list_pods(core, "job-name=broken")
        assert [p["status"]["phase"] for p in pods] == ["Failed", "Failed"]
        name = pods[0]["metadata"]["name"]
        assert core.read_namespaced_pod_log(name, NS, tail_lines=1) == "exit code 3\n"

    def test_crashloop_image_fails_the_job(self, batch: client.BatchV1Api) -> None:
        create_job(batch, make_job("crash", image="tool:2-crashloop"))
        wait_for(lambda: "Failed" in finished(batch, "crash"), "failure")

    def test_kubectl_reads_a_job_log(
        self,
        batch: client.BatchV1Api,
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
    ) -> None:
        create_job(batch, make_job("report", SIMULATED_OUTPUT="42 rows"))
        kubectl(
            "wait", "-n", NS, "--for=condition=complete", "job/report", "--timeout=20s"
        )
        assert "42 rows" in kubectl("logs", "-n", NS, "job/report").stdout


class TestErrors:
    """Failures come back as Status bodies the client turns into ApiException."""

    def test_missing_object_is_404(self, apps: client.AppsV1Api) -> None:
        with pytest.raises(ApiException) as caught:
            apps.read_namespaced_deployment("nope", NS)
        assert caught.value.status == 404
        status = json.loads(caught.value.body or "{}")
        assert status["reason"] == "NotFound"
        assert status["message"] == 'deployments.apps "nope" not found'

    def test_creating_an_existing_object_is_409(self, apps: client.AppsV1Api) -> None:
        existing = apps.read_namespaced_deployment(APP, NS)
        with pytest.raises(ApiException) as caught:
            apps.create_namespaced_deployment(NS, existing)
        assert caught.value.status == 409
        assert json.loads(caught.value.body or "{}")["reason"] == "AlreadyExists"

    def test_replacing_with_a_stale_resource_version_is_409(
        self, apps: client.AppsV1Api
    ) -> None:
        stale = apps.read_namespaced_deployment(APP, NS)
        apps.patch_namespaced_deployment(APP, NS, {"metadata": {"labels": {"x": "1"}}})
        with pytest.raises(ApiException) as caught:
            apps.replace_namespaced_deployment(APP, NS, stale)
        assert caught.value.status == 409
        assert json.loads(caught.value.body or "{}")["reason"] == "Conflict"

    def test_selector_not_matching_labels_is_422(self, apps: client.AppsV1Api) -> None:
        body = {
            "metadata": {"name": "bad"},
            "spec": {
                "selector": {"matchLabels": {"app": "a"}},
                "template": {
                    "metadata": {"labels": {"app": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i:1"}]},
                },
            },
        }
        deployment = client.V1Deployment.from_dict(body)
        assert deployment is not None
        with pytest.raises(ApiException) as caught:
            apps.create_namespaced_deployment(NS, deployment)
        assert caught.value.status == 422

    def test_creating_in_a_missing_namespace_is_404(
        self, core: client.CoreV1Api
    ) -> None:
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name="s"))
        with pytest.raises(ApiException) as caught:
            core.create_namespaced_secret("ghost", secret)
        assert caught.value.status == 404


class TestQueries:
    """Label and field selectors, list metadata and watches behave like a server's."""

    def test_label_selectors_support_equality_and_sets(
        self, core: client.CoreV1Api
    ) -> None:
        for name, tier in (("a", "web"), ("b", "db"), ("c", "cache")):
            labels = {"app": "x", "tier": tier}
            meta = client.V1ObjectMeta(name=name, labels=labels)
            core.create_namespaced_config_map(NS, client.V1ConfigMap(metadata=meta))

        def names(selector: str) -> list[str]:
            items = core.list_namespaced_config_map(NS, label_selector=selector).items
            return sorted(plain(i)["metadata"]["name"] for i in items)

        assert names("app=x,tier in (web,db)") == ["a", "b"]
        assert names("app=x,tier notin (web)") == ["b", "c"]
        assert names("tier!=db,app==x") == ["a", "c"]
        assert names("app=y") == []

    def test_field_selector_and_list_metadata(self, apps: client.AppsV1Api) -> None:
        listing = plain(
            apps.list_deployment_for_all_namespaces(
                field_selector=f"metadata.name={APP}"
            )
        )
        assert [d["metadata"]["name"] for d in listing["items"]] == [APP]
        assert int(listing["metadata"]["resourceVersion"]) > 0
        none = apps.list_namespaced_deployment(NS, field_selector="metadata.name=x")
        assert none.items == []

    def test_watch_streams_changes_after_the_list_version(
        self, apps: client.AppsV1Api
    ) -> None:
        rv = plain(apps.list_namespaced_deployment(NS))["metadata"]["resourceVersion"]
        set_image(apps, "ghcr.io/bpmn-studio/web:1.43.0")
        stream = watch.Watch().stream(
            apps.list_namespaced_deployment,
            NS,
            resource_version=rv,
            timeout_seconds=10,
        )
        seen = []
        for event in stream:
            seen.append(event["type"])
            status = plain(event["object"])["status"]
            if status.get("updatedReplicas") == status.get("availableReplicas") == 3:
                break
        assert set(seen) == {"MODIFIED"}


class TestPods:
    """Pod logs and the crash switch the local stack's faults use."""

    def test_pod_log_honours_container_and_tail_lines(
        self,
        core: client.CoreV1Api,
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
    ) -> None:
        pod = list_pods(core)[0]["metadata"]["name"]
        full = core.read_namespaced_pod_log(pod, NS, container="web")
        assert IMAGE in full
        last = core.read_namespaced_pod_log(pod, NS, container="web", tail_lines=1)
        assert last == full.splitlines(keepends=True)[-1]
        assert kubectl("logs", "-n", NS, pod, "-c", "web").stdout == full

    def test_set_pods_crashing_takes_every_pod_down_and_back(
        self, sim: KubeSimulator, core: client.CoreV1Api, apps: client.AppsV1Api
    ) -> None:
        sim.set_pods_crashing(NS, APP, True)
        wait_for(lambda: sim.serving_images(NS, APP) == [], "no ready pods")
        state = list_pods(core)[0]["status"]["containerStatuses"][0]["state"]
        assert state["waiting"]["reason"] == "CrashLoopBackOff"
        wait_for(
            lambda: not read_deployment(apps)["status"].get("availableReplicas"),
            "an unavailable deployment",
        )
        sim.set_pods_crashing(NS, APP, False)
        wait_for(lambda: len(sim.serving_images(NS, APP)) == 3, "pods ready again")


class TestMetrics:
    """metrics.k8s.io reports usage per pod, adjustable per deployment."""

    def test_pod_metrics_default_and_override(
        self,
        sim: KubeSimulator,
        api: client.ApiClient,
        kubectl: Callable[..., subprocess.CompletedProcess[str]],
    ) -> None:
        custom = client.CustomObjectsApi(api)
        group = ("metrics.k8s.io", "v1beta1", NS, "pods")
        listing: Any = custom.list_namespaced_custom_object(*group)
        assert len(listing["items"]) == 3
        memory = listing["items"][0]["containers"][0]["usage"]["memory"]
        assert 250 * 1024 <= int(memory.removesuffix("Ki")) <= 350 * 1024

        sim.set_memory_usage(NS, APP, 900 * 1024 * 1024)
        name = listing["items"][0]["metadata"]["name"]
        one: Any = custom.get_namespaced_custom_object(*group, name)
        assert one["containers"][0]["usage"]["memory"] == f"{900 * 1024}Ki"
        top = kubectl("top", "pods", "-n", NS).stdout
        assert top.count("900Mi") == 3


class TestSecretsAndState:
    """Secrets keep base64 data; state survives a restart with a snapshot file."""

    def test_secret_string_data_is_stored_base64(self, core: client.CoreV1Api) -> None:
        meta = client.V1ObjectMeta(name="db")
        secret = client.V1Secret(metadata=meta, string_data={"password": "s3cret"})
        core.create_namespaced_secret(NS, secret)
        stored = plain(core.read_namespaced_secret("db", NS))
        assert base64.b64decode(stored["data"]["password"]) == b"s3cret"
        assert stored["type"] == "Opaque"
        user = base64.b64encode(b"app").decode()
        core.patch_namespaced_secret("db", NS, {"data": {"user": user}})
        stored = plain(core.read_namespaced_secret("db", NS))
        assert set(stored["data"]) == {"password", "user"}
        core.delete_namespaced_secret("db", NS)
        with pytest.raises(ApiException):
            core.read_namespaced_secret("db", NS)

    def test_state_survives_a_restart(self, tmp_path: Path) -> None:
        state = tmp_path / "state.json"
        first = KubeSimulator(
            ready_delay_seconds=0.1, tick_seconds=0.03, state_file=state
        )
        first.start()
        uid = first.seed_app()["metadata"]["uid"]
        first.stop()
        second = KubeSimulator(
            ready_delay_seconds=0.1, tick_seconds=0.03, state_file=state
        )
        second.start()
        try:
            assert second.seed_app()["metadata"]["uid"] == uid
            assert len(second.serving_images(NS, APP)) == 3
        finally:
            second.stop()

    def test_kubeconfig_has_a_context_per_cluster(self, tmp_path: Path) -> None:
        path = tmp_path / "kc"
        clusters = {"sandbox-primary": "http://a:1", "sandbox-dr": "http://b:2"}
        write_kubeconfig(path, clusters)
        doc = yaml.safe_load(path.read_text())
        assert doc["current-context"] == "sandbox-primary"
        assert [c["name"] for c in doc["contexts"]] == ["sandbox-primary", "sandbox-dr"]
        assert {c["name"]: c["cluster"]["server"] for c in doc["clusters"]} == clusters
