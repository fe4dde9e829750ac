"""What one app is asked to be, resolved once and then passed as typed values: the test's options
(:class:`AppOptions`, frozen and hashable, so that they are the key of a warm spare and the early
start's match) and the session's context of a start (:class:`RunContext`: where ports publish,
who owns the container, the extra create arguments a compose service brings)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from pytest_dockapp.engine.cleanup import DEFAULT_REUSE_TTL, DEFAULT_SWEEP_AGE
from pytest_dockapp.run.readiness.settings import DEFAULT_TIMEOUT, parse_ready

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from pytest_dockapp.builds.pipeline import BuildPolicy
    from pytest_dockapp.builds.record import BuildRecord
    from pytest_dockapp.engine import cleanup
    from pytest_dockapp.engine.endpoint import Endpoint

Ready = Literal["auto", "listen", "http", "healthcheck"]


@dataclass(frozen=True)
class SessionOptions:
    """What a session decides once for all its builds and apps (the pytest layer resolves it from
    the settings table; a library user writes it)."""

    #: ``auto``, ``buildkit`` or ``classic``; ``auto`` asks the engine.
    builder: str = "auto"
    #: The docker CLI that drives BuildKit on an engine without the session API (found on PATH when None).
    docker_cli: str | None = None
    host_ip: str | None = None  # where ports publish (None: the endpoint's choice)
    connect_host: str | None = None  # where tests reach them (None: the endpoint's host)
    ready: Ready = "auto"  # the readiness of an app started without options
    spares: int = 2  # warm spares per image and options
    #: Sweep dead sessions' leftovers older than this (seconds) elsewhere; None: never.
    sweep_age: float | None = DEFAULT_SWEEP_AGE
    #: The sweep removes reusable apps and stacks unused this long (seconds); None: never.
    reuse_ttl: float | None = DEFAULT_REUSE_TTL
    #: Where pytest-xdist workers share builds (None: not shared).
    shared_dir: Path | None = None
    #: Reuse of unchanged builds and the registry cache; None: reuse on, no registry.
    builds: BuildPolicy | None = None


@dataclass(frozen=True)
class AppOptions:
    """A test's settings of one app. Build it with :meth:`of`, which takes the forms users write
    (a dict of env, a list command, a mapping of host ports) and freezes them."""

    port: int | str | None = None
    health_path: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    ready: Ready = "auto"
    env: tuple[tuple[str, str], ...] = ()
    command: str | tuple[str, ...] | None = None
    #: A network object (testcontainers' or the SDK's) or a name; compared by identity.
    network: Any = None
    aliases: tuple[str, ...] = ()
    host_ports: tuple[tuple[int, int], ...] = ()
    name: str | None = None

    @classmethod
    def of(
        cls,
        *,
        port: int | str | None = None,
        health_path: str | None = None,
        timeout: float | None = None,
        ready: str | None = None,
        env: Mapping[str, str] | None = None,
        command: str | Sequence[str] | None = None,
        network: Any = None,
        aliases: Sequence[str] = (),
        host_ports: Mapping[int, int] | None = None,
        name: str | None = None,
    ) -> AppOptions:
        """The options from the forms users write; ``None`` means the default."""
        return cls(
            port=port,
            health_path=health_path,
            timeout=DEFAULT_TIMEOUT if timeout is None else float(timeout),
            ready=cast(Ready, parse_ready(ready or "auto")),
            env=tuple(sorted((str(k), str(v)) for k, v in (env or {}).items())),
            command=command if command is None or isinstance(command, str) else tuple(str(c) for c in command),
            network=network,
            aliases=tuple(aliases),
            host_ports=tuple(sorted((host_ports or {}).items())),
            name=name,
        )

    @property
    def spareable(self) -> bool:
        """Whether a warm spare can stand in for this app: nothing in it is one test's own."""
        return not (self.name or self.host_ports or self.network or self.aliases)


@dataclass(frozen=True)
class InjectedFile:
    """A file copied into a container after it is created and before it starts (a compose
    secret or config): its path there, where its content comes from (a file's path, an
    environment variable's name, or inline content; never a secret's value), its mode and owner."""

    path: str
    kind: str  # file | environment | content | folder (made with its mode; ref unused)
    ref: str
    mode: int = 0o444
    uid: int = 0
    gid: int = 0
    secret: bool = False

    def content(self) -> bytes:
        """The content, read now; a missing file or variable is a :class:`ComposeError`."""
        import os

        from pytest_dockapp.core.errors import ComposeError

        what = "secret" if self.secret else "config"
        if self.kind == "folder":
            return b""
        if self.kind == "content":
            return self.ref.encode()
        if self.kind == "environment":
            if self.ref not in os.environ:
                raise ComposeError(
                    f"the {what} for {self.path} comes from the environment variable {self.ref}, which is not set",
                    hint=f"export {self.ref} before running the tests",
                )
            return os.environ[self.ref].encode()
        try:
            with open(self.ref, "rb") as file:
                return file.read()
        except OSError as exc:
            raise ComposeError(
                f"the {what} for {self.path} comes from {self.ref}, which cannot be read: {exc.strerror}",
                hint="create the file, or point the top-level entry's file: at one that exists",
            ) from None


@dataclass(frozen=True)
class NetworkJoin:
    """A network a container joins, with its names and fixed addresses there."""

    network: str
    aliases: tuple[str, ...] = ()
    ipv4_address: str | None = None
    ipv6_address: str | None = None

    def endpoint(self, api: Any) -> Any:
        """The engine API's endpoint config for the create call."""
        return api.create_endpoint_config(
            aliases=list(self.aliases) or None, ipv4_address=self.ipv4_address, ipv6_address=self.ipv6_address
        )


@dataclass(frozen=True)
class RunContext:
    """The session's side of a start: who owns the container, where its ports publish and are
    dialled, and what a compose service adds to the engine's create call."""

    owner: cleanup.Owner | None = None
    host_ip: str | None = None
    connect_host: str | None = None
    endpoint: Endpoint | None = None
    on_notice: Callable[[str], None] | None = None
    creation: Callable[[str], AbstractContextManager[None]] | None = None
    display: str | None = None
    build: BuildRecord | None = None
    #: Container ports to publish besides the EXPOSEd ones (a compose file's ports: and expose:).
    publish: tuple[int | str, ...] = ()
    #: Without a TCP port the app is ready once it runs, as a compose service without ports is.
    require_port: bool = True
    #: More arguments of the engine's create call, and of its host config.
    create: Mapping[str, Any] = field(default_factory=dict)
    host: Mapping[str, Any] = field(default_factory=dict)
    #: Files copied in between the create call and the start (a compose service's secrets and configs).
    files: tuple[InjectedFile, ...] = ()
    #: More networks to join between the create call and the start (the create call takes one).
    networks: tuple[NetworkJoin, ...] = ()
    on_started: Callable[[], None] | None = None
    #: What watches the app from inside its container (coverage): only an image built from the
    #: project's Dockerfile is given to it, never a service the user did not write.
    instrument: Instrument | None = None


@dataclass(frozen=True)
class Preparation:
    """What an :class:`Instrument` adds to a container before it starts."""

    env: tuple[tuple[str, str], ...] = ()
    files: tuple[InjectedFile, ...] = ()
    #: What another process needs to take it out later (a stack the pytest-xdist workers share).
    labels: tuple[tuple[str, str], ...] = ()


class Instrument(Protocol):
    """Watches apps from inside their containers: :meth:`prepare` before the start (None: not
    this app), :meth:`collect` before the container is removed (or after it exited)."""

    def prepare(
        self, name: str, build: BuildRecord, image: Mapping[str, Any], env: Mapping[str, str], read_only: bool
    ) -> Preparation | None: ...

    def collect(self, client: docker.DockerClient, container_id: str, name: str) -> None: ...
