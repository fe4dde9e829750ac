"""Running an image as a ready service: publish ports, wait, hand out, tear down."""

from __future__ import annotations

import contextlib
import itertools
import re
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict

import requests  # the docker SDK imports it anyway

from pytest_dockapp.core.errors import ContainerError, ContainerGoneError, PortError, ReadinessTimeoutError, tail
from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine.client import endpoint_of, is_engine_failure
from pytest_dockapp.run.options import AppOptions, RunContext
from pytest_dockapp.run.readiness.logs import log_tail
from pytest_dockapp.run.readiness.wait import ProbeTarget, Readiness, WaitPlan, wait_ready

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container
    from typing_extensions import Unpack

    from pytest_dockapp.builds.record import BuildRecord

_counter = itertools.count(1)


def parse_port(value: int | str) -> tuple[int, str]:
    """``80``, ``"80"`` or ``"80/tcp"`` as ``(80, "tcp")``."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"(\d{1,5})(?:/(tcp|udp|sctp))?", text)
    if not m or not 0 < int(m.group(1)) < 65536:
        raise PortError(f"{value!r} is not a port", hint="valid forms: 8080, 8080/tcp")
    return int(m.group(1)), m.group(2) or "tcp"


def pick_binding(bindings: Sequence[Mapping[str, str]], dial: str) -> int:
    """The host port of the binding whose address family is the one ``dial`` is reached by: an
    engine may publish one container port twice (``0.0.0.0:32777`` and ``[::]:32776``)."""
    import socket

    try:
        family = socket.getaddrinfo(dial, None, type=socket.SOCK_STREAM)[0][0]
    except OSError:
        family = socket.AF_INET
    want_v6 = family == socket.AF_INET6
    for binding in bindings:
        if (":" in (binding.get("HostIp") or "")) == want_v6:
            return int(binding["HostPort"])
    return int(bindings[0]["HostPort"])


def _network_name(network: Any) -> str:
    """Accepts a name, a docker SDK network or a testcontainers ``Network``."""
    return network if isinstance(network, str) else str(network.name)


class RequestArgs(TypedDict, total=False):
    """The keyword arguments of ``requests``' calls that :class:`DockApp`'s HTTP helpers pass on."""

    params: Any
    data: Any
    headers: Mapping[str, str] | None
    cookies: Any
    files: Any
    auth: Any
    timeout: float | tuple[float, float] | None
    allow_redirects: bool
    proxies: MutableMapping[str, str] | None
    hooks: Any
    stream: bool | None
    verify: bool | str | None
    cert: str | tuple[str, str] | None
    json: Any


@dataclass
class DockApp:
    """A running, ready container and easy ways to talk to it."""

    container: Container
    image: str
    host: str
    ports: dict[int, int]
    port: int | None
    container_port: int | None
    name: str
    readiness: Readiness
    build: BuildRecord | None = None
    #: In a compose stack: the service's name, and every running service of its stack by name.
    service: str | None = None
    services: Mapping[str, DockApp] = field(default_factory=dict, repr=False)
    _session: requests.Session | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # Short: pytest -vv prints the reprs of assertion operands, in the terminal and in JUnit
        # XML, and the whole dataclass carried the build record with every step's output.
        url = f"http://{self.host}:{self.port}" if self.port is not None else None
        return f"DockApp(name={self.name!r}, image={self.image!r}, url={url!r})"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` for the main port."""
        if self.port is None:
            raise PortError(f"{self.name} publishes no port, so it has no URL")
        return f"http://{self.host}:{self.port}"

    @property
    def session(self) -> requests.Session:
        """A ``requests.Session`` whose relative URLs resolve against :attr:`url`."""
        if self._session is None:
            self._session = _BaseUrlSession(self.url)
        return self._session

    def request(self, method: str, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        """``method`` on ``path`` (relative to :attr:`url`) through :attr:`session`, with
        ``requests``' own keyword arguments and a 30 s timeout unless one is given."""
        self._check_alive()
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, path, **kwargs)

    def get(self, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def head(self, path: str = "/", **kwargs: Unpack[RequestArgs]) -> requests.Response:
        return self.request("HEAD", path, **kwargs)

    def logs(self, tail: int | None = None, since: float | None = None, timestamps: bool = False) -> str:
        """The container's stdout and stderr as text (each line after the engine's RFC 3339
        time stamp, with ``timestamps``)."""
        kwargs: dict[str, Any] = {
            "stdout": True,
            "stderr": True,
            "tail": "all" if tail is None else tail,
            "timestamps": timestamps,
        }
        if since is not None:
            kwargs["since"] = float(since)
        raw = self.container.client.api.logs(self.container.id, **kwargs)
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    def exec(self, cmd: str | Sequence[str]) -> tuple[int, str]:
        """Run ``cmd`` in the container: ``(exit code, combined output)``."""
        self._check_alive()
        code, out = self.container.exec_run(cmd)
        return int(code), out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)

    def exit_status(self) -> str | None:
        """None while the container runs; else how it ended (exit code, OOM, when)."""
        import docker.errors

        try:
            state = self.container.client.api.inspect_container(self.container.id)["State"]
        except docker.errors.NotFound:
            return "its container no longer exists: it was removed outside this test session"
        except Exception as exc:  # refused, gone or frozen: a report must not fail on it
            return f"its state is unknown: {type(exc).__name__}: {exc}"
        if state.get("Running"):
            return None
        oom = ", killed by the kernel: out of memory" if state.get("OOMKilled") else ""
        return f"exited with code {state.get('ExitCode')}{oom} at {state.get('FinishedAt', '?')}"

    def record(self) -> dict[str, Any]:
        """What another process needs to find this app again (:meth:`from_record`; JSON-able)."""
        return {
            "id": self.container.id,
            "name": self.name,
            "image": self.image,
            "host": self.host,
            "ports": {str(k): v for k, v in self.ports.items()},
            "port": self.port,
            "container_port": self.container_port,
            "ready": [self.readiness.seconds, self.readiness.checks],
        }

    @classmethod
    def from_record(cls, client: docker.DockerClient, data: Mapping[str, Any], service: str | None = None) -> DockApp:
        """The app :meth:`record` describes, as its container is now (``NotFound`` if it is gone)."""
        return cls(
            container=client.containers.prepare_model(client.api.inspect_container(data["id"])),
            image=data["image"],
            host=data["host"],
            ports={int(k): v for k, v in data["ports"].items()},
            port=data["port"],
            container_port=data["container_port"],
            name=data["name"],
            readiness=Readiness(*data["ready"]),
            service=service,
        )

    def _check_alive(self) -> None:
        import docker.errors

        try:
            state = self.container.client.api.inspect_container(self.container.id)["State"]
        except docker.errors.NotFound:
            raise ContainerGoneError(
                f"container {self.name} no longer exists: it was removed outside this test session",
                hint="something removed it (docker rm, a cleanup job, an engine restart); rerun the tests",
            ) from None
        if not state.get("Running"):
            raise ContainerGoneError(
                f"container {self.name} is not running any more (status {state.get('Status')}, "
                f"exit code {state.get('ExitCode')})",
                evidence=tail(self.logs(tail=30), 30),
                evidence_title="container log (last lines)",
                hint="it stopped after it became ready: it crashed, or was killed outside the session",
            )


class _BaseUrlSession(requests.Session):
    """A ``requests.Session`` that resolves relative URLs against the app's base URL."""

    def __init__(self, base: str):
        super().__init__()
        self.base = base.rstrip("/")

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        url = request.url
        if isinstance(url, str) and not re.match(r"^[a-z][a-z0-9+.-]*://", url, re.I):
            request.url = self.base + "/" + url.lstrip("/")
        return super().prepare_request(request)


class AppRunner:
    """Context manager: start a container from ``image``, wait until ready, remove it on exit.

    >>> with AppRunner(client, "my-image", health_path="/health") as app:
    ...     assert app.get("/").ok
    """

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        options: AppOptions | None = None,
        context: RunContext | None = None,
    ):
        options = options or AppOptions()
        context = context or RunContext()
        self.client = client
        self.image = image
        #: Held while the container is created and recorded: the manager's guard against a
        #: creation that races its close (a start in the background when the session ends).
        self.creation = context.creation or (lambda what: contextlib.nullcontext())
        self.display = context.display or image
        self.on_notice = context.on_notice
        self.owner = context.owner or cleanup.Owner()
        self.port = options.port
        self.host_ports = dict(options.host_ports)
        endpoint = context.endpoint or endpoint_of(client)
        #: The address published ports bind to on the engine, and the one they are dialled at here.
        host_ip = context.host_ip
        self.host_ip = host_ip or endpoint.publish_address()
        specific = host_ip not in (None, "", "0.0.0.0", "::")
        self.connect_host: str = context.connect_host or (
            host_ip if host_ip and specific and endpoint.is_local else endpoint.connect_host()
        )
        self.ready: str = options.ready
        self.podman = False  # set by the manager: podman's exec wants a slower, growing pace
        self.env = dict(options.env)
        self.command = list(options.command) if isinstance(options.command, tuple) else options.command
        self.network = options.network
        self.aliases = list(options.aliases)
        self.health_path = options.health_path
        self.timeout = options.timeout
        self.build = context.build
        self.publish = [parse_port(p) for p in context.publish]
        self.require_port = context.require_port
        self.options = dict(context.create)
        self.host_options = dict(context.host)
        self.files = context.files
        self.joins = context.networks
        self.on_started = context.on_started
        self.instrument = context.instrument if context.build is not None else None
        self._instrumented = False
        self._image_attrs: dict[str, Any] = {}
        name = options.name
        # Named after the tag (``display``) when the image is run by ID.
        slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", self.display.split("/")[-1].split(":")[0])[:30] or "app"
        self.name_given = bool(name)
        self.name = name or f"dockapp-{slug}-{self.owner.id[:8]}-{next(_counter)}"
        self.container_id: str | None = None
        self.created = False  # a container was made (it may be removed since)
        self.left_behind: str | None = None  # the name of a container the engine did not let us remove
        self.app: DockApp | None = None
        self.teardown_seconds: float | None = None

    def __enter__(self) -> DockApp:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _main_port(self, exposed: list[tuple[int, str]]) -> tuple[int, str] | None:
        if self.port is not None:
            wanted = parse_port(self.port)
            if wanted[1] != "tcp":
                raise PortError(
                    f"main port {self.port} is {wanted[1].upper()}: pytest-dockapp can only tell when a TCP "
                    "port is ready (a UDP service accepts nothing to probe)",
                    hint="set dockapp_port to a TCP port the app serves; other EXPOSEd ports, UDP included, "
                    "are published all the same (see app.ports)",
                )
            if exposed and wanted not in exposed:
                raise PortError(
                    f"port {self.port} is not EXPOSEd by image {self.display}",
                    hint="the image exposes "
                    + ", ".join(f"{p}/{proto}" for p, proto in exposed)
                    + "; set dockapp_port to one of them",
                )
            return wanted
        tcp = sorted(p for p in exposed if p[1] == "tcp")
        return tcp[0] if tcp else None

    def start(self) -> DockApp:
        """Create, start and wait; on any failure (Ctrl-C too) the container is removed."""
        main, publish = self._ports()
        begin = time.perf_counter()
        try:
            self._prepare(publish)
            self._run()
            if self.on_started is not None:
                self.on_started()
            container = self.client.containers.prepare_model(self.client.api.inspect_container(self.container_id))
            host_map = {
                int(key.split("/")[0]): pick_binding(bindings, self.connect_host)
                for key, bindings in (container.attrs["NetworkSettings"].get("Ports") or {}).items()
                if bindings
            }
            if self.host_options.get("network_mode") == "host":  # on the engine host's own ports
                host_map = {port: port for port, _ in publish}
            host_port = host_map.get(main) if main is not None else None
            readiness = wait_ready(
                self.client,
                container.id,
                ProbeTarget(self.connect_host, host_port, main),
                WaitPlan(self.ready, self.health_path, self.timeout).for_engine(podman=bool(self.podman)),
                name=self.name,
                attrs=container.attrs,
                on_notice=self.on_notice,
            )
            readiness.seconds = time.perf_counter() - begin
        except BaseException as exc:
            if is_engine_failure(exc):  # another call would wait out the timeout again
                self.left_behind, self.container_id = self.name, None
            with contextlib.suppress(Exception):  # the error that stopped the start is the one to tell
                self.close()
            raise
        self.app = DockApp(
            container=container,
            image=self.image,
            host=self.connect_host,
            ports=host_map,
            port=host_map.get(main) if main is not None else None,
            container_port=main,
            name=self.name,
            readiness=readiness,
            build=self.build,
        )
        return self.app

    def run_to_end(self) -> tuple[int, DockApp]:
        """Create and start the container, and wait (up to the timeout) until it exits: a one-shot
        job, such as a migration a compose service waits for with ``service_completed_successfully``."""
        _, publish = self._ports()
        try:
            container_id = self._prepare(publish)
            self._run()
            begin = time.perf_counter()
            try:
                code = int(self.client.api.wait(container_id, timeout=self.timeout)["StatusCode"])
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
                # urllib3 raises a read timeout inside the response as a ConnectionError
                if not isinstance(exc, requests.exceptions.ReadTimeout) and "timed out" not in str(exc).lower():
                    raise
                raise ReadinessTimeoutError(
                    f"{self.name} did not finish within {self.timeout:g}s",
                    evidence=log_tail(self.client, container_id, 30),
                    evidence_title="container log (last lines)",
                    hint="a service others wait for with service_completed_successfully must exit; raise "
                    "dockapp_timeout if it is just slow",
                ) from None
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        attrs = self.client.api.inspect_container(self.container_id)
        self.app = DockApp(
            container=self.client.containers.prepare_model(attrs),
            image=self.image,
            host=self.connect_host,
            ports={},
            port=None,
            container_port=None,
            name=self.name,
            readiness=Readiness(time.perf_counter() - begin, f"exited with code {code}"),
            build=self.build,
        )
        return code, self.app

    def _ports(self) -> tuple[int | None, list[tuple[int, str]]]:
        """The main TCP port, and every port to publish (the EXPOSEd ones and the main one)."""
        import docker.errors

        try:
            attrs = self.client.api.inspect_image(self.image)
        except docker.errors.ImageNotFound:
            raise ContainerError(
                f"image {self.display} is not on the engine (any more)",
                hint="something removed it since it was built or named (docker rmi, a prune, another "
                "session's cleanup); rerun, or build or load it again",
            ) from None
        self._image_attrs = attrs
        exposed = sorted(
            {parse_port(p) for p in (attrs.get("Config") or {}).get("ExposedPorts") or {}} | set(self.publish)
        )
        main = self._main_port(exposed)
        if main is None and not self.require_port:
            return None, exposed
        if main is None:
            raise PortError(
                f"image {self.display} EXPOSEs no TCP port, so there is nothing to wait for or connect to",
                hint="add `EXPOSE <port>` to the Dockerfile, or set dockapp_port = <port> "
                "(ini, --dockapp-port, or port= on dockapp_factory)",
            )
        return main[0], sorted(set(exposed) | {main})

    def _create(self, publish: list[tuple[int, str]]) -> str:
        """Create the container (labelled, unprivileged, its ports published on the host address)."""
        import docker.errors

        api = self.client.api
        bindings = {f"{p}/{proto}": (self.host_ip, self.host_ports.get(p)) for p, proto in publish}
        if self.host_options.get("network_mode") == "host":
            bindings = {}  # the engine discards published ports on the host's network
        try:
            # The low-level calls: the SDK's containers.create() and reload() each add an inspect.
            created = api.create_container(
                self.image,
                command=self.command,
                name=self.name,
                detach=True,
                ports=publish,
                environment=self.env,
                **{**self.options, "labels": {**self.options.get("labels", {}), **self.owner.labels("container")}},
                host_config=api.create_host_config(port_bindings=bindings, privileged=False, **self.host_options),
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise ContainerError(
                    f"cannot create container {self.name}: the name is taken",
                    evidence=str(exc.explanation or exc),
                    evidence_title="engine said",
                    hint=f"choose another name= (or none: the plugin makes unique names), or remove the other "
                    f"container (docker rm -f {self.name}) if it is a leftover",
                ) from None
            raise
        return str(created["Id"])

    def _prepare(self, publish: list[tuple[int, str]]) -> str:
        """Create the container, copy its files in and join its other networks: all that comes
        before the start. Returns the container's ID."""
        if self.instrument is not None and self.build is not None and not self._instrumented:
            read_only = bool(self.host_options.get("read_only"))
            prepared = self.instrument.prepare(self.name, self.build, self._image_attrs, self.env, read_only)
            if prepared is not None:
                self.env.update(prepared.env)
                self.files = (*self.files, *prepared.files)
                self.options["labels"] = {**self.options.get("labels", {}), **dict(prepared.labels)}
                self._instrumented = True
        with self.creation(f"container {self.name}"):
            self.container_id = container_id = self._create(publish)
            self.created = True
        self._copy_files()
        for join in self.joins:
            self.client.api.connect_container_to_network(
                self.container_id,
                join.network,
                aliases=list(join.aliases) or None,
                ipv4_address=join.ipv4_address,
                ipv6_address=join.ipv6_address,
            )
        return container_id

    def _copy_files(self) -> None:
        """Copy the context's files (a compose service's secrets and configs) into the created
        container, with their mode and owner. A copy works on a remote engine too, where a bind
        mount would name a path on the engine's host, and it honours uid, gid and mode, which a
        bind mount of the user's file cannot (compose's own limit for file secrets)."""
        import io
        import tarfile

        import docker.errors

        if not self.files:
            return
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for item in self.files:
                data = item.content()
                info = tarfile.TarInfo(item.path.lstrip("/"))
                info.size, info.mode, info.uid, info.gid = len(data), item.mode, item.uid, item.gid
                if item.kind == "folder":
                    info.type = tarfile.DIRTYPE
                info.mtime = int(time.time())
                archive.addfile(info, io.BytesIO(data))
        try:
            self.client.api.put_archive(self.container_id, "/", buffer.getvalue())
        except docker.errors.APIError as exc:
            paths = ", ".join(item.path for item in self.files)
            raise ContainerError(
                f"cannot copy {paths} into {self.name} before it starts",
                evidence=str(exc.explanation or exc),
                evidence_title="engine said",
                hint="a read_only: true service takes its secrets and configs only where the engine can write: "
                "mount a tmpfs or volume there, or drop read_only for the tests"
                if self.host_options.get("read_only")
                else "check the target paths of the service's secrets: and configs:",
            ) from None

    def _run(self) -> None:
        """Join the network, if any, and start; the engine's refusals become errors that say why."""
        import docker.errors

        assert self.container_id is not None
        if self.network is not None:
            self.client.networks.get(_network_name(self.network)).connect(
                self.container_id, aliases=self.aliases or None
            )
        try:
            self.client.api.start(self.container_id)
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc)
            if "port is already allocated" in text or "address already in use" in text:
                raise PortError(
                    f"cannot publish {self.name}'s ports: a fixed host port is already in use",
                    evidence=text,
                    evidence_title="engine said",
                    hint="free that port, or let the plugin pick a random host port (drop host_ports)",
                ) from None
            if "cannot assign requested address" in text:
                raise PortError(
                    f"cannot publish {self.name}'s ports on {self.host_ip}: the engine's host has no such address",
                    evidence=text,
                    evidence_title="engine said",
                    hint="set dockapp_host_ip to an address of the engine's host, or 0.0.0.0 (every address: "
                    "reachable from its network); dockapp_connect_host says where to dial them from here",
                ) from None
            hint = "check the image's CMD/ENTRYPOINT and the command= you passed"
            if "rlimit" in text:  # runc's words when a limit is above what the engine itself may grant
                hint = (
                    "a ulimit of the container is above what the engine may grant (its own hard limit, or the "
                    "kernel's fs.nr_open): lower it (compose: ulimits), or skip it for the tests "
                    "(dockapp_compose_ignore = ulimits)"
                )
            raise ContainerError(
                f"container {self.name} from {self.display} failed to start",
                evidence=text,
                evidence_title="engine said",
                hint=hint,
            ) from None

    def close(self) -> None:
        """Remove the container and its anonymous volumes (idempotent). When the engine does not
        answer, the container is recorded in :attr:`left_behind` and the error raised."""
        if self.container_id is not None:
            if self._instrumented and self.instrument is not None:
                self.instrument.collect(self.client, self.container_id, self.name)  # it tells its own failures
            try:
                self.teardown_seconds = cleanup.remove_container(self.client, self.container_id)
            except Exception as exc:
                if is_engine_failure(exc):
                    self.left_behind = self.name
                    self.container_id = None
                raise
            self.container_id = None
        if self.app is not None and self.app._session is not None:
            self.app._session.close()
