"""Run a command and measure it: wall time, peak memory of its process tree, temp disk.

Memory is sampled every 20 ms as the sum of the resident set sizes of the command's
process and all its descendants (a child forked but not yet exec'd is skipped: it
reports its parent's pages); temporary disk as the size of the folder the
command is given as TMPDIR (and any file it is told to write there); CPU time as the
user and system time of the command and its descendants.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SAMPLE_SECONDS = 0.02


@dataclass
class Measurement:
    """What one command cost."""

    label: str
    wall_seconds: float
    peak_rss_bytes: int
    temp_disk_bytes: int
    cpu_seconds: float = 0.0
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")


def folder_bytes(folder: Path) -> int:
    """Return the total size of the files under ``folder``."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            if member is not process and _not_yet_exec(member):
                continue  # a fresh fork reports its parent's pages as its own
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def _not_yet_exec(member: psutil.Process) -> bool:
    parent = member.parent()
    return parent is not None and member.cmdline() == parent.cmdline()


def measure(
    label: str,
    command: list[str] | str,
    env: dict[str, str],
    temp_dir: Path,
    timeout_seconds: float = 3600,
) -> Measurement:
    """Run ``command`` (argv, or a bash line) to completion and measure it.

    Raises:
        RuntimeError: when the command fails.
    """
    temp_dir.mkdir(parents=True, exist_ok=True)
    argv = (
        ["bash", "-o", "pipefail", "-c", command]
        if isinstance(command, str)
        else command
    )
    peaks = {"rss": 0, "disk": 0}
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        env={**env, "TMPDIR": str(temp_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched = psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        ticks = 0
        while not done.is_set():
            peaks["rss"] = max(peaks["rss"], _tree_rss(watched))
            if ticks % 5 == 0:
                peaks["disk"] = max(peaks["disk"], folder_bytes(temp_dir))
            ticks += 1
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate(timeout=timeout_seconds)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    peaks["disk"] = max(peaks["disk"], folder_bytes(temp_dir))
    if process.returncode != 0:
        raise RuntimeError(f"{label} failed ({process.returncode}): {stderr[-2000:]}")
    cpu = _children_cpu_seconds() - cpu_before
    return Measurement(
        label, wall, peaks["rss"], peaks["disk"], cpu, stdout=stdout, stderr=stderr
    )


def _children_cpu_seconds() -> float:
    # Every waited-for descendant (pg_dump, zstd, ...) is counted once it has ended.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
