"""Redis (and Valkey) put back as seeded: every key dumped with its time to live, restored
pipelined on the published port."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_dockapp.core.errors import DockappError

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp


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

    how = ""  # one way

    name: str
    app: DockApp
    port: int = 6379
    password: str | None = None
    keys: dict[int, list[tuple[bytes, int, bytes]]] = field(default_factory=dict)  # db -> (key, ttl ms, dump)

    def command(self, container: str, database: str) -> str:
        """(A restore keeps no database of Redis: it rewrites every key.)"""
        return f"docker exec -it {container} redis-cli -p {self.port} -n {database}"

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


def redis_settings(app: DockApp, env: Mapping[str, str]) -> tuple[int, str | None]:
    """The port and password a Redis server was started with (its command, or the environment
    variable images such as Bitnami's read, in ``env``)."""
    config = app.container.attrs.get("Config") or {}
    words = [str(w) for w in [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]]
    port, password = 6379, env.get("REDIS_PASSWORD") or None
    for flag, value in zip(words, words[1:]):
        if flag == "--port" and value.isdigit():
            port = int(value)
        elif flag == "--requirepass":
            password = value
    return port, password
