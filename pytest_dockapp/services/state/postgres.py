"""PostgreSQL put back as seeded: a template and a ready clone per database, swapped in by renames."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.services.state.pgrows import RowCopies
from pytest_dockapp.services.state.session import DONE, PsycopgSession, Sql, SqlSession, direct

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp

_SEED = "_dockapp_seed"
_BASE = "_dockapp_base"  # a database as the server started, kept for the next run of a reused stack
# Before 15, a backend's counts reach the statistics through a collector, up to half a second late
# (and there is no pg_stat_force_next_flush()): rows cannot be told apart by them, clones are used.
_ROWS_SINCE = 150000


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _hint(user: str) -> str:
    hint = "the seed's databases must stay droppable by the superuser "
    return hint + f"({user}; set POSTGRES_USER in the service's environment if it is another)"


def _psql(app: DockApp, user: str, database: str = "template1") -> SqlSession:
    cmd = ["psql", "-h", "127.0.0.1", "-U", user, "-d", database, "-XqAt", "-v", "ON_ERROR_STOP=0"]
    return SqlSession(
        app, cmd, done=f"\\echo {DONE}", errors=r"\b(ERROR|FATAL|PANIC)\b|^psql:", quit="\\q\n", hint=_hint(user)
    )


@dataclass
class PostgresState:
    """The databases of one PostgreSQL server. After the seed, each is copied to a template
    (``<name>_dockapp_seed``) and to a ready clone (``<name>_dockapp_next``), and its tables' rows
    into the database itself (:class:`RowCopies`). A restore puts back, in place, the rows of the
    tables a test changed, when that was faster than a clone at the snapshot (the seed's size
    decides) and the test left the schema alone. Otherwise it closes the database to new
    connections, ends those open, and swaps the clone in by two renames (measured: 7-14 ms in
    all, on one psql session kept open); the old database is dropped and the next clone made in
    the background while the test runs (on fuse-overlayfs a clone takes 100-300 ms and a drop
    130 ms). A restore after a test that wrote nothing since the last one is one query (the
    server's counters, or, where clones are used, its WAL position). The ``postgres`` maintenance
    database is left alone when the seed put no table in it."""

    name: str
    app: DockApp
    user: str = "postgres"
    databases: list[tuple[str, str]] = field(default_factory=list)  # (name, owner)
    _session: SqlSession | None = None
    _worker: SqlSession | None = None  # the background's own session
    _background: threading.Thread | None = None
    _failure: DockappError | None = None
    _clean_at: str = ""  # the WAL position when the databases were last as seeded
    _rows: dict[str, RowCopies] = field(default_factory=dict)  # the databases restored row by row
    _in: dict[str, Sql] = field(default_factory=dict)  # a session in each of those
    _direct: set[str] = field(default_factory=set)  # those whose session is over psycopg
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (rows, clone) seconds
    version: int = 0  # the server's, as server_version_num

    @property
    def how(self) -> str:
        """Which databases go back row by row, which by a clone, and why (what each took at the snapshot)."""
        if 0 < self.version < _ROWS_SINCE:
            major = self.version // 10000
            release = str(major) if major >= 10 else f"{major}.{self.version // 100 % 100}"
            return (
                f"every database by a clone (putting rows back needs PostgreSQL 15, which hands a backend's "
                f"counts in at once; this server is {release})"
            )
        parts = []
        for name, (rows, clone) in self.timings.items():
            way = "a clone"
            if name in self._rows:
                way = "rows put back over " + ("psycopg" if name in self._direct else "psql in the container")
            parts.append(f"{name} by {way} (rows {rows * 1000:.0f} ms, clone {clone * 1000:.0f} ms at the snapshot)")
        return "; ".join(parts)

    def _open(self) -> SqlSession:
        if self._session is None:
            self._session = _psql(self.app, self.user)
        return self._session

    @staticmethod
    def _names(name: str) -> tuple[str, str, str]:
        stem = name[:48]
        return stem + _SEED, stem + "_dockapp_next", stem + "_dockapp_old"

    def snapshot(self) -> None:
        psql = self._open()
        rows = psql.run(
            "SELECT datname || '|' || pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate "
            "AND datallowconn AND datname NOT LIKE '%\\_dockapp\\_%';"
        )
        self.databases = [(r.split("|", 1)[0], r.split("|", 1)[1]) for r in rows if "|" in r]
        self.version = int(psql.run("SHOW server_version_num;")[0])
        if any(name == "postgres" for name, _ in self.databases):
            tables = psql.run(
                "\\c postgres\nSELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%';"
                "\n\\c template1"
            )
            if tables and tables[0].strip() == "0":
                self.databases = [(n, o) for n, o in self.databases if n != "postgres"]
        for name, owner in self.databases:
            copies = self._copy_rows(name) if self.version >= _ROWS_SINCE else None
            seed, ready, old = self._names(name)
            psql.run(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {_sql_text(name)} "
                "AND pid <> pg_backend_pid();\n"
                f"DROP DATABASE IF EXISTS {_sql_name(seed)};\n"
                f"DROP DATABASE IF EXISTS {_sql_name(old)};\n"
                f"DROP DATABASE IF EXISTS {_sql_name(ready)};\n"
                f"CREATE DATABASE {_sql_name(seed)} TEMPLATE {_sql_name(name)} OWNER {_sql_name(owner)};"
            )
            began = time.perf_counter()
            psql.run(f"CREATE DATABASE {_sql_name(ready)} TEMPLATE {_sql_name(seed)} OWNER {_sql_name(owner)};")
            if copies is not None:
                self._choose(name, copies, time.perf_counter() - began)
        self._clean_at = psql.run("SELECT pg_current_wal_lsn();")[0]

    def _copy_rows(self, name: str) -> RowCopies | None:
        """The seed's rows of ``name``, copied inside it, and a session left on ``template1`` (the
        templates copy the database next, which no session may be in); None where the server
        cannot (no event triggers or partition trees: before PostgreSQL 12)."""
        # Restored before every test: over psycopg where it can (a round trip of 0.28 ms, 0.6-0.85 through psql)
        session: Sql = direct(self.app, self.user, name, _hint(self.user)) or _psql(self.app, self.user, name)
        try:
            copies = RowCopies.take(session)
            session.run("\\c template1")
        except DockappError:
            session.close()
            return None
        self._in[name] = session
        if isinstance(session, PsycopgSession):
            self._direct.add(name)
        return copies

    def _choose(self, name: str, copies: RowCopies, clone_seconds: float) -> None:
        """Restore ``name`` row by row when putting every table back took no longer than a clone."""
        session = self._in[name]
        session.run(f"\\c {_sql_name(name)}")
        began = time.perf_counter()
        copies.put_back(session)  # what a test that wrote to every table costs
        self.timings[name] = (time.perf_counter() - began, clone_seconds)
        if self.timings[name][0] <= clone_seconds:
            self._rows[name] = copies
        else:
            self._in.pop(name).close()

    def restore(self, keep_as: str | None = None) -> list[str]:
        """Put each database back as seeded, row by row or by a clone; with ``keep_as``, what a
        test left is kept under that name (``app_kept_1``), not dropped. Returns the databases kept."""
        self._wait_background()
        if not self.databases:
            return []
        psql = self._open()
        clones = [db for db in self.databases if db[0] not in self._rows]
        # Nothing at all was written since the restore before (the server's WAL position is where
        # it left it): a clone is not needed. Known only where clones are used (the last restore
        # then noted the position).
        unchanged = bool(self._clean_at) and psql.run("SELECT pg_current_wal_lsn();")[0] == self._clean_at
        if keep_as:
            swap = [] if unchanged else list(self.databases)
        else:
            swap = [] if unchanged else clones
            swap += [db for db in self.databases if db[0] in self._rows and not self._put_back(db[0])]
        kept = self._swap(swap, keep_as) if swap else []
        # The position right after the restore: the clone work of the background moves it on, so
        # a test is taken as clean only when nothing at all was written since (never one that
        # wrote while the next clone was being made).
        self._clean_at = psql.run("SELECT pg_current_wal_lsn();")[0] if clones or swap else ""
        if swap:
            self._background = threading.Thread(
                target=self._prepare_next, args=(swap,), name="dockapp-clone", daemon=True
            )
            self._background.start()
        return kept

    def _put_back(self, name: str) -> bool:
        """Whether ``name`` is back as seeded row by row (not when the test changed the schema)."""
        copies = self._rows.get(name)
        if copies is None:
            return False
        try:
            return copies.restore(self._in[name])
        except DockappError:  # a table it cannot fill: clones from now on, which always can
            del self._rows[name]
            self._in.pop(name).close()
            return False

    def command(self, container: str, database: str) -> str:
        return f"docker exec -it {container} psql -h 127.0.0.1 -U {self.user} -d {database}"

    def _swap(self, databases: list[tuple[str, str]], keep_as: str | None) -> list[str]:
        """Swap the clean clones of ``databases`` in, by renames; the databases kept."""
        names = ", ".join(_sql_text(name) for name, _ in databases)
        moved = [name for name, _ in databases if name in self._in]
        for name in moved:  # a database with a session in it cannot be renamed
            self._in[name].run("\\c template1")
        sql = [f"ALTER DATABASE {_sql_name(name)} ALLOW_CONNECTIONS false;" for name, _ in databases]
        sql.append(
            "DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname IN ({names}) AND pid <> pg_backend_pid(); "
            # pg_stat_activity is read once per transaction unless its snapshot is cleared: without
            # that, the loop saw the ended backends for its whole 5 s (measured: 5.3 s a restore).
            "FOR i IN 1..2500 LOOP PERFORM pg_stat_clear_snapshot(); EXIT WHEN NOT EXISTS (SELECT 1 FROM "
            f"pg_stat_activity WHERE datname IN ({names}) AND pid <> pg_backend_pid()); PERFORM pg_sleep(0.002); "
            "END LOOP; END $$;"
        )
        kept = []
        for name, _ in databases:
            _, ready, old = self._names(name)
            if keep_as:
                old = f"{name[:48]}_{keep_as}"
                kept.append(old)
            sql += [
                f"ALTER DATABASE {_sql_name(name)} RENAME TO {_sql_name(old)};",
                f"ALTER DATABASE {_sql_name(ready)} RENAME TO {_sql_name(name)};",
            ]
            if keep_as:  # closed to the app for the swap; open to whoever looks at it now
                sql.append(f"ALTER DATABASE {_sql_name(old)} ALLOW_CONNECTIONS true;")
        self._open().run("\n".join(sql))
        for name in moved:  # the clone's own counters start at zero
            self._in[name].run(f"\\c {_sql_name(name)}")
            self._rows[name].recount(self._in[name])
        return kept

    def keep_as_started(self) -> None:
        """Copy every database to ``<name>_dockapp_base``, for :meth:`back_to_start` in a later run
        that reuses this server (the copies live in the server, as long as it does)."""
        psql = self._open()
        for name, owner in self._all(psql):
            base = _sql_name(name[:48] + _BASE)
            psql.run(
                f"DROP DATABASE IF EXISTS {base};\n"
                f"CREATE DATABASE {base} TEMPLATE {_sql_name(name)} OWNER {_sql_name(owner)};"
            )

    def back_to_start(self) -> None:
        """Every database as :meth:`keep_as_started` kept it, and those made since dropped (the
        last run's seed and its copies too), open connections ended first."""
        psql = self._open()
        found = self._all(psql, copies=True)
        stems = {n[: -len(_BASE)] for n, _ in found if n.endswith(_BASE)}
        if not stems:
            raise DockappError(
                f"service {self.name}: no copy of its databases as the server started",
                hint="the run that started this reused stack used no dockapp_clean; it is replaced",
            )
        sql = []
        for name, owner in found:
            if name.endswith(_BASE):
                continue
            sql.append(f"DROP DATABASE IF EXISTS {_sql_name(name)} WITH (FORCE);")
            if name[:48] in stems and "_dockapp_" not in name:
                base = _sql_name(name[:48] + _BASE)
                sql.append(f"CREATE DATABASE {_sql_name(name)} TEMPLATE {base} OWNER {_sql_name(owner)};")
        psql.run("\n".join(sql))

    @staticmethod
    def _all(psql: SqlSession, copies: bool = False) -> list[tuple[str, str]]:
        """The server's databases and owners (not ``template0``/``template1``), with our copies or not."""
        ours = "" if copies else "AND datname NOT LIKE '%\\_dockapp\\_%'"
        rows = psql.run(
            f"SELECT datname || '|' || pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate {ours};"
        )
        return [(r.split("|", 1)[0], r.split("|", 1)[1]) for r in rows if "|" in r]

    def _prepare_next(self, databases: list[tuple[str, str]]) -> None:
        """Drop the databases the last test used and clone the next ones, on a session of its own."""
        try:
            if self._worker is None:
                self._worker = _psql(self.app, self.user)
            for name, owner in databases:
                seed, ready, old = self._names(name)
                self._worker.run(
                    f"DROP DATABASE IF EXISTS {_sql_name(old)};\n"
                    f"CREATE DATABASE {_sql_name(ready)} TEMPLATE {_sql_name(seed)} OWNER {_sql_name(owner)};"
                )
        except DockappError as exc:
            self._failure = exc

    def _wait_background(self) -> None:
        if self._background is not None:
            self._background.join()
            self._background = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def close(self) -> None:
        self._wait_background()
        for session in (self._session, self._worker, *self._in.values()):
            if session is not None:
                session.close()
        self._session = self._worker = None
        self._in.clear()
