"""A stack's stateful services put back as they were seeded, before each test, in place:

* **PostgreSQL**: after the seed, each database is copied to a template (``<name>_dockapp_seed``);
  a restore drops the database (``WITH (FORCE)``: the app's open connections end first) and
  creates it again from its template, under the name the app already uses. One ``psql`` run
  inside the container does all databases.
* **Redis** (and Valkey): after the seed, every key of every logical database is dumped with its
  time to live; a restore is ``FLUSHALL`` and the keys ``RESTORE``d, pipelined in one round
  trip on the published port.

A service is recognised by its image and command, or named in the compose file
(``x-dockapp: {state: postgres | redis | none}``). A service that holds state the plugin
cannot restore (a volume, and no known kind) is an error that says what to do.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_dockapp.core.errors import ComposeError, DockappError

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.services.service import ServiceDef
    from pytest_dockapp.services.stack import Stack

KINDS = ("postgres", "redis")
_SEED = "_dockapp_seed"
_BASE = "_dockapp_base"  # a database as the server started, kept for the next run of a reused stack


class ServiceState(Protocol):
    name: str

    def snapshot(self) -> None: ...

    def restore(self, keep_as: str | None = None) -> list[str]: ...

    def keep_as_started(self) -> None: ...

    def back_to_start(self) -> None: ...

    def close(self) -> None: ...


def kind_of(svc: ServiceDef, app: DockApp) -> str | None:
    """``postgres``, ``redis`` or None: what the compose file names, else what the image and its
    command say."""
    if svc.state is not None:
        return None if svc.state == "none" else svc.state
    config = app.container.attrs.get("Config") or {}
    said = " ".join(
        [svc.image or "", str(config.get("Image") or ""), *map(str, config.get("Cmd") or []),
         *map(str, config.get("Entrypoint") or [])]
    ).lower()  # fmt: skip
    if "postgres" in said:
        return "postgres"
    if "redis" in said or "valkey" in said:
        return "redis"
    return None


def holds_state(svc: ServiceDef, app: DockApp) -> bool:
    """Whether a service keeps data: a volume of the compose file's, or one its image declares."""
    declared = (app.container.attrs.get("Config") or {}).get("Volumes") or {}
    return bool(declared) or any(m.kind in ("volume", "anonymous") for m in svc.mounts)


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _Psql:
    """One ``psql`` kept running in the container, fed through the exec's stdin: a statement costs
    a round trip, not an exec (about 60 ms here each)."""

    _DONE = "__dockapp_done__"

    def __init__(self, app: DockApp, user: str, service: str):
        api = app.container.client.api
        cmd = ["psql", "-h", "127.0.0.1", "-U", user, "-d", "template1", "-XqAt", "-v", "ON_ERROR_STOP=0"]
        exec_id = api.exec_create(app.container.id, cmd, stdin=True, stdout=True, stderr=True)["Id"]
        self._stream = api.exec_start(exec_id, socket=True)
        self._sock = getattr(self._stream, "_sock", self._stream)
        self._service, self._user = service, user

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.sendall(b"\\q\n")
            self._stream.close()

    def run(self, sql: str) -> list[str]:
        """The output lines of ``sql``; an ``ERROR`` (or psql ending) is a :class:`DockappError`."""
        from docker.utils.socket import next_frame_header, read_exactly

        self._sock.sendall(f"{sql}\n\\echo {self._DONE}\n".encode())
        out: list[str] = []
        errors: list[str] = []
        buffer = ""
        while True:
            stream, size = next_frame_header(self._sock)
            if size < 0:
                errors.append("psql ended")
                break
            text = read_exactly(self._sock, size).decode("utf-8", "replace")
            if stream == 2:  # NOTICEs (a DROP ... IF EXISTS that skips) are not failures
                errors += [line for line in text.splitlines() if re.search(r"\b(ERROR|FATAL|PANIC)\b|^psql:", line)]
                continue
            buffer += text
            *lines, buffer = buffer.split("\n")
            if self._DONE in lines:
                out += lines[: lines.index(self._DONE)]
                break
            out += lines
        if errors:
            raise DockappError(
                f"service {self._service}: psql failed while putting the database back as seeded",
                evidence="\n".join(errors)[-2000:],
                evidence_title="psql said",
                hint="the seed's databases must stay droppable by the superuser "
                f"({self._user}; set POSTGRES_USER in the service's environment if it is another)",
            )
        return out


@dataclass
class PostgresState:
    """The databases of one PostgreSQL server. After the seed, each is copied to a template
    (``<name>_dockapp_seed``) and to a ready clone (``<name>_dockapp_next``). A restore closes the
    database to new connections, ends those open, and swaps the clone in by two renames (measured:
    7-14 ms in all, on one psql session kept open); the old database is dropped and the next clone
    made in the background while the test runs (on fuse-overlayfs a clone takes 90-110 ms and a
    drop 35 ms). A restore after a test that wrote nothing since the last one (the server's WAL
    position has not moved) is one query. The ``postgres`` maintenance database is left alone
    when the seed put no table in it."""

    name: str
    app: DockApp
    user: str = "postgres"
    databases: list[tuple[str, str]] = field(default_factory=list)  # (name, owner)
    _session: _Psql | None = None
    _worker: _Psql | None = None  # the background's own session
    _background: threading.Thread | None = None
    _failure: DockappError | None = None
    _clean_at: str = ""  # the WAL position when the databases were last as seeded

    def _psql(self) -> _Psql:
        if self._session is None:
            self._session = _Psql(self.app, self.user, self.name)
        return self._session

    @staticmethod
    def _names(name: str) -> tuple[str, str, str]:
        stem = name[:48]
        return stem + _SEED, stem + "_dockapp_next", stem + "_dockapp_old"

    def snapshot(self) -> None:
        psql = self._psql()
        rows = psql.run(
            "SELECT datname || '|' || pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate "
            "AND datallowconn AND datname NOT LIKE '%\\_dockapp\\_%';"
        )
        self.databases = [(r.split("|", 1)[0], r.split("|", 1)[1]) for r in rows if "|" in r]
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
            seed, ready, old = self._names(name)
            psql.run(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {_sql_text(name)} "
                "AND pid <> pg_backend_pid();\n"
                f"DROP DATABASE IF EXISTS {_sql_name(seed)};\n"
                f"DROP DATABASE IF EXISTS {_sql_name(old)};\n"
                f"DROP DATABASE IF EXISTS {_sql_name(ready)};\n"
                f"CREATE DATABASE {_sql_name(seed)} TEMPLATE {_sql_name(name)} OWNER {_sql_name(owner)};\n"
                f"CREATE DATABASE {_sql_name(ready)} TEMPLATE {_sql_name(seed)} OWNER {_sql_name(owner)};"
            )
        self._clean_at = psql.run("SELECT pg_current_wal_lsn();")[0]

    def restore(self, keep_as: str | None = None) -> list[str]:
        """Swap the clean clones in; with ``keep_as``, what a test left is kept under that name
        (``app_kept_1``), not dropped. Returns the databases kept."""
        self._wait_background()
        psql = self._psql()
        if not self.databases or psql.run("SELECT pg_current_wal_lsn();")[0] == self._clean_at:
            return []  # nothing was written since the databases were as seeded
        names = ", ".join(_sql_text(name) for name, _ in self.databases)
        sql = [f"ALTER DATABASE {_sql_name(name)} ALLOW_CONNECTIONS false;" for name, _ in self.databases]
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
        for name, _ in self.databases:
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
        # The position right after the swap: the clone work of the background moves it on, so a
        # test is taken as clean only when nothing at all was written since (never one that wrote
        # while the next clone was being made).
        self._clean_at = psql.run("\n".join([*sql, "SELECT pg_current_wal_lsn();"]))[-1]
        self._background = threading.Thread(target=self._prepare_next, name="dockapp-clone", daemon=True)
        self._background.start()
        return kept

    def keep_as_started(self) -> None:
        """Copy every database to ``<name>_dockapp_base``, for :meth:`back_to_start` in a later run
        that reuses this server (the copies live in the server, as long as it does)."""
        psql = self._psql()
        for name, owner in self._all(psql):
            base = _sql_name(name[:48] + _BASE)
            psql.run(
                f"DROP DATABASE IF EXISTS {base};\n"
                f"CREATE DATABASE {base} TEMPLATE {_sql_name(name)} OWNER {_sql_name(owner)};"
            )

    def back_to_start(self) -> None:
        """Every database as :meth:`keep_as_started` kept it, and those made since dropped (the
        last run's seed and its copies too), open connections ended first."""
        psql = self._psql()
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
    def _all(psql: _Psql, copies: bool = False) -> list[tuple[str, str]]:
        """The server's databases and owners (not ``template0``/``template1``), with our copies or not."""
        ours = "" if copies else "AND datname NOT LIKE '%\\_dockapp\\_%'"
        rows = psql.run(
            f"SELECT datname || '|' || pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate {ours};"
        )
        return [(r.split("|", 1)[0], r.split("|", 1)[1]) for r in rows if "|" in r]

    def _prepare_next(self) -> None:
        """Drop the databases the last test used and clone the next ones, on a session of its own."""
        try:
            if self._worker is None:
                self._worker = _Psql(self.app, self.user, self.name)
            for name, owner in self.databases:
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
        for session in (self._session, self._worker):
            if session is not None:
                session.close()
        self._session = self._worker = None


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class _Redis:
    """Just enough of the Redis protocol (RESP2) for dumps and restores, pipelined."""

    def __init__(self, host: str, port: int, password: str | None):
        self._sock = socket.create_connection((host, port), timeout=30)
        self._file = self._sock.makefile("rb")
        if password:
            self.call([b"AUTH", password.encode()])

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def call(self, *commands: Sequence[bytes]) -> list[Any]:
        self._sock.sendall(b"".join(_resp(*c) for c in commands))
        return [self._read() for _ in commands]

    def _read(self) -> Any:
        line = self._file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise DockappError(f"Redis answered an error: {rest.decode('utf-8', 'replace')}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._read() for _ in range(count)]
        raise DockappError(f"Redis answered something that is not RESP: {line[:40]!r}")


@dataclass
class RedisState:
    """Every key of every logical database of one Redis server, dumped once and restored."""

    name: str
    app: DockApp
    port: int = 6379
    password: str | None = None
    keys: dict[int, list[tuple[bytes, int, bytes]]] = field(default_factory=dict)  # db -> (key, ttl ms, dump)

    def _connect(self) -> _Redis:
        host_port = self.app.ports.get(self.port)
        if host_port is None:
            raise DockappError(
                f"service {self.name}: Redis port {self.port} is not published, so its keys cannot be restored",
                hint=f'add ports: ["{self.port}"] or expose: ["{self.port}"] to the service',
            )
        return _Redis(self.app.host, host_port, self.password)

    def snapshot(self) -> None:
        client = self._connect()
        try:
            info = client.call([b"INFO", b"keyspace"])[0].decode()
            self.keys = {}
            for db in (int(n) for n in re.findall(r"^db(\d+):", info, re.M)):
                client.call([b"SELECT", str(db).encode()])
                cursor, found = b"0", []
                while True:
                    cursor, batch = client.call([b"SCAN", cursor, b"COUNT", b"1000"])[0]
                    found += batch
                    if cursor == b"0":
                        break
                replies = client.call(*([b"PTTL", k] for k in found), *([b"DUMP", k] for k in found))
                ttls, dumps = replies[: len(found)], replies[len(found) :]
                self.keys[db] = [(k, max(t, 0), d) for k, t, d in zip(found, ttls, dumps) if d is not None]
        finally:
            client.close()

    def restore(self, keep_as: str | None = None) -> list[str]:
        """``FLUSHALL`` and the seeded keys back; nothing is kept (``keep_as`` is PostgreSQL's)."""
        commands: list[list[bytes]] = [[b"FLUSHALL"]]
        for db, keys in self.keys.items():
            commands.append([b"SELECT", str(db).encode()])
            commands += [[b"RESTORE", k, str(ttl).encode(), dump, b"REPLACE"] for k, ttl, dump in keys]
        client = self._connect()
        try:
            client.call(*commands)
        finally:
            client.close()
        return []

    def keep_as_started(self) -> None:
        """A Redis server starts empty (its volume is the stack's own, made new with it)."""

    def back_to_start(self) -> None:
        client = self._connect()
        try:
            client.call([b"FLUSHALL"])
        finally:
            client.close()

    def close(self) -> None:
        """Nothing stays open between restores."""


def _redis_settings(svc: ServiceDef, app: DockApp) -> tuple[int, str | None]:
    """The port and password a Redis server was started with (its command, or the environment
    variable images such as Bitnami's read)."""
    config = app.container.attrs.get("Config") or {}
    words = [str(w) for w in [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]]
    port, password = 6379, svc.environment.get("REDIS_PASSWORD") or None
    for flag, value in zip(words, words[1:]):
        if flag == "--port" and value.isdigit():
            port = int(value)
        elif flag == "--requirepass":
            password = value
    return port, password


class StackState:
    """The restorable services of a stack: :meth:`capture` after the seed, :meth:`restore`
    before each test."""

    def __init__(self, services: list[ServiceState]):
        self.services = services
        self.last_seconds = 0.0
        self.seconds: list[float] = []  # each restore's
        self.kept = 0  # databases kept for failing tests (--dockapp-keep)

    @classmethod
    def of(cls, stack: Stack) -> StackState:
        """The restorable services of ``stack`` (nothing is read yet); a stateful service of no
        known kind is a :class:`ComposeError` naming it and what to do."""
        found: list[ServiceState] = []
        for name, app in stack.services.items():
            svc = stack.project.services[name]
            kind = kind_of(svc, app)
            if kind == "postgres":
                found.append(PostgresState(name, app, svc.environment.get("POSTGRES_USER") or "postgres"))
            elif kind == "redis":
                port, password = _redis_settings(svc, app)
                found.append(RedisState(name, app, port, password))
            elif kind is not None:
                raise ComposeError(
                    f"service {name}: x-dockapp state {kind!r} is unknown",
                    hint=f"name one of: {', '.join(KINDS)}, none",
                )
            elif name != stack.main_name and svc.state != "none" and holds_state(svc, app):
                raise ComposeError(
                    f"service {name} keeps data (a volume), and dockapp_clean can put back only PostgreSQL and "
                    "Redis as they were seeded",
                    hint=f"give each test a stack of its own with dockapp_fresh, or, if {name}'s data does not "
                    "matter to the tests, mark it x-dockapp: {state: none} in the compose file",
                )
        return cls(found)

    @classmethod
    def capture(cls, stack: Stack) -> StackState:
        """Snapshot every stateful service of ``stack`` (see :meth:`of`)."""
        state = cls.of(stack)
        for service in state.services:
            service.snapshot()
        return state

    def keep_as_started(self) -> None:
        """Keep each service's data as it is now, the stack just started, for :meth:`back_to_start`
        in a later run that reuses the stack (each run then seeds it anew); its sessions end."""
        try:
            for service in self.services:
                service.keep_as_started()
        finally:
            self.close()

    def back_to_start(self) -> None:
        """Put each service back as :meth:`keep_as_started` kept it; its sessions end."""
        try:
            for service in self.services:
                service.back_to_start()
        finally:
            self.close()

    def restore(self) -> float:
        """Put every service back as seeded; the seconds it took."""
        began = time.perf_counter()
        for service in self.services:
            service.restore()
        self.last_seconds = time.perf_counter() - began
        self.seconds.append(self.last_seconds)
        return self.last_seconds

    def keep(self) -> list[tuple[ServiceState, str]]:
        """Keep what a failing test left in each PostgreSQL database (``<db>_kept_<n>``) and put
        the seed back for the next test; the services and databases kept."""
        self.kept += 1
        return [(svc, db) for svc in self.services for db in svc.restore(keep_as=f"kept_{self.kept}")]

    def summary(self) -> str | None:
        """One line for the terminal summary: how many restores, of what, how long on the tests' path."""
        if not self.seconds:
            return None
        ms = sorted(s * 1000 for s in self.seconds)
        kinds = ", ".join(
            f"{s.name} ({'postgres' if isinstance(s, PostgresState) else 'redis'})" for s in self.services
        )
        return (
            f"clean state: {len(ms)} restores of {kinds or 'nothing stateful'}: median {ms[len(ms) // 2]:.0f} ms, "
            f"max {ms[-1]:.0f} ms on the tests' path"
        )

    def close(self) -> None:
        """End what runs between restores (the next clones being made, the psql sessions)."""
        for service in self.services:
            with contextlib.suppress(Exception):  # the stack may be gone already
                service.close()


def connect_command(stack: Stack, service: str, database: str) -> str:
    """The command that opens ``database`` of ``stack``'s PostgreSQL service ``service``."""
    svc = stack.project.services[service]
    user = svc.environment.get("POSTGRES_USER") or "postgres"
    return f"docker exec -it {stack[service].name} psql -h 127.0.0.1 -U {user} -d {database}"
