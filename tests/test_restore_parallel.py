"""The parallel loader against the stack's real PostgreSQL and real pg_restore.

A source database holds what a line-based split could get wrong: escaped
newlines, tabs and backslashes, a value that looks like COPY's end line, a row
longer than one read, an empty table, NULLs, bytea, a large object, a sequence's
value, a function whose body holds a COPY line, and indexes, a foreign key and a
trigger that must come after the rows.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runbook.errors import CheckFailedError
from runbook.settings import get_settings
from sandbox.stack import Sandbox
from tasks.postgres_client import child_env, pg_binary
from tasks.postgres_load import READ_BYTES, ParallelLoad

pytestmark = [pytest.mark.sandbox]

SOURCE = "parallel_source"
SCHEMA = r"""
CREATE TABLE tricky (id bigint PRIMARY KEY, body text, raw bytea, doc jsonb);
CREATE TABLE child (id int PRIMARY KEY, tricky_id bigint REFERENCES tricky (id));
CREATE TABLE untouched (id int);
CREATE SEQUENCE counter;
SELECT setval('counter', 42);
CREATE INDEX tricky_body_idx ON tricky (md5(body));
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- the next line looks like a data block to a careless splitter
COPY tricky FROM stdin;
  RETURN NEW;
END
$$;
CREATE TRIGGER child_stamp BEFORE INSERT ON child
  FOR EACH ROW EXECUTE FUNCTION stamp();
SELECT lo_from_bytea(0, '\x6c61726765206f626a656374');
CREATE TABLE zz_audited (id int, body text, seen_by_trigger bool DEFAULT false);
CREATE FUNCTION mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.seen_by_trigger := true;
  RETURN NEW;
END
$$;
"""
AFTER_ROWS = """
CREATE TRIGGER zz_audited_mark BEFORE INSERT ON zz_audited
  FOR EACH ROW EXECUTE FUNCTION mark();
"""
AWKWARD = [
    "line one\nline two",
    "tab\there",
    "back\\slash",
    "\\.",
    "\\.\n",
    ".",
    "",
    None,
    "unicode: ünïcödé ✓",
]


@pytest.fixture(scope="module")
def settings_env(stack: Sandbox) -> Iterator[None]:
    """Point the settings at the stack for this module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in stack.env().items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def source(stack: Sandbox, settings_env: None) -> Iterator[str]:
    """Create the source database; return its URL."""
    admin = _url(stack, "postgres")
    _recreate(admin, SOURCE)
    url = _url(stack, SOURCE)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tricky VALUES (%s, %s, %s, %s)",
                [
                    (i, text, bytes([i % 256, 0, 10, 92]), '{"n": "a\\nb"}')
                    for i, text in enumerate(AWKWARD)
                ],
            )
            cursor.execute(
                "INSERT INTO tricky SELECT 1000, repeat('long row ', %s), NULL, NULL",
                (3 * READ_BYTES // 9,),
            )
            cursor.execute(
                "INSERT INTO tricky SELECT g, md5(g::text), NULL, NULL "
                "FROM generate_series(2000, 40000) g"
            )
            conn.execute("ALTER TABLE child DISABLE TRIGGER child_stamp")
            cursor.execute(
                "INSERT INTO child SELECT g, 2000 + g FROM generate_series(1, 5000) g"
            )
            conn.execute("ALTER TABLE child ENABLE TRIGGER child_stamp")
            cursor.execute(
                "INSERT INTO zz_audited SELECT g, repeat(md5(g::text), 32) "
                "FROM generate_series(1, 40000) g"
            )
        conn.execute(AFTER_ROWS)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(SOURCE))
        )


@pytest.fixture(scope="module")
def dump(source: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a custom-format, uncompressed dump of the source, as backups make."""
    path = tmp_path_factory.mktemp("dump") / "source.dump"
    conninfo, env = child_env(source)
    subprocess.run(
        [str(pg_binary("pg_dump")), "-Fc", "-Z0", f"--file={path}", conninfo],
        env=env,
        check=True,
    )
    return path


def _url(stack: Sandbox, database: str) -> str:
    return str(stack.status()["database_url"]).rsplit("/", 1)[0] + f"/{database}"


def _recreate(admin: str, database: str) -> None:
    name = sql.Identifier(database)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))


def _load(stack: Sandbox, script: Any, database: str, jobs: int) -> ParallelLoad:
    _recreate(_url(stack, "postgres"), database)
    url = _url(stack, database)
    conninfo, env = child_env(url)
    load = ParallelLoad(url, conninfo, env, jobs)
    load.run(script)
    return load


def _restore_script(dump: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(pg_binary("pg_restore")), "--file=-", str(dump)], stdout=subprocess.PIPE
    )


def _contents(url: str) -> dict[str, Any]:
    """Return what a restore must bring back: rows, objects, the sequence, the LO."""
    with psycopg.connect(url, autocommit=True) as conn:
        facts: dict[str, Any] = {}
        for table in ("tricky", "child", "untouched", "zz_audited"):
            facts[table] = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, '|' "
                    "ORDER BY t::text), '')) FROM {} t"
                ).format(sql.Identifier(table))
            ).fetchone()
        facts["counter"] = conn.execute("SELECT last_value FROM counter").fetchone()
        facts["indexes"] = conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
        facts["constraints"] = conn.execute(
            "SELECT conname, contype FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 1"
        ).fetchall()
        facts["triggers"] = conn.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal"
        ).fetchall()
        facts["large objects"] = conn.execute(
            "SELECT lo_get(oid) FROM pg_largeobject_metadata"
        ).fetchall()
    return facts


@pytest.mark.parametrize("jobs", [2, 3])
def test_parallel_load_restores_exactly_what_was_dumped(
    stack: Sandbox, source: str, dump: Path, jobs: int
) -> None:
    script = _restore_script(dump)
    assert script.stdout is not None
    target = f"parallel_target_{jobs}"
    load = _load(stack, script.stdout, target, jobs)
    assert script.wait() == 0
    assert load.tables == 4
    expected = _contents(source)
    assert expected["tricky"][0] == len(AWKWARD) + 1 + 38001
    assert _contents(_url(stack, target)) == expected
    with psycopg.connect(_url(stack, target)) as conn:
        marked = conn.execute(
            "SELECT count(*) FROM zz_audited WHERE seen_by_trigger"
        ).fetchone()
    assert marked == (0,)


def test_a_row_the_server_rejects_fails_the_load(stack: Sandbox, dump: Path) -> None:
    script = _restore_script(dump)
    assert script.stdout is not None
    text = script.stdout.read()
    assert script.wait() == 0
    broken = text.replace(b"\n2000\t", b"\nnot-a-number\t", 1)
    assert broken != text
    with pytest.raises(CheckFailedError, match="could not load a table's rows"):
        _load(stack, io.BytesIO(broken), "parallel_broken", 2)


def test_a_script_cut_inside_rows_fails_the_load(stack: Sandbox, dump: Path) -> None:
    script = _restore_script(dump)
    assert script.stdout is not None
    text = script.stdout.read()
    assert script.wait() == 0
    cut = text.index(b"\n2000\t") + 1
    with pytest.raises(CheckFailedError, match="ended inside a table's rows"):
        _load(stack, io.BytesIO(text[:cut]), "parallel_cut", 2)


def test_a_failing_schema_statement_stops_before_any_rows(
    stack: Sandbox, dump: Path
) -> None:
    script = _restore_script(dump)
    assert script.stdout is not None
    text = script.stdout.read()
    assert script.wait() == 0
    broken = text.replace(b"CREATE TABLE public.child", b"CREATE TABLE public.nope(", 1)
    with pytest.raises(CheckFailedError, match="create the schema"):
        _load(stack, io.BytesIO(broken), "parallel_bad_schema", 2)
    with psycopg.connect(_url(stack, "parallel_bad_schema")) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)
