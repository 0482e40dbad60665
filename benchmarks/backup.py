"""Backup, restore and uploads, side by side with the commands they replace.

Run: ``uv run python -m benchmarks.backup [--size-mb 2700] [--files 10000]``.

Starts a dedicated local stack (its own state folder, seeded with about
``--size-mb`` of generated rows: the default, 2,700 MB, makes a database of about
1 GB as ``pg_database_size`` counts it) and a Prefect server, then runs, one after the
other, against the same PostgreSQL and S3:

- backup: ``runbook run backup`` vs ``pg_dump > backup.sql && aws s3 cp`` (the
  runbook's commands) vs ``pg_dump | zstd -1 | aws s3 cp -`` (the streaming pipe);
  and ours again on a database a quarter the size, to show memory stays flat;
- restore: ``runbook run restore`` streaming from S3 into pg_restore
  (restore_jobs=1) and into two loading connections (restore_jobs=2) vs
  ``psql < backup.sql`` vs ``pg_restore -j2`` from a local custom-format file;
- uploads: ``--files`` files of 4 KiB to 1 MiB (log-uniform sizes, random bytes)
  from a local folder, vs ``aws s3 sync`` and ``s5cmd sync``, each run twice: the
  second run finds nothing changed.

Prints a table of wall time, peak memory of the process tree, temporary disk and
bytes stored, with ratios to ours, and writes it to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.measure import Measurement, measure
from sandbox import seed
from sandbox.postgres import wheel_bin_dir
from sandbox.stack import S3_KEY, Sandbox

RESULTS = Path(__file__).resolve().parent / "results"
ENVIRONMENT = "bench"
MIB = 1024 * 1024


@dataclass
class Case:
    """One command of a comparison."""

    label: str
    command: list[str] | str
    env: dict[str, str] = field(default_factory=dict)
    stored_prefix: str | None = None
    before: Callable[[], None] | None = None
    reference: bool = False
    keep: bool = False  # keep what it stored (else deleted after each run)
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    """The stack, the tools and the scratch folders one benchmark run uses."""

    def __init__(self, work: Path, sandbox: Sandbox, prefect_api_url: str) -> None:
        self.work = work
        self.sandbox = sandbox
        info = sandbox.status()
        self.info = info
        self.bin = wheel_bin_dir()
        self.bucket = info["backup_bucket"]
        self.endpoint = info["s3_endpoint_url"]
        self.s3 = sandbox.s3_client()
        venv_bin = Path(sys.executable).parent
        self.aws = str(venv_bin / "aws")
        self.s5cmd = str(venv_bin / "s5cmd")
        self.env = {
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "HOME": str(work),
            "LC_ALL": "C.UTF-8",
            "PREFECT_API_URL": prefect_api_url,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            **sandbox.env(),
            "RUNBOOK_ENVIRONMENT": ENVIRONMENT,
        }
        self.results: list[dict[str, Any]] = []

    def database_url(self, database: str = "bpmn_studio") -> str:
        """Return the stack's URL of ``database``."""
        return str(self.info["database_url"]).rsplit("/", 1)[0] + f"/{database}"

    def temp(self, name: str) -> Path:
        """Return a fresh, empty scratch folder."""
        folder = self.work / "tmp" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def stored_bytes(self, prefix: str) -> int:
        """Return the bytes stored under ``prefix`` in the backup bucket."""
        total = 0
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix`` (moto keeps them in memory)."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def run_rounds(
        self, group: str, cases: list[Case], repeat: int
    ) -> dict[str, list[Measurement]]:
        """Measure every case ``repeat`` times, in rounds (A B C, A B C, ...).

        Rounds spread any background load on the machine over every case alike.
        Each case keeps its median wall time and its highest peak memory.
        """
        measured: dict[str, list[Measurement]] = {case.label: [] for case in cases}
        stored: dict[str, int] = {}
        for round_number in range(1, repeat + 1):
            for case in cases:
                print(f"  {group}: {case.label} (run {round_number})", flush=True)
                if case.before is not None:
                    case.before()
                env = {**self.env, **case.env}
                measured[case.label].append(
                    measure(case.label, case.command, env, self.temp("run"))
                )
                if case.stored_prefix is not None:
                    # Same S3 state for every case: drop what each run stored.
                    stored[case.label] = self.stored_bytes(case.stored_prefix)
                    if not case.keep:
                        self.delete_prefix(case.stored_prefix)
        for case in cases:
            self.record(group, case, measured[case.label], stored.get(case.label))
        return measured

    def record(
        self,
        group: str,
        case: Case,
        results: list[Measurement],
        stored: int | None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a result row: median wall time, highest peak memory and temp disk."""
        walls = sorted(r.wall_seconds for r in results)
        row = {
            "group": group,
            "label": case.label,
            "wall_seconds": round(statistics.median(walls), 2),
            "wall_range": f"{walls[0]:.1f}-{walls[-1]:.1f}" if len(walls) > 1 else "",
            "peak_rss_mb": round(max(r.peak_rss_bytes for r in results) / MIB, 1),
            "cpu_seconds": round(statistics.median(r.cpu_seconds for r in results), 1),
            "temp_disk_mb": round(max(r.temp_disk_bytes for r in results) / MIB, 1),
            "stored_mb": None if stored is None else round(stored / MIB, 1),
            "reference": case.reference,
            **case.extra,
            **extra,
        }
        print(f"    {row}", flush=True)
        self.results.append(row)
        return row

    def runbook(self, *args: str) -> list[str]:
        """Return argv running ``runbook ARGS`` from this project."""
        return [sys.executable, "-m", "runbook.cli", *args]


def summary_of(measurement: Measurement) -> dict[str, Any]:
    """Return the JSON a ``runbook run`` printed."""
    text = measurement.stdout
    return dict(json.loads(text[text.index("{") :]))


def drop_database(url: str, database: str) -> None:
    """Drop ``database`` if it exists."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def bench_backup(bench: Bench, small_mb: int, repeat: int) -> dict[str, Any]:
    """Back up the database three ways; return our last backup's summary."""
    pg_dump = bench.bin / "pg_dump"
    url = bench.database_url()
    small = "bench_small"
    admin = bench.database_url("postgres")
    drop_database(admin, small)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {small}")
    seed.seed_database(bench.database_url(small), small_mb)
    ours = "runbook run backup"
    measured = bench.run_rounds(
        "backup",
        [
            Case(
                "runbook run backup (Redis only: the runner's footprint)",
                bench.runbook("run", "backup", "-p", 'components=["redis"]'),
                env={"RUNBOOK_ENVIRONMENT": "bench-runner"},
            ),
            Case(
                ours,
                bench.runbook("run", "backup", "-p", 'components=["database"]'),
                stored_prefix=f"{ENVIRONMENT}/",
                before=lambda: bench.delete_prefix(f"{ENVIRONMENT}/"),
                reference=True,
                keep=True,  # the restores read it
            ),
            Case(
                "pg_dump > backup.sql && aws s3 cp",
                f'"{pg_dump}" "{url}" > "$TMPDIR/backup.sql" && '
                f"{bench.aws} --endpoint-url {bench.endpoint} s3 cp "
                f'--only-show-errors "$TMPDIR/backup.sql" '
                f"s3://{bench.bucket}/runbook-plain/backup.sql",
                stored_prefix="runbook-plain/",
            ),
            Case(
                "pg_dump | zstd -1 | aws s3 cp -",
                f'"{pg_dump}" "{url}" | zstd -1 -q | {bench.aws} --endpoint-url '
                f"{bench.endpoint} s3 cp --only-show-errors - "
                f"s3://{bench.bucket}/pipe/backup.sql.zst",
                stored_prefix="pipe/",
            ),
            Case(
                f"runbook run backup ({small_mb} MB database)",
                bench.runbook("run", "backup", "-p", 'components=["database"]'),
                env={
                    "RUNBOOK_DATABASE_URL": bench.database_url(small),
                    "RUNBOOK_ENVIRONMENT": "bench-small",
                },
                stored_prefix="bench-small/",
                before=lambda: bench.delete_prefix("bench-small/"),
            ),
        ],
        repeat,
    )
    summaries = [summary_of(result) for result in measured[ours]]
    row = next(r for r in bench.results if r["label"] == ours)
    row["pipeline_seconds"] = round(
        statistics.median(s["timings_seconds"]["database"] for s in summaries), 2
    )
    for prefix in ("runbook-plain/", "pipe/", "bench-small/", "bench-runner/"):
        bench.delete_prefix(prefix)
    drop_database(admin, small)
    return summaries[-1]


def bench_restore(bench: Bench, backup_id: str, repeat: int) -> None:
    """Restore the database four ways, each into a new database."""
    admin = bench.database_url("postgres")
    restored = f"bpmn_studio_restore_{backup_id.lower().replace('-', '_')}"

    # The baselines restore from local files, made here and not timed.
    files = bench.work / "files"
    files.mkdir(exist_ok=True)
    plain, custom = files / "backup.sql", files / "backup.dump"
    for path, form in ((plain, "-Fp"), (custom, "-Fc")):
        argv = [str(bench.bin / "pg_dump"), form, "-f", str(path), bench.database_url()]
        measure("prepare", argv, bench.env, bench.temp("prepare"))

    def fresh(database: str) -> Callable[[], None]:
        def create() -> None:
            drop_database(admin, database)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {database} TEMPLATE template0")

        return create

    cases = [
        Case(
            f"runbook run restore (restore_jobs={jobs})",
            bench.runbook(
                "run",
                "restore",
                "-p",
                f"backup_id={backup_id}",
                "-p",
                'components=["database"]',
            ),
            env={"RUNBOOK_RESTORE_JOBS": str(jobs)},
            before=lambda: drop_database(admin, restored),
            reference=jobs == 2,
        )
        for jobs in (2, 1)
    ]
    cases += [
        Case(
            "psql < backup.sql",
            f'"{bench.bin / "psql"}" -X -q -v ON_ERROR_STOP=1 '
            f'"{bench.database_url("bench_psql")}" < "{plain}" > /dev/null',
            before=fresh("bench_psql"),
            extra={"local_file_mb": round(plain.stat().st_size / MIB, 1)},
        ),
        Case(
            "pg_restore -j2 (local file)",
            f'"{bench.bin / "pg_restore"}" -j2 --exit-on-error '
            f'-d "{bench.database_url("bench_pg_restore")}" "{custom}"',
            before=fresh("bench_pg_restore"),
            extra={"local_file_mb": round(custom.stat().st_size / MIB, 1)},
        ),
    ]
    bench.run_rounds("restore", cases, repeat)
    for database in (restored, "bench_psql", "bench_pg_restore"):
        drop_database(admin, database)


def make_uploads(folder: Path, count: int) -> int:
    """Write ``count`` files of 4 KiB to 1 MiB (log-uniform) of random bytes."""
    rng = random.Random(42)
    total = 0
    for index in range(count):
        size = int(math.exp(rng.uniform(math.log(4096), math.log(MIB))))
        path = folder / f"diagrams/{index % 500}/attachment-{index}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        total += size
    return total


def _objects_sent(case: Case, result: Measurement) -> int:
    if case.label.startswith("runbook"):
        return int(summary_of(result)["uploads_copied"])
    return sum(
        1 for line in result.stdout.splitlines() if line.startswith(("upload:", "cp "))
    )


def bench_uploads(bench: Bench, count: int, repeat: int) -> None:
    """Copy a folder of uploads to S3 three ways, then again with nothing changed."""
    folder = bench.work / "uploads"
    total = make_uploads(folder, count)
    print(f"  made {count} files, {total / MIB:.0f} MiB", flush=True)
    env = {"RUNBOOK_UPLOADS_DIR": str(folder), "RUNBOOK_ENVIRONMENT": "bench-uploads"}
    cases = [
        Case(
            "runbook run backup (uploads)",
            bench.runbook("run", "backup", "-p", 'components=["uploads"]'),
            env=env,
            stored_prefix="bench-uploads/",
            reference=True,
        ),
        Case(
            "aws s3 sync",
            f"{bench.aws} --endpoint-url {bench.endpoint} s3 sync "
            f'"{folder}" s3://{bench.bucket}/aws-sync/',
            stored_prefix="aws-sync/",
        ),
        Case(
            "s5cmd sync",
            f"{bench.s5cmd} --endpoint-url {bench.endpoint} sync "
            f'"{folder}/" s3://{bench.bucket}/s5cmd-sync/',
            stored_prefix="s5cmd-sync/",
        ),
    ]
    attempts = ("first", "no change")
    measured: dict[tuple[str, str], list[Measurement]] = {
        (case.label, attempt): [] for case in cases for attempt in attempts
    }
    stored: dict[str, int] = {}
    for round_number in range(1, repeat + 1):
        # Each tool starts from an empty prefix, then runs again with no change
        for case in cases:
            assert case.stored_prefix is not None
            for attempt in attempts:
                print(f"  uploads: {case.label}, {attempt} (run {round_number})")
                env = {**bench.env, **case.env}
                measured[case.label, attempt].append(
                    measure(case.label, case.command, env, bench.temp("run"))
                )
            stored[case.label] = bench.stored_bytes(case.stored_prefix)
            bench.delete_prefix(case.stored_prefix)
    for attempt in attempts:
        for case in cases:
            results = measured[case.label, attempt]
            sent = [_objects_sent(case, result) for result in results]
            bench.record(
                f"uploads ({attempt})",
                case,
                results,
                stored[case.label],
                objects_sent=max(sent),
            )
    shutil.rmtree(folder, ignore_errors=True)


def table(rows: list[dict[str, Any]]) -> str:
    """Return the results as a markdown table with ratios to ours per group."""
    lines = [
        "| group | command | wall s | x ours | peak MB | x ours | temp disk MB "
        "| stored MB | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {
        group: i for i, group in enumerate(dict.fromkeys(r["group"] for r in rows))
    }
    rows = sorted(rows, key=lambda row: order[row["group"]])
    ours_by_group: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("reference"):
            ours_by_group[row["group"]] = row
    for row in rows:
        ours = ours_by_group.get(row["group"], row)
        stored = row["stored_mb"]
        notes = [
            f"{key} {row[key]}"
            for key in (
                "cpu_seconds",
                "wall_range",
                "pipeline_seconds",
                "objects_sent",
                "local_file_mb",
            )
            if row.get(key) not in (None, "")
        ]
        lines.append(
            f"| {row['group']} | {row['label']} | {row['wall_seconds']} "
            f"| {row['wall_seconds'] / max(ours['wall_seconds'], 1e-9):.2f} "
            f"| {row['peak_rss_mb']} "
            f"| {row['peak_rss_mb'] / max(ours['peak_rss_mb'], 1e-9):.2f} "
            f"| {row['temp_disk_mb']} | {'' if stored is None else stored} "
            f"| {', '.join(notes)} |"
        )
    return "\n".join(lines)


def main() -> int:
    """Run every comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-mb",
        type=int,
        default=2700,
        help="Rows to generate; 2700 makes a database of about 1 GB on disk.",
    )
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="Runs per measure.")
    parser.add_argument(
        "--groups",
        default="backup,restore,uploads",
        help="Comma-separated groups to run (restore needs backup).",
    )
    parser.add_argument("--out", default="backup", help="Name of the result files.")
    parser.add_argument("--keep", action="store_true", help="Keep the stack.")
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # A stop (SIGTERM) unwinds like Ctrl-C, so the stack is taken down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="runbook-bench-"))
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    sandbox = Sandbox(work / "sandbox")
    started = time.perf_counter()
    try:
        print(f"Starting a stack seeded with {args.size_mb} MB in {work}", flush=True)
        sandbox.up(size_mb=args.size_mb)
        with prefect_test_harness(server_startup_timeout=120):
            bench = Bench(work, sandbox, str(PREFECT_API_URL.value()))
            facts = database_facts(bench)
            print(f"  database: {facts}", flush=True)
            groups = set(args.groups.split(","))
            if "backup" in groups:
                summary = bench_backup(bench, max(64, args.size_mb // 4), args.repeat)
                if "restore" in groups:
                    bench_restore(bench, summary["backup_id"], args.repeat)
            if "uploads" in groups:
                bench_uploads(bench, args.files, args.repeat)
    finally:
        if not args.keep:
            sandbox.down()
            shutil.rmtree(work, ignore_errors=True)
    report = (
        f"# Backup benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {os.cpu_count()} cores; database {facts}; "
        f"{args.files} upload files; total {time.perf_counter() - started:.0f} s.\n\n"
        + table(bench.results)
        + "\n"
    )
    print("\n" + report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(report)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps(bench.results, indent=2) + "\n"
    )
    return 0


def database_facts(bench: Bench) -> dict[str, Any]:
    """Return the seeded database's size on disk, rows and plain dump size."""
    with psycopg.connect(bench.database_url()) as conn:
        row = conn.execute(
            "SELECT pg_database_size(current_database()), "
            "(SELECT count(*) FROM diagrams)"
        ).fetchone()
    assert row is not None
    return {"size_on_disk_mb": round(row[0] / MIB), "diagrams": row[1]}


if __name__ == "__main__":
    sys.exit(main())
