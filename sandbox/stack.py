"""The local stack: a replica of BPMN Studio's production on 127.0.0.1.

One state folder holds everything: ``state.json`` (ports and generated passwords),
the Valkey data, the services' logs and fault switches. PostgreSQL's data lives in a
folder its unprivileged user can reach (the state folder itself when it can).
``up`` is idempotent and restarts whatever a crash left dead; ``down`` stops every
process and removes the state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from runbook.errors import SandboxError
from sandbox import procs, seed
from sandbox.faults import KNOWN_FAULTS, Faults
from sandbox.postgres import PostgresServer, server_bin_dir, wheel_bin_dir
from sandbox.valkey import ValkeyServer

logger = logging.getLogger(__name__)

DATABASE = "bpmn_studio"
NAMESPACE = "production"
DEPLOYMENT = "bpmn-studio"
UPLOADS_BUCKET = "bpmn-studio-uploads"
BACKUP_BUCKET = "bpmn-studio-backups"
DR_BACKUP_BUCKET = "bpmn-studio-dr-backups"
S3_KEY = "testing"
SERVICE_PORTS = ("kube_primary", "kube_dr", "s3", "app", "cdn", "notifications")
PORTS = ("postgres", "postgres_dr", "valkey", "control", *SERVICE_PORTS)
DIRECT_FAULTS = ("db-down", "redis-down")


def default_state_dir() -> Path:
    """Return the state folder used when none is given: ``.sandbox`` here."""
    return Path.cwd() / ".sandbox"


class Sandbox:
    """Start, stop, describe and break the local stack kept in ``state_dir``."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.state_file = self.state_dir / "state.json"

    # State

    def _load_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SandboxError(f"state file {self.state_file} is unreadable") from exc

    def _new_state(self) -> dict[str, Any]:
        ports: dict[str, int] = {}
        while len(set(ports.values())) < len(PORTS):
            ports = {name: procs.free_port() for name in PORTS}
        return {
            "ports": ports,
            "postgres_password": secrets.token_urlsafe(16),
            "valkey_password": secrets.token_urlsafe(16),
            "slack_token": "xoxb-sandbox-" + secrets.token_hex(8),
            "pagerduty_routing_key": secrets.token_hex(16),
            "statuspage_token": secrets.token_hex(16),
            "pg_root": str(self._postgres_root()),
            "created_at": time.time(),
        }

    def _postgres_root(self) -> Path:
        if os.geteuid() != 0:
            return self.state_dir / "postgres"
        # The state folder is private to root; PostgreSQL runs as `nobody` and
        # gets a private folder of its own instead.
        import pwd

        user = pwd.getpwnam("nobody")
        root = Path(tempfile.mkdtemp(prefix="runbook-sandbox-pg-"))
        os.chown(root, user.pw_uid, user.pw_gid)
        return root

    # Parts

    def _servers(
        self, state: dict[str, Any]
    ) -> tuple[PostgresServer, PostgresServer, ValkeyServer]:
        bin_dir = server_bin_dir()
        root = Path(state["pg_root"])
        ports = state["ports"]
        password = state["postgres_password"]
        primary = PostgresServer(
            "primary", root / "primary", ports["postgres"], password, bin_dir
        )
        standby = PostgresServer(
            "dr", root / "dr", ports["postgres_dr"], password, bin_dir
        )
        valkey = ValkeyServer(
            self.state_dir / "valkey", ports["valkey"], state["valkey_password"]
        )
        return primary, standby, valkey

    @property
    def _services_pid_file(self) -> Path:
        return self.state_dir / "services.pid"

    def _services_running(self) -> bool:
        return procs.pid_alive(procs.read_pid(self._services_pid_file))

    def _start_services(self, state: dict[str, Any], database_url: str) -> None:
        if self._services_running():
            return
        (self.state_dir / "services.json").unlink(missing_ok=True)
        config = {
            "ports": state["ports"],
            "database_url": database_url,
            "redis_url": self._servers(state)[2].url(),
            "uploads_bucket": UPLOADS_BUCKET,
        }
        config_file = self.state_dir / "services-config.json"
        config_file.write_text(json.dumps(config))
        config_file.chmod(0o600)
        log = (self.state_dir / "services.log").open("ab")
        process = subprocess.Popen(  # noqa: S603 (our own module, fixed argv)
            [sys.executable, "-m", "sandbox.services", str(self.state_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self._services_pid_file.write_text(f"{process.pid}\n")
        deadline = time.monotonic() + 60
        while not (self.state_dir / "services.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (self.state_dir / "services.log").read_text()[-2000:]
                raise SandboxError(f"the stack's services did not start:\n{tail}")
            time.sleep(0.1)
        logger.info("Started the stack's services (pid %s)", process.pid)

    # Commands

    def up(self, size_mb: int = 5) -> dict[str, Any]:
        """Start every part that is not running, seeding data on first start."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        state = self._load_state()
        if state is None:
            state = self._new_state()
            state["size_mb"] = size_mb
            self.state_file.write_text(json.dumps(state, indent=2))
            self.state_file.chmod(0o600)
        primary, standby, valkey = self._servers(state)

        if not primary.initialized():
            primary.init()
        primary.start()
        database_url = primary.url(DATABASE)
        self._create_database(primary)
        seed.seed_database(database_url, int(state.get("size_mb", size_mb)))

        if not standby.initialized():
            standby.init_standby_of(primary)
        standby.start()

        fresh_valkey = not (valkey.data_dir / "dump.rdb").exists()
        valkey.start()
        if fresh_valkey:
            seed.seed_redis(valkey.url())

        self._start_services(state, database_url)
        s3 = self.s3_client()
        for bucket in (UPLOADS_BUCKET, BACKUP_BUCKET, DR_BACKUP_BUCKET):
            with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
                s3.create_bucket(Bucket=bucket)
        seed.seed_uploads(database_url, s3, UPLOADS_BUCKET)
        self._write_kubeconfig()
        return self.status()

    def _create_database(self, primary: PostgresServer) -> None:
        import psycopg

        with psycopg.connect(primary.url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        with (
            psycopg.connect(primary.url(DATABASE), autocommit=True) as conn,
            contextlib.suppress(psycopg.Error),
        ):
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _services(self) -> dict[str, str]:
        try:
            return dict(json.loads((self.state_dir / "services.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _write_kubeconfig(self) -> None:
        from sandbox.kube.kubeconfig import write_kubeconfig

        urls = self._services()
        write_kubeconfig(
            self.state_dir / "kubeconfig",
            {"sandbox-primary": urls["kube_primary"], "sandbox-dr": urls["kube_dr"]},
        )

    def s3_client(self) -> Any:
        """Return a boto3 S3 client for the stack's moto server."""
        state = self._require_state()
        return boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{state['ports']['s3']}",
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2}),
        )

    def _require_state(self) -> dict[str, Any]:
        state = self._load_state()
        if state is None:
            raise SandboxError(
                f"no local stack in {self.state_dir}; run `runbook sandbox up`"
            )
        return state

    def stop(self) -> None:
        """Stop every process of the stack, keeping its data for the next ``up``."""
        state = self._load_state()
        if state is None:
            return
        procs.terminate(procs.read_pid(self._services_pid_file))
        self._services_pid_file.unlink(missing_ok=True)
        primary, standby, valkey = self._servers(state)
        for server in (standby, primary, valkey):
            server.stop()
        logger.info("Stopped the local stack in %s", self.state_dir)

    def down(self) -> None:
        """Stop every process of the stack and remove its state."""
        state = self._load_state()
        self.stop()
        if state is not None:
            pg_root = Path(state["pg_root"])
            if not pg_root.is_relative_to(self.state_dir):
                shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        logger.info("Removed the local stack in %s", self.state_dir)

    def status(self) -> dict[str, Any]:
        """Describe the stack: its URLs (DESIGN.md keys) and what runs."""
        state = self._require_state()
        primary, standby, valkey = self._servers(state)
        ports = state["ports"]
        urls = self._services()
        running = {
            "postgres": primary.running(),
            "postgres_dr": standby.running(),
            "valkey": valkey.running(),
            "services": self._services_running(),
        }
        return {
            "running": all(running.values()),
            "components": running,
            "faults": self.faults(),
            "state_dir": str(self.state_dir),
            "app_url": urls.get("app", f"http://127.0.0.1:{ports['app']}"),
            "database_url": primary.url(DATABASE),
            "dr_database_url": standby.url(DATABASE),
            "redis_url": valkey.url(),
            "s3_endpoint_url": f"http://127.0.0.1:{ports['s3']}",
            "backup_bucket": BACKUP_BUCKET,
            "uploads_bucket": UPLOADS_BUCKET,
            "dr_backup_bucket": DR_BACKUP_BUCKET,
            "kubeconfig": str(self.state_dir / "kubeconfig"),
            "k8s_context": "sandbox-primary",
            "dr_k8s_context": "sandbox-dr",
            "k8s_namespace": NAMESPACE,
            "k8s_deployment": DEPLOYMENT,
            "notifications_url": f"http://127.0.0.1:{ports['notifications']}",
            "cdn_url": f"http://127.0.0.1:{ports['cdn']}",
            "pg_bin_dir": str(wheel_bin_dir()),
        }

    def env(self) -> dict[str, str]:
        """Return the ``RUNBOOK_*`` variables that point every setting at the stack."""
        state = self._require_state()
        info = self.status()
        notify = info["notifications_url"]
        return {
            "RUNBOOK_ENVIRONMENT": "sandbox",
            "RUNBOOK_APP_URL": info["app_url"],
            "RUNBOOK_CDN_URL": info["cdn_url"],
            "RUNBOOK_DATABASE_URL": info["database_url"],
            "RUNBOOK_DR_DATABASE_URL": info["dr_database_url"],
            "RUNBOOK_PG_BIN_DIR": info["pg_bin_dir"],
            "RUNBOOK_REDIS_URL": info["redis_url"],
            "RUNBOOK_S3_ENDPOINT_URL": info["s3_endpoint_url"],
            "RUNBOOK_AWS_ACCESS_KEY_ID": S3_KEY,
            "RUNBOOK_AWS_SECRET_ACCESS_KEY": S3_KEY,
            "RUNBOOK_UPLOADS_BUCKET": UPLOADS_BUCKET,
            "RUNBOOK_BACKUP_BUCKET": BACKUP_BUCKET,
            "RUNBOOK_DR_BACKUP_BUCKET": DR_BACKUP_BUCKET,
            "RUNBOOK_KUBECONFIG": info["kubeconfig"],
            "RUNBOOK_K8S_CONTEXT": info["k8s_context"],
            "RUNBOOK_DR_K8S_CONTEXT": info["dr_k8s_context"],
            "RUNBOOK_K8S_NAMESPACE": NAMESPACE,
            "RUNBOOK_K8S_DEPLOYMENT": DEPLOYMENT,
            "RUNBOOK_SLACK_API_URL": f"{notify}/slack/api",
            "RUNBOOK_SLACK_TOKEN": state["slack_token"],
            "RUNBOOK_PAGERDUTY_EVENTS_URL": f"{notify}/pagerduty/v2/enqueue",
            "RUNBOOK_PAGERDUTY_ROUTING_KEY": state["pagerduty_routing_key"],
            "RUNBOOK_STATUSPAGE_API_URL": f"{notify}/statuspage/v1",
            "RUNBOOK_STATUSPAGE_PAGE_ID": "sandbox",
            "RUNBOOK_STATUSPAGE_TOKEN": state["statuspage_token"],
        }

    def env_lines(self) -> str:
        """Return ``export`` lines for a shell, values quoted."""
        return "".join(
            f"export {name}={shlex.quote(value)}\n"
            for name, value in self.env().items()
        )

    # Faults

    def faults(self) -> list[str]:
        """Return the active faults."""
        return Faults(self.state_dir / "faults.json").active()

    def fault(self, name: str, *, clear: bool = False) -> list[str]:
        """Inject (or clear) fault ``name`` and return the active faults."""
        if name not in KNOWN_FAULTS:
            raise SandboxError(
                f"unknown fault {name!r}; known faults: {', '.join(KNOWN_FAULTS)}"
            )
        state = self._require_state()
        primary, _, valkey = self._servers(state)
        control = self._services().get("control")
        if control is None:
            raise SandboxError("the stack's services are not running; run `up` first")
        if name == "db-down":
            primary.start() if clear else primary.stop()
        elif name == "redis-down":
            valkey.start() if clear else valkey.stop()
        method = "DELETE" if clear else "PUT"
        response = httpx.request(method, f"{control}/faults/{name}", timeout=10)
        if response.status_code == 404:
            raise SandboxError(str(response.json()["error"]))
        response.raise_for_status()
        return list(response.json()["faults"])
