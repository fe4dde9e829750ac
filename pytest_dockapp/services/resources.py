"""What a stack makes besides its containers: its networks and volumes. External ones are
checked and used by name, never removed; the stack's own carry the session's labels and are
removed with it. What the project asks of the engine (platforms, runtime) is checked first."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from pytest_dockapp.core.errors import ComposeError
from pytest_dockapp.engine import cleanup

if TYPE_CHECKING:
    import docker

    from pytest_dockapp.services.compose import NetworkDef, Project
    from pytest_dockapp.services.service import ServiceDef

#: The label that names a stack on its containers, networks and volumes.
STACK_LABEL = cleanup.PREFIX + "stack"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


class StackResources:
    """The networks and volumes of one stack named ``name``; :meth:`create` before the first
    container, :meth:`remove` after the last."""

    def __init__(
        self,
        client: docker.DockerClient,
        project: Project,
        name: str,
        owner: cleanup.Owner,
        creation: Callable[[str], contextlib.AbstractContextManager[None]],
    ):
        self._client, self._project, self._name, self._owner = client, project, name, owner
        self._creation = creation
        self._networks: list[str] = []  # IDs of the networks this stack made
        self._volumes: list[str] = []  # names of the volumes this stack made

    def network(self, key: str) -> str:
        """The engine's name of the project's network ``key`` (the default one: the stack's name)."""
        net = self._project.networks.get(key)
        if net is not None and net.external:
            return net.external
        return self._name if key == "default" else f"{self._name}_{key}"

    def volume(self, key: str) -> str:
        """The engine's name of the project's volume ``key``."""
        return self._project.external_volumes.get(key) or f"{self._name}_{key}"

    def create(self) -> None:
        """Check what exists outside the stack, then make the stack's own networks and volumes."""
        check_engine(self._client, self._project)
        api = self._client.api
        for key, net in self._project.networks.items():
            if not net.external:
                with self._created(f"network {self.network(key)}"):
                    self._networks.append(self._create_network(key, net))
        for key in self._project.volumes:
            name = self.volume(key)
            with self._creation(f"volume {name}"):
                api.create_volume(name, labels={**self._owner.labels("volume"), STACK_LABEL: self._name})
                self._volumes.append(name)

    @contextlib.contextmanager
    def _created(self, what: str) -> Iterator[None]:
        import docker.errors

        with self._creation(what):
            try:
                yield
            except docker.errors.APIError as exc:
                text = str(exc.explanation or exc)
                if "overlaps" not in text:
                    raise
                raise ComposeError(
                    f"cannot create {what}: its fixed ipam subnet overlaps a network the engine already has",
                    evidence=text,
                    evidence_title="engine said",
                    hint="a fixed subnet allows one stack at a time on an engine: leave ipam out for the tests if the "
                    "services do not rely on fixed addresses, and run one stack for all workers "
                    "(dockapp_compose_scope = session)",
                ) from None

    def _create_network(self, key: str, net: NetworkDef) -> str:
        import docker.types

        api = self._client.api
        ipam = None
        if net.pools:
            ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(**dict(p)) for p in net.pools])
        created = api.create_network(
            self.network(key),
            driver="bridge",
            internal=net.internal,
            enable_ipv6=net.enable_ipv6,
            ipam=ipam,
            options=dict(net.options) or None,
            labels={**dict(net.labels), **self._owner.labels("network"), STACK_LABEL: self._name},
        )
        return str(created["Id"])

    def names(self) -> list[str]:
        """What this stack made: what to name when the engine stopped answering."""
        return [*(n[:12] for n in self._networks), *self._volumes]

    def remove(self, errors: list[Exception]) -> None:
        """Remove the networks and volumes this stack made; each failure goes to ``errors``."""
        import docker.errors

        from pytest_dockapp.engine.cleanup import remove_network

        for network in self._networks:
            try:
                remove_network(self._client, network)
            except Exception as exc:
                errors.append(exc)
        self._networks.clear()
        for volume in self._volumes:
            try:
                self._client.api.remove_volume(volume)
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(exc)
        self._volumes.clear()


def check_engine(client: docker.DockerClient, project: Project) -> None:
    """What the project needs of the engine, checked before anything is made: its external
    networks and volumes exist, each service's ``platform`` and ``runtime`` are the engine's, and
    its ``build.platforms`` hold the platform it runs."""
    import docker.errors

    where = " + ".join(str(f) for f in project.files)
    external = [("volume", k, n, client.api.inspect_volume) for k, n in project.external_volumes.items()]
    external += [
        ("network", k, d.external, client.api.inspect_network) for k, d in project.networks.items() if d.external
    ]
    for kind, key, name, inspect in external:
        try:
            inspect(name)
        except docker.errors.NotFound:
            raise ComposeError(
                f"{where}: {kind} {key} is external: true, but the engine has no {kind} {name!r}",
                hint=f"create it first (docker {kind} create {name}), or drop external: to let the stack make one",
            ) from None
    wanted = [s for s in project.services.values() if s.engine.platform or s.engine.runtime or _platforms(s)]
    if not wanted:
        return
    info = client.info()
    arch = _ARCH.get(str(info.get("Architecture")), str(info.get("Architecture")))
    engine_platform = f"{info.get('OSType') or 'linux'!s}/{arch}"
    runtimes = sorted(info.get("Runtimes") or {})
    for svc in wanted:
        platform = (svc.engine.platform or "").lower()
        if platform and not (engine_platform == platform or platform.startswith(engine_platform + "/")):
            raise ComposeError(
                f"{where}: service {svc.name} asks for platform {platform}, and the engine runs {engine_platform}",
                hint="run the tests on an engine of that platform, or skip the key for the tests "
                "(dockapp_compose_ignore = platform) to run the engine's own",
            )
        built = _platforms(svc)
        runs = platform or engine_platform
        if built and not any(_same_platform(p, runs) for p in built):
            raise ComposeError(
                f"{where}: service {svc.name} builds for platforms {', '.join(built)}, and runs on {runs}"
                + ("" if platform else " (the engine's)"),
                hint=f"add {runs} to its build.platforms (compose needs it there too, to run what it built), or skip "
                "the key for the tests (dockapp_compose_ignore = build.platforms) to build for the engine's own",
            )
        if svc.engine.runtime and svc.engine.runtime not in runtimes:
            raise ComposeError(
                f"{where}: service {svc.name} asks for runtime {svc.engine.runtime!r}, which the engine does not "
                f"have (it has: {', '.join(runtimes) or 'none listed'})",
                hint="register that runtime with the engine, or skip the key with dockapp_compose_ignore = runtime",
            )


def _platforms(svc: ServiceDef) -> tuple[str, ...]:
    """The service's ``build.platforms``: only the one it runs is built, so it must be among them."""
    return svc.build.platforms if svc.build is not None else ()


def _same_platform(wanted: str, runs: str) -> bool:
    """Whether ``wanted`` names the platform ``runs``, a variant of it too (``linux/arm64/v8``)."""
    return wanted == runs or wanted.startswith(runs + "/") or runs.startswith(wanted + "/")
