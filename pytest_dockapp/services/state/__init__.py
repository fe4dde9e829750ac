"""A stack's stateful services put back as they were seeded, before each test, in place:

* **PostgreSQL**: after the seed, each database's tables are copied inside it, and the database
  to a template and a ready clone; a restore puts back the rows of the tables a test changed, or,
  after a change of the schema (or where a clone was faster), swaps the clone in under the name
  the app already uses (:mod:`~pytest_dockapp.services.state.postgres`).
* **MariaDB** (and MySQL): each table's rows copied after the seed; per test, the rows a test
  wrote put back where the server counts each table's writes, every table refilled otherwise
  (:mod:`~pytest_dockapp.services.state.mariadb`).
* **Redis** (and Valkey): after the seed, every key of every logical database is dumped with its
  time to live; a restore is ``FLUSHALL`` and the keys ``RESTORE``d, pipelined in one round
  trip on the published port.

A service is recognised by its image and command, or named in the compose file
(``x-dockapp: {state: postgres | redis | mariadb | none}``). A service that holds state the plugin
cannot restore (a volume, and no known kind) is named by :func:`unrestorable`: the pytest layer
then gives each test a fresh stack, or, where a seed ran on the session's stack (which a fresh
stack would not have), :meth:`StackState.of` says what to do.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Protocol

from pytest_dockapp.core.errors import ComposeError
from pytest_dockapp.services.state.mariadb import MariaDBState
from pytest_dockapp.services.state.postgres import PostgresState
from pytest_dockapp.services.state.redis import RedisState, redis_settings
from pytest_dockapp.services.state.session import environment

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.services.service import ServiceDef
    from pytest_dockapp.services.stack import Stack

__all__ = [
    "KINDS",
    "MariaDBState",
    "PostgresState",
    "RedisState",
    "ServiceState",
    "StackState",
    "kind_of",
    "unrestorable",
]

KINDS = ("postgres", "redis", "mariadb")


class ServiceState(Protocol):
    name: str

    @property
    def how(self) -> str:
        """How a restore puts it back, where it chose ("" where there is one way)."""
        ...

    def snapshot(self) -> None: ...

    def restore(self, keep_as: str | None = None) -> list[str]: ...

    def command(self, container: str, database: str) -> str:
        """The command that opens ``database`` (one :meth:`restore` kept) in ``container``."""
        ...

    def keep_as_started(self) -> None: ...

    def back_to_start(self) -> None: ...

    def close(self) -> None: ...


def kind_of(svc: ServiceDef, app: DockApp) -> str | None:
    """``postgres``, ``redis``, ``mariadb`` or None: what the compose file names, else what the image and its
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
    if "mariadb" in said or "mysql" in said:
        return "mariadb"
    return None


def holds_state(svc: ServiceDef, app: DockApp) -> bool:
    """Whether a service keeps data: a volume of the compose file's, or one its image declares."""
    declared = (app.container.attrs.get("Config") or {}).get("Volumes") or {}
    return bool(declared) or any(m.kind in ("volume", "anonymous") for m in svc.mounts)


def unrestorable(stack: Stack) -> list[str]:
    """The services of ``stack`` that keep data (a volume) of no kind a restore knows, bar the main
    app and those marked ``x-dockapp: {state: none}``."""
    found = []
    for name, app in stack.services.items():
        svc = stack.project.services[name]
        if name != stack.main_name and svc.state is None and kind_of(svc, app) is None and holds_state(svc, app):
            found.append(name)
    return found


class StackState:
    """The restorable services of a stack: :meth:`capture` after the seed, :meth:`restore`
    before each test."""

    def __init__(self, services: list[ServiceState]):
        self.services = services
        self.last_seconds = 0.0
        self.seconds: list[float] = []  # each restore's
        self.kept = 0  # databases kept for failing tests (--dockapp-keep)

    @classmethod
    def of(cls, stack: Stack, *, strict: bool = True) -> StackState:
        """The restorable services of ``stack`` (nothing is read yet); a stateful service of no
        known kind is a :class:`ComposeError` naming it and what to do (without ``strict``, it is
        left out: what a reused stack's reset puts back)."""
        found: list[ServiceState] = []
        for name, app in stack.services.items():
            svc = stack.project.services[name]
            kind = kind_of(svc, app)
            env = environment(app, svc.environment)  # an image's ENV may name the user or password
            if kind == "postgres":
                found.append(PostgresState(name, app, env.get("POSTGRES_USER") or "postgres"))
            elif kind == "redis":
                port, password = redis_settings(app, env)
                found.append(RedisState(name, app, port, password))
            elif kind == "mariadb":
                found.append(
                    MariaDBState(name, app, "root", env.get("MARIADB_ROOT_PASSWORD") or env.get("MYSQL_ROOT_PASSWORD"))
                )
            elif kind is not None:
                raise ComposeError(
                    f"service {name}: x-dockapp state {kind!r} is unknown",
                    hint=f"name one of: {', '.join(KINDS)}, none",
                )
        odd = unrestorable(stack) if strict else []
        if odd:
            name = odd[0]
            raise ComposeError(
                f"service {name} keeps data (a volume), and dockapp_clean can put back only PostgreSQL, "
                "MariaDB (MySQL) and Redis as they were seeded; dockapp_seed seeds the session's stack once, "
                "so a fresh stack per test would start without the seed",
                hint=f"give each test a stack of its own with dockapp_fresh and seed it in the test, or, if {name}'s "
                "data does not matter to the tests, mark it x-dockapp: {state: none} in the compose file",
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
        """Keep what a failing test left in each PostgreSQL and MariaDB database (``<db>_kept_<n>``)
        and put the seed back for the next test; the services and databases kept."""
        self.kept += 1
        return [(svc, db) for svc in self.services for db in svc.restore(keep_as=f"kept_{self.kept}")]

    def summary(self) -> str | None:
        """One line for the terminal summary: how many restores, of what, how long on the tests' path."""
        if not self.seconds:
            return None
        ms = sorted(s * 1000 for s in self.seconds)
        kinds = ", ".join(
            f"{s.name} ({type(s).__name__.removesuffix('State').lower()}{': ' + s.how if s.how else ''})"
            for s in self.services
        )
        return (
            f"clean state: {len(ms)} restores of {kinds or 'nothing stateful'}: median {ms[len(ms) // 2]:.1f} ms, "
            f"max {ms[-1]:.0f} ms on the tests' path"
        )

    def close(self) -> None:
        """End what runs between restores (the next clones being made, the psql sessions)."""
        for service in self.services:
            with contextlib.suppress(Exception):  # the stack may be gone already
                service.close()
