"""MariaDB and MySQL put back as seeded, table by table.

After the seed, every table of every user database is copied into ``<db>_dockapp_seed``
(``CREATE TABLE ... LIKE`` and ``INSERT ... SELECT``). A restore ends the app's connections, then,
with foreign key checks off, puts back only the rows a test wrote where the server can say which
(:mod:`~pytest_dockapp.services.state.myrows`: MariaDB's per-table counts and our triggers), or
else empties each table and copies its seed rows back (``TRUNCATE`` keeps the table, so the app's
prepared statements and grants stay), and drops the tables a test created. One ``mariadb``
client session, kept open in the container, does it all, or, where the tests' environment has
PyMySQL and the server's port is published, a connection to it (a round trip of 0.2 ms here).
The server has no template databases as PostgreSQL has, and a copy of the whole schema per test
would pay for every table of every database; the tables' rows are what tests change. A test that
wrote nothing (the server's counts of writing statements did not move) costs one query.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_dockapp.core.errors import DockappError
from pytest_dockapp.services.state.myrows import RowTables, quoted, text
from pytest_dockapp.services.state.session import DONE, RESTORER, Sql, SqlSession, direct_mysql

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp

_SEED = "_dockapp_seed"
_BASE = "_dockapp_base"
_STARTED = "_dockapp_started"  # made by keep_as_started, even when there was no database to copy
_SYSTEM = ("information_schema", "mysql", "performance_schema", "sys")
# The server's counts of every statement that writes or changes a schema (whatever the engine,
# inside procedures and triggers too) and of InnoDB's rows written: when none moved since the
# last restore, the test wrote nothing. Our own restore's statements are counted before it reads them.
_WRITES = (
    "SHOW GLOBAL STATUS WHERE Variable_name REGEXP '^(Com_(insert|update|delete|replace|load|truncate|"
    "create_|drop_|alter_|rename_|call_procedure|xa_commit)|Innodb_rows_(inserted|updated|deleted))';"
)
# A change of the schema (or a bulk load) is undone by the whole restore, never row by row.
_DDL = ("COM_CREATE_", "COM_DROP_", "COM_ALTER_", "COM_RENAME_", "COM_TRUNCATE", "COM_LOAD")


def _counts(lines: list[str]) -> list[str]:
    return [line for line in lines if line.upper().startswith(("COM_", "INNODB_"))]


def _named(lines: list[str]) -> str:
    """:data:`_WRITES` as MariaDB's ``information_schema.GLOBAL_STATUS`` reads it, by the names it
    printed in ``lines``: 0.31 ms here against the pattern's 0.59 (which goes through every counter)."""
    names = ", ".join(text(line.split("\t", 1)[0].upper()) for line in _counts(lines))
    status = "information_schema.GLOBAL_STATUS"
    return f"SELECT VARIABLE_NAME, VARIABLE_VALUE FROM {status} WHERE VARIABLE_NAME IN ({names});"


@dataclass
class MariaDBState:
    """The user databases of one MariaDB (or MySQL) server, by their tables."""

    name: str
    app: DockApp
    user: str = "root"
    password: str | None = None
    tables: dict[str, list[str]] = field(default_factory=dict)  # database -> its tables, as seeded
    _session: Sql | None = None
    _written: list[str] = field(default_factory=list)  # the write counters after the last restore
    rows: RowTables | None = None  # where the server counts each table's changed rows
    _rows_at: dict[str, str] = field(default_factory=dict)  # those counts after the last restore
    _own: str = ""  # our session's connection ID
    _client: str = "mariadb"  # the client program in the container
    _direct: bool = False  # whether the restores go over PyMySQL
    _writes: str = _WRITES  # the query of the write counters (by name, where the server can)

    @property
    def how(self) -> str:
        over = "over PyMySQL" if self._direct else f"over {self._client} in the container"
        if self.rows is None:
            return (
                "every table emptied and filled (the server counts no table's writes, or took no triggers of ours) "
                + over
            )
        return f"the tables a test wrote put back row by row (the server's per-table counts, userstat) {over}"

    def _open(self) -> Sql:
        if self._session is None:
            self._client = "mariadb" if self.app.exec(["sh", "-c", "command -v mariadb"])[0] == 0 else "mysql"
            cmd = [self._client, "-u", self.user, "--batch", "--skip-column-names", "--force", "--unbuffered"]
            if self.password:
                cmd.append(f"-p{self.password}")
            hint = f"the seed's tables must stay writable by {self.user} (set MARIADB_ROOT_PASSWORD if it has one)"
            # A connection that ended between the reading of the sessions and their KILL is no failure.
            client = SqlSession(
                self.app, cmd, done=f"SELECT '{DONE}';", errors=r"^ERROR (?!1094\b)\d+", quit="quit\n", hint=hint
            )
            # Restored before every test: over PyMySQL where it can (a round trip of 0.2 ms here).
            self._session = direct_mysql(self.app, client, hint) or client
            if self._session is not client:
                client.close()
                self._direct = True
            # Our own writes are no test's: the triggers that note the keys a test wrote skip them.
            self._own = self._session.run("SET @_dockapp_restoring = 1;\nSELECT CONNECTION_ID();")[0].strip()
        return self._session

    def _user_tables(self, sql: Sql) -> dict[str, list[str]]:
        """Every user database (ours too) with its tables."""
        excluded = ", ".join(text(s) for s in _SYSTEM)
        rows = sql.run(
            f"SELECT schema_name, '' FROM information_schema.schemata WHERE schema_name NOT IN ({excluded});\n"
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            f"AND table_schema NOT IN ({excluded}) ORDER BY 1, 2;"
        )
        found: dict[str, list[str]] = {}
        for row in rows:
            db, _, table = row.partition("\t")
            found.setdefault(db, [])
            if table:
                found[db].append(table)
        return found

    @staticmethod
    def _copies(tables: dict[str, list[str]], suffix: str) -> list[str]:
        """Statements that copy each database's tables into ``<db><suffix>``."""
        statements = []
        for db, names in tables.items():
            copy = quoted(db[:48] + suffix)
            statements += [f"DROP DATABASE IF EXISTS {copy};", f"CREATE DATABASE {copy};"]
            for table in names:
                statements += [
                    f"CREATE TABLE {copy}.{quoted(table)} LIKE {quoted(db)}.{quoted(table)};",
                    f"INSERT INTO {copy}.{quoted(table)} SELECT * FROM {quoted(db)}.{quoted(table)};",
                ]
        return statements

    def snapshot(self) -> None:
        sql = self._open()
        with contextlib.suppress(DockappError):  # MySQL 8 has no such table: the pattern it is
            named = _named(sql.run(_WRITES))
            if _counts(sql.run(named)):
                self._writes = named
        self.tables = {db: t for db, t in self._user_tables(sql).items() if "_dockapp_" not in db}
        sql.run("\n".join(self._copies(self.tables, _SEED)))
        self.rows = RowTables.take(sql, self.tables, {db: db[:48] + _SEED for db in self.tables})
        if self.rows is not None:
            try:
                sql.run("\n".join(self.rows.watch()))
            except DockappError:  # a server that takes one trigger per event, and the app has one
                self.rows = None
        # Put back once right away: the tables are then as every restore leaves them (an
        # AUTO_INCREMENT an INSERT ... SELECT left at 1024 is 1001 again), whether or not the
        # first test writes.
        self._put_back(sql, self._restore_statements(sql, self._kills(sql.run("SHOW PROCESSLIST;"))))
        if self.rows is not None:
            self.rows.seeded(self._rows_at)

    def _put_back(self, sql: Sql, statements: list[str]) -> None:
        """Run a restore's statements, and note the counters as they are after it."""
        after = sql.run("\n".join([*statements, self._writes, self.rows.counting if self.rows else ""]))
        self._written = _counts(after)
        self._rows_at = RowTables.read(after)

    def restore(self, keep_as: str | None = None) -> list[str]:
        """Every seeded table's rows back, and the tables a test made dropped; with ``keep_as``,
        each seeded database's tables as the test left them are copied to ``<db>_<keep_as>``
        first (the names returned). The app's connections end first. Where the server counts
        each table's changed rows, and the test changed no schema, only the tables it wrote are
        put back, row by row; else every table is emptied and filled. A connection that opens
        while it runs and takes a lock makes it wait at most 3 s; then the connections are ended
        again and it runs again. After a test that wrote nothing, only the connections are ended."""
        if not self.tables:
            return []
        sql = self._open()
        kept = self._keep(sql, keep_as) if keep_as else []
        self._restore(sql)
        return kept

    def _keep(self, sql: Sql, keep_as: str) -> list[str]:
        """Copy each seeded database's tables as they are now (those a test made too) to ``<db>_<keep_as>``."""
        now = self._user_tables(sql)
        tables = {db: now.get(db, []) for db in self.tables}
        # Our session's writes note no keys (the triggers skip it), and CREATE moves the server's
        # counts of schema changes: the restore after this one puts every table back.
        # The app's connections end first: an open transaction's locks would hold the copy up.
        kill = self._kills(sql.run("SHOW PROCESSLIST;"))
        sql.run("\n".join([*kill, *self._copies(tables, f"_{keep_as}")]))
        return [db[:48] + f"_{keep_as}" for db in tables]

    def command(self, container: str, database: str) -> str:
        """The client in the container, as the user the restores are made as (asked for its
        password, when it has one: the command is printed)."""
        password = " -p" if self.password else ""
        return f"docker exec -it {container} {self._client} -u {self.user}{password} {database}"

    def _restore(self, sql: Sql) -> None:
        now = sql.run(f"{self._writes}\nSHOW PROCESSLIST;\n{self.rows.counting if self.rows else ''}")
        kill = self._kills(now)
        if self._written and _counts(now) == self._written:
            # Nothing to put back; the connections end all the same (a transaction left open may
            # hold locks the next test would wait for; INNODB_TRX lags up to 0.1 s behind).
            if kill:
                sql.run("\n".join(kill))
            return
        before = dict(line.split("\t", 1) for line in self._written)
        moved = {name for name, value in (line.split("\t", 1) for line in _counts(now)) if before.get(name) != value}
        for attempt in range(3):
            try:
                if self.rows is not None and self._written and not any(m.upper().startswith(_DDL) for m in moved):
                    undo = self.rows.undo(self._rows_at, RowTables.read(now))
                    settings = (
                        "SET SESSION lock_wait_timeout = 3, innodb_lock_wait_timeout = 3, FOREIGN_KEY_CHECKS = 0;"
                    )
                    self._put_back(sql, [settings, *kill, *undo, "SET FOREIGN_KEY_CHECKS = 1;"])
                else:
                    rewatch = self.rows.watch(self.rows.unwatched(sql)) if self.rows is not None else []
                    self._put_back(sql, [*self._restore_statements(sql, kill), *rewatch])
                break
            except DockappError as exc:
                if "Lock wait timeout" not in (exc.evidence or "") or attempt == 2:
                    raise
                kill = self._kills(sql.run("SHOW PROCESSLIST;"))

    def _kills(self, lines: list[str]) -> list[str]:
        """A ``KILL`` of each client's connection but ours that ``SHOW PROCESSLIST`` printed among ``lines``."""
        fields = [line.split("\t") for line in lines]
        return [
            f"KILL {f[0]};" for f in fields if len(f) > 4 and f[0].isdigit() and f[0] != self._own and f[4] != "Daemon"
        ]

    def _restore_statements(self, sql: Sql, kill: list[str]) -> list[str]:
        """Every table emptied and filled, the tables a test made dropped, after ``kill``."""
        now = self._user_tables(sql)
        statements = ["SET SESSION lock_wait_timeout = 3, innodb_lock_wait_timeout = 3;", *kill]
        statements.append("SET FOREIGN_KEY_CHECKS = 0;")
        for db, tables in self.tables.items():
            seed = quoted(db[:48] + _SEED)
            statements += [f"DROP TABLE {quoted(db)}.{quoted(t)};" for t in now.get(db, []) if t not in tables]
            for table in tables:
                target = f"{quoted(db)}.{quoted(table)}"
                source = f"{seed}.{quoted(table)}"
                statements += [f"TRUNCATE TABLE {target};", f"INSERT INTO {target} SELECT * FROM {source};"]
        statements.append("SET FOREIGN_KEY_CHECKS = 1;")
        return statements

    def keep_as_started(self) -> None:
        """Copy every database as the server started to ``<db>_dockapp_base``, for :meth:`back_to_start`;
        a marker database says it was done (a server may start with no database of the user's)."""
        sql = self._open()
        copies = self._copies(self._user_tables(sql), _BASE)
        sql.run("\n".join([*copies, f"CREATE DATABASE IF NOT EXISTS {quoted(_STARTED)};"]))

    def back_to_start(self) -> None:
        """Every database as :meth:`keep_as_started` kept it; those made since (the last run's seed
        and its copies) dropped."""
        sql = self._open()
        now = self._user_tables(sql)
        if _STARTED not in now:
            raise DockappError(f"service {self.name}: no copy of its databases as the server started")
        bases = {db[: -len(_BASE)]: tables for db, tables in now.items() if db.endswith(_BASE)}
        statements = [f"DROP DATABASE {quoted(db)};" for db in now if not db.endswith(_BASE) and db != _STARTED]
        for db, tables in bases.items():
            statements.append(f"CREATE DATABASE {quoted(db)};")
            for table in tables:
                base, target = f"{quoted(db + _BASE)}.{quoted(table)}", f"{quoted(db)}.{quoted(table)}"
                statements += [f"CREATE TABLE {target} LIKE {base};", f"INSERT INTO {target} SELECT * FROM {base};"]
        if statements:
            sql.run("\n".join(statements))

    def close(self) -> None:
        if self._session is not None:
            if self._direct:
                with contextlib.suppress(DockappError):  # the account the direct connection logged in with
                    self._session.run(f"DROP USER IF EXISTS {RESTORER};")
            self._session.close()
            self._session = None
