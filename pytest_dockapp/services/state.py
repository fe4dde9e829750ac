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

import re
import socket
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


class ServiceState(Protocol):
    name: str

    def snapshot(self) -> None: ...

    def restore(self) -> None: ...


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


@dataclass
class PostgresState:
    """The databases of one PostgreSQL server, each restored from a template of its seed."""

    name: str
    app: DockApp
    user: str = "postgres"
    databases: list[tuple[str, str]] = field(default_factory=list)  # (name, owner)
    version: int = 0

    def _psql(self, *commands: str) -> str:
        # Over loopback TCP, which official images and others trust inside the container, wherever
        # the server puts its socket.
        cmd = [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            self.user,
            "-d",
            "template1",
            "-v",
            "ON_ERROR_STOP=1",
            "-X",
            "-q",
            "-At",
        ]
        for command in commands:
            cmd += ["-c", command]
        code, out = self.app.container.exec_run(cmd)
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        if code != 0:
            raise DockappError(
                f"service {self.name}: psql failed while putting the database back as seeded",
                evidence=text.strip()[-2000:],
                evidence_title="psql said",
                hint="the seed's databases must stay droppable by the superuser "
                f"({self.user}; set POSTGRES_USER in the service's environment if it is another)",
            )
        return text

    def _strategy(self) -> str:
        # FILE_COPY (PostgreSQL 15+) copies the template's files instead of logging every block:
        # the faster way for the small databases of a test seed.
        return " STRATEGY FILE_COPY" if self.version >= 150000 else ""

    def snapshot(self) -> None:
        rows = self._psql(
            "SHOW server_version_num",
            "SELECT datname || '|' || pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate "
            f"AND datallowconn AND datname NOT LIKE {_sql_text('%' + _SEED)}",
        ).split()
        self.version = int(rows[0])
        self.databases = [tuple(r.split("|", 1)) for r in rows[1:]]  # type: ignore[misc]
        commands = []
        for name, owner in self.databases:
            seed = name[:50] + _SEED
            commands += [
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {_sql_text(name)}"
                " AND pid <> pg_backend_pid()",
                f"DROP DATABASE IF EXISTS {_sql_name(seed)}",
                f"CREATE DATABASE {_sql_name(seed)} TEMPLATE {_sql_name(name)} OWNER {_sql_name(owner)}"
                + self._strategy(),
            ]
        self._psql(*commands)

    def restore(self) -> None:
        commands = []
        for name, owner in self.databases:
            seed = name[:50] + _SEED
            if self.version >= 130000:
                commands.append(f"DROP DATABASE IF EXISTS {_sql_name(name)} WITH (FORCE)")
            else:
                commands += [
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {_sql_text(name)}",
                    f"DROP DATABASE IF EXISTS {_sql_name(name)}",
                ]
            commands.append(
                f"CREATE DATABASE {_sql_name(name)} TEMPLATE {_sql_name(seed)} OWNER {_sql_name(owner)}"
                + self._strategy()
            )
        self._psql(*commands)


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

    def restore(self) -> None:
        commands: list[list[bytes]] = [[b"FLUSHALL"]]
        for db, keys in self.keys.items():
            commands.append([b"SELECT", str(db).encode()])
            commands += [[b"RESTORE", k, str(ttl).encode(), dump, b"REPLACE"] for k, ttl, dump in keys]
        client = self._connect()
        try:
            client.call(*commands)
        finally:
            client.close()


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

    @classmethod
    def capture(cls, stack: Stack) -> StackState:
        """Snapshot every stateful service of ``stack``; a stateful service of no known kind is a
        :class:`ComposeError` naming it and what to do."""
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
        for service in found:
            service.snapshot()
        return cls(found)

    def restore(self) -> float:
        """Put every service back as seeded; the seconds it took."""
        began = time.perf_counter()
        for service in self.services:
            service.restore()
        self.last_seconds = time.perf_counter() - began
        return self.last_seconds
