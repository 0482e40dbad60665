"""The local stack's lifecycle: up, status, crash recovery, down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from runbook.errors import SandboxError
from sandbox import procs
from sandbox.stack import Sandbox

pytestmark = pytest.mark.sandbox

STATUS_KEYS = {
    "app_url",
    "database_url",
    "dr_database_url",
    "redis_url",
    "s3_endpoint_url",
    "backup_bucket",
    "uploads_bucket",
    "kubeconfig",
    "k8s_context",
    "dr_k8s_context",
    "notifications_url",
    "cdn_url",
}


def runbook(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``runbook`` command line in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "runbook.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
    )


def processes_under(folder: Path) -> list[int]:
    """Return pids of processes whose command line or cwd mentions ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stack of its own, for the tests that crash and remove it."""
    state_dir = tmp_path_factory.mktemp("lifecycle") / "sandbox"
    yield state_dir
    Sandbox(state_dir).down()


class TestStackLifecycle:
    """`runbook sandbox up|status|env|down`, run as a user would, in order."""

    def test_up_then_status_lists_every_key(self, lifecycle: Path) -> None:
        started = runbook(
            "sandbox", "up", "--state-dir", str(lifecycle), "--size-mb", "1"
        )
        assert started.returncode == 0, started.stderr[-3000:]
        status = runbook("sandbox", "status", "--json", "--state-dir", str(lifecycle))
        assert status.returncode == 0
        info = json.loads(status.stdout)
        assert set(info) >= STATUS_KEYS
        assert info["running"] is True
        assert all(info["components"].values())

    def test_up_again_is_idempotent(self, lifecycle: Path) -> None:
        before = Sandbox(lifecycle).status()
        again = runbook("sandbox", "up", "--state-dir", str(lifecycle))
        assert again.returncode == 0, again.stderr[-3000:]
        assert Sandbox(lifecycle).status() == before

    def test_env_points_at_the_stack(self, lifecycle: Path) -> None:
        printed = runbook("sandbox", "env", "--state-dir", str(lifecycle))
        assert printed.returncode == 0
        exported = dict(
            line.removeprefix("export ").split("=", 1)
            for line in printed.stdout.splitlines()
        )
        database_url = exported["RUNBOOK_DATABASE_URL"].strip("'")
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM diagrams").fetchone()
        assert row is not None and row[0] > 0

    def test_crash_is_detected_and_recovered(self, lifecycle: Path) -> None:
        sandbox = Sandbox(lifecycle)
        valkey_pid = procs.read_pid(lifecycle / "valkey" / "valkey.pid")
        services_pid = procs.read_pid(lifecycle / "services.pid")
        assert valkey_pid and services_pid
        os.kill(valkey_pid, signal.SIGKILL)
        os.kill(services_pid, signal.SIGKILL)
        procs.terminate(services_pid)  # reap nothing; wait until it is gone
        status = sandbox.status()
        assert status["running"] is False
        assert status["components"]["valkey"] is False
        assert status["components"]["services"] is False

        sandbox.up()
        status = sandbox.status()
        assert status["running"] is True
        client = redis.Redis.from_url(status["redis_url"])
        assert client.ping()
        client.close()

    def test_kubectl_lists_the_app(self, lifecycle: Path) -> None:
        kubectl = Path(sys.executable).parent / "kubectl"
        listed = subprocess.run(
            [
                str(kubectl),
                "--kubeconfig",
                str(lifecycle / "kubeconfig"),
                "get",
                "deploy,rs,pods",
                "-A",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        assert "deployment.apps/bpmn-studio" in listed.stdout
        assert "replicaset.apps/bpmn-studio-" in listed.stdout
        assert "pod/bpmn-studio-" in listed.stdout

    def test_unknown_fault_is_refused(self, lifecycle: Path) -> None:
        with pytest.raises(SandboxError, match=r"unknown fault 'disk-full'.*db-down"):
            Sandbox(lifecycle).fault("disk-full")

    def test_down_leaves_no_process(self, lifecycle: Path) -> None:
        info = Sandbox(lifecycle).status()
        pg_root = Path(json.loads((lifecycle / "state.json").read_text())["pg_root"])
        stopped = runbook("sandbox", "down", "--state-dir", str(lifecycle))
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not lifecycle.exists()
        assert not pg_root.exists()
        assert processes_under(pg_root) == []
        assert processes_under(lifecycle) == []
        for key in ("database_url", "redis_url"):
            port = int(info[key].rsplit(":", 1)[1].split("/")[0])
            assert not procs.port_is_open(port)
        for key in ("app_url", "s3_endpoint_url", "notifications_url", "cdn_url"):
            assert not procs.port_is_open(int(info[key].rsplit(":", 1)[1]))

    def test_status_without_a_stack_says_how_to_start_one(self, tmp_path: Path) -> None:
        status = runbook("sandbox", "status", "--state-dir", str(tmp_path / "none"))
        assert status.returncode == 2
        assert "runbook sandbox up" in status.stderr
