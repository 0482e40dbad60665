"""Process and port helpers shared by the local stack's servers."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from runbook.errors import SandboxError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on the loopback address that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Tell whether ``port`` can be bound on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def port_is_open(port: int, timeout_seconds: float = 0.5) -> bool:
    """Tell whether something accepts connections on ``port``."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def wait_for_port(port: int, what: str, timeout_seconds: float = 30.0) -> None:
    """Wait until ``port`` accepts connections, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if port_is_open(port):
            return
        time.sleep(0.05)
    raise SandboxError(f"{what} did not start listening on port {port}")


def pid_alive(pid: int | None) -> bool:
    """Tell whether a process with ``pid`` exists (and is not a zombie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if status.read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def read_pid(path: Path) -> int | None:
    """Return the pid written on the first line of ``path``, if any."""
    try:
        first = path.read_text().splitlines()[0].strip()
    except (OSError, IndexError):
        return None
    return int(first) if first.isdigit() else None


def terminate(pid: int | None, timeout_seconds: float = 15.0) -> None:
    """Stop a process: SIGTERM, then SIGKILL if it has not gone in time."""
    if not pid_alive(pid):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    logger.warning("Process %s ignored SIGTERM; killed it", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def run(
    argv: Sequence[str],
    what: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_seconds: float = 120.0,
) -> str:
    """Run a command to completion and return its output, or fail naming ``what``."""
    logger.debug("Running %s", argv[0])
    try:
        done = subprocess.run(  # noqa: S603 (argv lists built by this package)
            list(argv),
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout_seconds,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"could not {what}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SandboxError(f"could not {what}: " + " / ".join(tail))
    return done.stdout


def reachable_by(uid: int, gid: int, path: Path) -> bool:
    """Tell whether user ``uid`` may traverse every folder leading to ``path``."""
    for folder in [path, *path.parents]:
        if not folder.exists():
            continue
        info = folder.stat()
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == gid:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True
