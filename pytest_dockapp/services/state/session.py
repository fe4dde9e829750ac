"""One SQL client kept running in a service's container, fed through the exec's stdin: a
statement costs a round trip, not an exec (about 60 ms here each). Where the tests' environment
has the driver, a connection to the service's published port instead: psycopg for PostgreSQL (a
round trip of 0.28 ms here, against 0.6-0.85 ms through psql in the container: the exec's stream
goes through the engine and its shim both ways), PyMySQL for MariaDB and MySQL."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from pytest_dockapp.core.errors import DockappError

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp

DONE = "__dockapp_done__"


class Sql(Protocol):
    """What a restore sends SQL through: a client in the container, or a driver to a published port."""

    def run(self, sql: str) -> list[str]: ...

    def close(self) -> None: ...


class SqlSession:
    """``cmd`` (``psql``, ``mariadb``) running in ``app``'s container; :meth:`run` sends SQL and
    reads its output up to ``done`` (a statement that prints :data:`DONE`). A stderr line that
    matches ``errors`` is a :class:`DockappError` with ``hint``."""

    def __init__(self, app: DockApp, cmd: list[str], *, done: str, errors: str, quit: str, hint: str):
        api = app.container.client.api
        exec_id = api.exec_create(app.container.id, cmd, stdin=True, stdout=True, stderr=True)["Id"]
        self._stream = api.exec_start(exec_id, socket=True)
        self._sock = getattr(self._stream, "_sock", self._stream)
        self._name, self._done, self._errors, self._quit, self._hint = cmd[0], done, errors, quit, hint
        self._service = app.service or app.name

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.sendall(self._quit.encode())
            self._stream.close()

    def run(self, sql: str) -> list[str]:
        """The output lines of ``sql``; an error (or the client ending) is a :class:`DockappError`."""
        from docker.utils.socket import next_frame_header, read_exactly

        self._sock.sendall(f"{sql}\n{self._done}\n".encode())
        out: list[str] = []
        errors: list[str] = []
        buffer = ""
        while True:
            stream, size = next_frame_header(self._sock)
            if size < 0:
                errors.append(f"{self._name} ended")
                break
            text = read_exactly(self._sock, size).decode("utf-8", "replace")
            if stream == 2:  # notices (a DROP ... IF EXISTS that skips) are not failures
                errors += [line for line in text.splitlines() if re.search(self._errors, line)]
                continue
            buffer += text
            *lines, buffer = buffer.split("\n")
            if DONE in lines:
                out += lines[: lines.index(DONE)]
                break
            out += lines
        if errors:
            raise DockappError(
                f"service {self._service}: {self._name} failed while putting the database back as seeded",
                evidence="\n".join(errors)[-2000:],
                evidence_title=f"{self._name} said",
                hint=self._hint,
            )
        return out


class PsycopgSession:
    """:class:`SqlSession`'s :meth:`run` for PostgreSQL, over psycopg 3: the statements of one
    call go in one message and commit together. ``\\c NAME`` moves it to that database (it
    connects at the next statement, so that the one it leaves can be renamed meanwhile)."""

    def __init__(self, connect: Callable[[str], Any], database: str, service: str, hint: str):
        self._connect, self._database, self._service, self._hint = connect, database, service, hint
        self._conn: Any = connect(database)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        self._conn = None

    def run(self, sql: str) -> list[str]:
        """The rows of every statement of ``sql``, each row's columns joined by ``|`` as psql's
        unaligned output has them; an error is a :class:`DockappError`, as psql's."""
        import psycopg

        if sql.startswith("\\c "):
            self.close()
            name = sql[3:].strip()
            self._database = name[1:-1].replace('""', '"') if name.startswith('"') else name
            return []
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect(self._database)
            cursor = self._conn.cursor()
            cursor.execute(sql)
            out: list[str] = []
            while True:
                if cursor.description is not None:
                    out += ["|".join(_text(value) for value in row) for row in cursor.fetchall()]
                if not cursor.nextset():
                    return out
        except psycopg.Error as exc:
            raise _failed(self._service, "psycopg", exc, "PostgreSQL", self._hint) from None


def _failed(service: str, driver: str, exc: Exception, server: str, hint: str) -> DockappError:
    return DockappError(
        f"service {service}: {driver} failed while putting the database back as seeded",
        evidence=str(exc)[-2000:],
        evidence_title=f"{server} said",
        hint=hint,
    )


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def environment(app: DockApp, compose: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``app``'s container runs with (its image's ``ENV`` and the compose file's),
    with ``compose`` (the service's ``environment``) over it."""
    config = app.container.attrs.get("Config") or {}
    return {**dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e), **(compose or {})}


def direct(app: DockApp, user: str, database: str, hint: str) -> PsycopgSession | None:
    """A :class:`PsycopgSession` on ``database`` of the PostgreSQL service ``app``; None when
    psycopg 3.1 or later is not installed, the service publishes no port for PostgreSQL, or the
    server refuses the connection (with the password of the service's environment, if any)."""
    try:
        import psycopg
    except ImportError:
        return None
    if tuple(int(p) for p in re.findall(r"\d+", psycopg.__version__)[:2]) < (3, 1):
        return None  # every statement's rows of one call: psycopg 3.1
    env = environment(app)
    if not app.port or app.container_port != int(env.get("PGPORT") or 5432):
        return None
    password = env.get("POSTGRES_PASSWORD")

    def connect(name: str) -> Any:
        return psycopg.connect(
            host=app.host, port=app.port, user=user, password=password, dbname=name, autocommit=True,
            connect_timeout=10, prepare_threshold=None, application_name="pytest-dockapp",
        )  # fmt: skip

    try:
        return PsycopgSession(connect, database, app.service or app.name, hint)
    except psycopg.Error:
        return None


# The server's "unknown thread": a connection that ended between the reading of the sessions and its KILL.
_GONE = 1094
_RESTORER_USER = "dockapp_restore"
RESTORER = f"'{_RESTORER_USER}'@'%'"  # the MariaDB (MySQL) account of the restore's direct connection


class MySQLSession:
    """:class:`SqlSession`'s :meth:`run` for MariaDB and MySQL, over PyMySQL: the statements of one
    call, one a line, go in one message and each commits on its own, as the client's do; the rows
    come back as ``mariadb --batch`` prints them."""

    def __init__(self, conn: Any, service: str, hint: str):
        self._conn, self._service, self._hint = conn, service, hint

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def run(self, sql: str) -> list[str]:
        """The rows of every statement of ``sql``, tab-separated; an error but :data:`_GONE` (after
        which the statements left run on) is a :class:`DockappError`, as the client's."""
        import pymysql

        statements = [line for line in sql.split("\n") if line.strip()]
        out: list[str] = []
        while statements:
            done = 0  # the statements whose results were read; an error is that of the next one
            try:
                with self._conn.cursor() as cursor:
                    cursor.execute("\n".join(statements))
                    while True:
                        done += 1
                        if cursor.description is not None:
                            out += ["\t".join(_batch(value) for value in row) for row in cursor.fetchall()]
                        if not cursor.nextset():
                            return out
            except pymysql.MySQLError as exc:
                if not exc.args or exc.args[0] != _GONE:
                    raise _failed(self._service, "PyMySQL", exc, "the server", self._hint) from None
                statements = statements[done + 1 :]
        return out


def _batch(value: object) -> str:
    """``value`` as ``mariadb --batch`` prints it (NULL, and a tab or newline escaped)."""
    if value is None:
        return "NULL"
    text = bytes(value).decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\0", "\\0")


def direct_mysql(app: DockApp, client: Sql, hint: str) -> MySQLSession | None:
    """A :class:`MySQLSession` to the MariaDB (MySQL) service ``app``, as a user ``client`` (the
    client in its container) makes for it, with every privilege and a password that never leaves
    this process; None when PyMySQL 1.0 or later is not installed, the service publishes no port
    for the server (3306), or the user cannot be made or log in."""
    try:
        import pymysql
        from pymysql.constants import CLIENT
    except ImportError:
        return None
    if int(re.findall(r"\d+", pymysql.__version__)[0]) < 1 or not app.port or app.container_port != 3306:
        return None
    password = secrets.token_hex(16)
    try:
        client.run(
            f"DROP USER IF EXISTS {RESTORER};\n"
            f"CREATE USER {RESTORER} IDENTIFIED BY '{password}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO {RESTORER} WITH GRANT OPTION;"
        )
        conn = pymysql.connect(
            host=app.host, port=app.port, user=_RESTORER_USER, password=password, autocommit=True,
            client_flag=CLIENT.MULTI_STATEMENTS, connect_timeout=10, charset="utf8mb4",
        )  # fmt: skip
    except (DockappError, pymysql.MySQLError, OSError, RuntimeError):
        # What the server said may hold the password: it is not shown; the client in the container goes on.
        # (RuntimeError: PyMySQL without the cryptography package, for MySQL 8's caching_sha2_password.)
        with contextlib.suppress(DockappError):
            client.run(f"DROP USER IF EXISTS {RESTORER};")
        return None
    return MySQLSession(conn, app.service or app.name, hint)
