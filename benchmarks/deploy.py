"""How long a bad release stays on: from its image being set to the previous serving.

Run: ``uv run python -m benchmarks.deploy [--runs 3] [--deadline-seconds 10]
[--interval-seconds 5]``.

Starts a dedicated local stack and a temporary Prefect server, sends the app steady
traffic (25 requests a second, on 127.0.0.1 only), and for each failure kind runs
the ``deploy`` flow ``--runs`` times:

- ``-crashloop``: pods never get ready; the rollout hits ``progressDeadlineSeconds``
  (shortened to ``--deadline-seconds``; production's is 600) and the flow undoes it;
- ``-errors``: pods get ready and answer 5% of requests with 5xx; the watch
  (one sample every ``--interval-seconds``) sees it and the flow undoes it.

A thread watching the Kubernetes API every 100 ms times each run from outside:
image set, decision (from the run's own timings), previous revision serving again
(template back, every replica updated and available, only the previous image
ready), and how long pods of the bad release were serving traffic. For a crashloop
the manual path is timed too, as the runbook wrote it: ``kubectl set image``,
``kubectl rollout status`` (fails at the deadline), ``kubectl rollout undo``,
``kubectl rollout status``, with no time for a person to read and type. For an
error-rate regression there is no scripted manual path: ``kubectl rollout status``
reports success and only someone watching the dashboards notices.

Prints a table and writes it to ``benchmarks/results/deploy.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from sandbox.stack import DEPLOYMENT, NAMESPACE, Sandbox

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "ghcr.io/bpmn-studio/web:1.42.0"
POLL_SECONDS = 0.1
TRAFFIC_PER_SECOND = 25
TRAFFIC_LIMIT_SECONDS = 1800


class Observer:
    """Poll the app's Deployment and pods, keeping what was seen and when."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.apps, self.core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        self.seen: list[tuple[float, str, bool, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            deployment: Any = self.apps.read_namespaced_deployment(
                DEPLOYMENT, NAMESPACE
            )
            pods: Any = self.core.list_namespaced_pod(
                NAMESPACE, label_selector=f"app={DEPLOYMENT}"
            )
            status, wanted = deployment.status, deployment.spec.replicas
            complete = (
                status.observed_generation == deployment.metadata.generation
                and status.updated_replicas == status.replicas == wanted
                and status.available_replicas == wanted
            )
            ready = [
                pod.spec.containers[0].image
                for pod in pods.items
                if any(
                    c.type == "Ready" and c.status == "True"
                    for c in pod.status.conditions or []
                )
            ]
            template = deployment.spec.template.spec.containers[0].image
            self.seen.append((time.time(), template, complete, ready))

    def __enter__(self) -> Observer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def restored_at(self, after: float, image: str) -> float | None:
        """Return when ``image`` alone served again, complete, after ``after``."""
        for at, template, complete, ready in self.seen:
            if at > after and template == image and complete and set(ready) == {image}:
                return at
        return None

    def exposure_seconds(self, image: str, after: float) -> float:
        """Return how long pods of ``image`` were ready to serve, after ``after``."""
        times = [at for at, _, _, ready in self.seen if at > after and image in ready]
        return round(times[-1] - times[0] + POLL_SECONDS, 1) if times else 0.0


def traffic(url: str, stop: threading.Event) -> None:
    """Send GETs to the app at a steady pace until ``stop`` (bounded in time)."""
    ends = time.monotonic() + TRAFFIC_LIMIT_SECONDS
    paths = ("/static/js/bpmn.bundle.js", "/api/diagrams?limit=5")
    with httpx.Client(base_url=url, timeout=5) as http:
        sent = 0
        while not stop.is_set() and time.monotonic() < ends:
            with contextlib.suppress(httpx.TransportError):
                http.get(paths[sent % 2])
            sent += 1
            stop.wait(1 / TRAFFIC_PER_SECOND)


def run_flow(image: str, observer: Observer) -> dict[str, Any]:
    """Deploy ``image`` with the flow; return the external and internal timings."""
    from flows.deploy import deploy

    state = deploy(image=image, watch_minutes=5, return_state=True)
    error = state.result(raise_on_failure=False)
    summary = getattr(error, "summary", None)
    if not state.is_failed() or summary is None or "timings" not in summary:
        raise RuntimeError(f"expected a rolled-back deploy of {image}, got {error}")
    timings = summary["timings"]
    set_at = timings["image_set_at"]
    restored = observer.restored_at(timings["decided_at"], BASELINE)
    if restored is None:
        raise RuntimeError(f"the observer never saw {BASELINE} serving again")
    return {
        "decision_seconds": round(timings["decided_at"] - set_at, 2),
        "undo_seconds": round(restored - timings["decided_at"], 2),
        "total_seconds": round(restored - set_at, 2),
        "bad_pods_serving_seconds": observer.exposure_seconds(image, set_at),
        "cause": summary["cause"],
    }


def run_kubectl(image: str, env: dict[str, str], deadline: int) -> dict[str, Any]:
    """Time the runbook's own commands for a crash-looping image."""
    base = ["kubectl", "-n", NAMESPACE]
    started = time.time()
    subprocess.run(
        [*base, "set", "image", f"deployment/{DEPLOYMENT}", f"web={image}"],
        env=env,
        check=True,
        capture_output=True,
    )
    status = subprocess.run(
        [
            *base,
            "rollout",
            "status",
            f"deployment/{DEPLOYMENT}",
            f"--timeout={deadline * 3}s",
        ],
        env=env,
        check=False,
        capture_output=True,
    )
    decided = time.time()
    subprocess.run(
        [*base, "rollout", "undo", f"deployment/{DEPLOYMENT}"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*base, "rollout", "status", f"deployment/{DEPLOYMENT}"],
        env=env,
        check=True,
        capture_output=True,
    )
    done = time.time()
    return {
        "decision_seconds": round(decided - started, 2),
        "undo_seconds": round(done - decided, 2),
        "total_seconds": round(done - started, 2),
        "rollout_status_exit": status.returncode,
    }


def median(rows: list[dict[str, Any]], key: str) -> float:
    """Return the median of ``key`` over ``rows``."""
    return round(statistics.median(row[key] for row in rows), 2)


def report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    """Return the results as a markdown table of medians."""
    lines = [
        "# Deploy: time a bad release stays on",
        "",
        f"{args.runs} runs each; medians in seconds. Progress deadline "
        f"{args.deadline_seconds} s (production: 600 s); watch sample every "
        f"{args.interval_seconds} s (production: 30 s); simulated pods get ready "
        "in 1 s.",
        "",
        "| failure | path | decision | undo | set → previous serving "
        "| bad pods serving |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "crashloop-flow": ("-crashloop", "deploy flow"),
        "crashloop-kubectl": ("-crashloop", "kubectl, typed instantly"),
        "errors-flow": ("-errors", "deploy flow"),
    }
    for key, rows in results.items():
        kind, path = labels[key]
        exposure = (
            median(rows, "bad_pods_serving_seconds")
            if "bad_pods_serving_seconds" in rows[0]
            else ""
        )
        lines.append(
            f"| {kind} | {path} | {median(rows, 'decision_seconds')} | "
            f"{median(rows, 'undo_seconds')} | {median(rows, 'total_seconds')} | "
            f"{exposure} |"
        )
    lines.append(
        "| -errors | kubectl | never: rollout status succeeds | | until someone "
        "notices (runbook: watch 30 min) | |"
    )
    return "\n".join(lines)


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline-seconds", type=int, default=10)
    parser.add_argument("--interval-seconds", type=float, default=5)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from runbook.settings import get_settings

    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    sandbox = Sandbox(work / "sandbox")
    stop = threading.Event()
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        info = sandbox.up(size_mb=1)
        os.environ.update(sandbox.env())
        os.environ["RUNBOOK_DEPLOY_WATCH_INTERVAL_SECONDS"] = str(args.interval_seconds)
        os.environ["RUNBOOK_DEPLOY_MIN_REQUESTS"] = "50"
        os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
        get_settings.cache_clear()
        api = k8s_config.new_client_from_config(
            config_file=info["kubeconfig"], context=info["k8s_context"]
        )
        k8s.AppsV1Api(api).patch_namespaced_deployment(
            DEPLOYMENT,
            NAMESPACE,
            {"spec": {"progressDeadlineSeconds": args.deadline_seconds}},
        )
        kubectl_env = {
            **os.environ,
            "KUBECONFIG": info["kubeconfig"],
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
        threading.Thread(
            target=traffic, args=(info["app_url"], stop), daemon=True
        ).start()
        with prefect_test_harness(server_startup_timeout=120), Observer(api) as seen:
            for kind in ("crashloop", "errors"):
                rows = results.setdefault(f"{kind}-flow", [])
                for run in range(args.runs):
                    rows.append(run_flow(f"{BASELINE[:-6]}9.{run}.0-{kind}", seen))
                    print(f"{kind} run {run + 1}: {rows[-1]}", flush=True)
            rows = results.setdefault("crashloop-kubectl", [])
            for run in range(args.runs):
                image = f"{BASELINE[:-6]}8.{run}.0-crashloop"
                rows.append(run_kubectl(image, kubectl_env, args.deadline_seconds))
                print(f"kubectl run {run + 1}: {rows[-1]}", flush=True)
    finally:
        stop.set()
        sandbox.down()
        shutil.rmtree(work, ignore_errors=True)
    table = report(results, args)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy.md").write_text(table + "\n")
    (RESULTS / "deploy.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
