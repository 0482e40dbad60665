"""Load a pg_restore script into a new database, each table's rows over N connections.

pg_restore restores a table's data over one connection, and ``--jobs`` only runs
different tables at once, from a seekable file. A database whose size is one big
table (diagrams, here) restores no faster with more jobs. This loader takes the
SQL script pg_restore writes from a stream (``--file=-``) and:

- runs the schema before the first table's rows with psql, and waits for it;
- splits every ``COPY ... FROM stdin`` block at row boundaries and sends the rows
  round-robin over ``jobs`` connections, each running the same COPY, and waits
  for all of them to commit before reading on, as psql would;
- runs everything else (sequence values, large objects, then indexes,
  constraints and triggers) with a second psql, in the script's order.

In COPY's text format a row ends at a newline byte, since newlines inside values
are escaped; a block ends at a line holding only ``\\.``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import subprocess
import threading
from collections.abc import Iterator
from typing import IO, Any

import psycopg

from runbook.errors import CheckFailedError
from runbook.redact import redact
from tasks.postgres import connect
from tasks.postgres_client import ClientProgram, pg_binary

logger = logging.getLogger(__name__)

READ_BYTES = 1024 * 1024
QUEUED_CHUNKS = 4  # per connection: what is in memory is jobs x this x ~1 MiB
_COPY = re.compile(rb"COPY [^\n]+ FROM stdin;\n")
_ENTRY = re.compile(rb"-- (Data for )?Name: ")
_DATA_ENTRY = re.compile(rb"-- Data for Name: [^\n]*; Type: TABLE DATA;")
_SESSION = (b"SET ", b"SELECT pg_catalog.set_config(")
_END_OF_ROWS = b"\\.\n"
# Items of a loader's queue besides COPY statements and rows (compared by identity)
_END = b"end of rows"
_STOP = b"stop"


class ScriptReader:
    """Lines, and the rows of COPY blocks, read from a script in big reads."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._buffer = b""
        self._position = 0

    def _more(self) -> bool:
        data = self._stream.read(READ_BYTES)
        if not data:
            return False
        self._buffer = self._buffer[self._position :] + data
        self._position = 0
        return True

    def readline(self) -> bytes:
        """Return the next line with its newline; b"" at the end of the script."""
        while True:
            end = self._buffer.find(b"\n", self._position)
            if end >= 0:
                line = self._buffer[self._position : end + 1]
                self._position = end + 1
                return line
            if not self._more():
                line = self._buffer[self._position :]
                self._buffer, self._position = b"", 0
                return line

    def rows(self) -> Iterator[bytes]:
        """Yield a COPY block's rows in chunks of whole rows; consume its end line.

        Raises:
            CheckFailedError: when the script ends inside the block.
        """
        while True:
            if self._buffer.startswith(_END_OF_ROWS, self._position):
                self._position += len(_END_OF_ROWS)
                return
            end = self._buffer.find(b"\n" + _END_OF_ROWS, self._position)
            if end >= 0:
                yield self._buffer[self._position : end + 1]
                self._position = end + 1 + len(_END_OF_ROWS)
                return
            cut = self._buffer.rfind(b"\n", self._position) + 1
            if cut > self._position:
                yield self._buffer[self._position : cut]
                self._position = cut
            if not self._more():
                raise CheckFailedError("the restore script ended inside a table's rows")


class _Stopped(Exception):
    """The reading side stopped before a block's end."""


class _Loader:
    """One connection running its share of every COPY, fed through a queue.

    The queue carries a COPY statement, then chunks of rows, then ``_END``; and
    ``_STOP`` last. Each finished COPY (committed) is told through ``finished``. A
    failure is told there too, after which the loader keeps taking items (dropping
    them) until ``_STOP``, so the reading side never waits on it for ever.
    """

    def __init__(self, url: str, session: list[bytes]) -> None:
        self._url = url
        self._session = session
        self.items: queue.Queue[bytes] = queue.Queue(QUEUED_CHUNKS)
        self.finished: queue.Queue[None] = queue.Queue()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with connect(self._url, autocommit=True, timeout_seconds=10) as conn:
                for line in self._session:
                    conn.execute(line)
                while (item := self.items.get()) is not _STOP:
                    self._copy(conn, item)
                    self.finished.put(None)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the reading side
            self.error = exc
            self.finished.put(None)
            while self.items.get() is not _STOP:
                pass

    def _copy(self, conn: psycopg.Connection[Any], statement: bytes) -> None:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            while (item := self.items.get()) is not _END:
                if item is _STOP:
                    raise _Stopped  # leaving the block sends CopyFail
                copy.write(item)


class ParallelLoad:
    """Run a pg_restore script into a new database, ``jobs`` connections for rows.

    Args:
        url: libpq URL of the new, empty database.
        conninfo: the same without its password, for psql's argv.
        env: psql's environment (PGPASSWORD).
        jobs: connections loading rows at once.
    """

    def __init__(self, url: str, conninfo: str, env: dict[str, str], jobs: int) -> None:
        self._url = url
        self._psql_argv = [
            str(pg_binary("psql")),
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--no-password",
            f"--dbname={conninfo}",
        ]
        self._env = env
        self._jobs = jobs
        self._loaders: list[_Loader] = []
        self._threads: list[threading.Thread] = []
        self.tables = 0

    def _psql(self) -> ClientProgram:
        return ClientProgram(
            self._psql_argv, self._env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )

    def run(self, script: IO[bytes]) -> None:
        """Read the whole script and load it; fail on the first error anywhere.

        Raises:
            CheckFailedError: psql or a loading connection failed, or the script
                was cut short.
        """
        reader = ScriptReader(script)
        preamble: list[bytes] = []  # \restrict and the session's settings
        entry = b""  # the last "-- Name: ..." comment: what the next lines are
        schema = self._psql()
        rest: ClientProgram | None = None
        try:
            while line := reader.readline():
                if _ENTRY.match(line):
                    entry = line
                elif not entry:
                    preamble.append(line)
                if not (_COPY.fullmatch(line) and _DATA_ENTRY.match(entry)):
                    if not self._loaders:
                        _feed(schema, line)  # the schema, before any table's rows
                        continue
                    if rest is None:
                        rest = self._psql()
                        for kept in preamble:
                            _feed(rest, kept)
                    _feed(rest, line)
                    continue
                if not self._loaders:
                    _finish(schema, "create the schema")
                    self._start_loaders(
                        [kept for kept in preamble if kept.startswith(_SESSION)]
                    )
                self._load_rows(reader, line.removesuffix(b";\n"))
            if not self._loaders:
                _finish(schema, "create the schema")
            self._stop_loaders()
            _raise_first(self._loaders)
            if rest is not None:
                _finish(rest, "create indexes and constraints")
        finally:
            self._stop_loaders()
            for program in (schema, rest):
                if program is not None:
                    program.kill()

    def _start_loaders(self, session: list[bytes]) -> None:
        self._loaders = [_Loader(self._url, session) for _ in range(self._jobs)]
        self._threads = [
            threading.Thread(target=loader.run, name=f"copy-{index}", daemon=True)
            for index, loader in enumerate(self._loaders)
        ]
        for thread in self._threads:
            thread.start()

    def _stop_loaders(self) -> None:
        for loader, thread in zip(self._loaders, self._threads, strict=False):
            if thread.is_alive():
                loader.items.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _load_rows(self, reader: ScriptReader, statement: bytes) -> None:
        logger.debug("Loading rows: %s", statement.decode(errors="replace"))
        for loader in self._loaders:
            loader.items.put(statement)
        for turn, chunk in enumerate(reader.rows()):
            if turn % 64 == 0:
                _raise_first(self._loaders)
            self._loaders[turn % len(self._loaders)].items.put(chunk)
        for loader in self._loaders:
            loader.items.put(_END)
        # Whatever follows (a trigger, a constraint) must see every row committed
        for loader in self._loaders:
            loader.finished.get()
        _raise_first(self._loaders)
        self.tables += 1


def _feed(program: ClientProgram, line: bytes) -> None:
    assert program.process.stdin is not None
    try:
        program.process.stdin.write(line)
    except BrokenPipeError:
        program.wait("run the restore script")  # psql stopped: raise its error
        raise


def _finish(program: ClientProgram, what: str) -> None:
    assert program.process.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        program.process.stdin.close()
    program.wait(what)


def _raise_first(loaders: list[_Loader]) -> None:
    for loader in loaders:
        error = loader.error
        if error is None:
            continue
        if isinstance(error, psycopg.Error):
            raise CheckFailedError(
                f"could not load a table's rows: {redact(str(error).splitlines()[0])}"
            ) from None
        raise error
