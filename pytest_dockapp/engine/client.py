"""Reaching the Docker engine and finding out which builder can be used."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from pytest_dockapp.core import state_files
from pytest_dockapp.core.errors import ConfigurationError, EngineUnavailableError
from pytest_dockapp.engine.endpoint import Endpoint, resolve_endpoint

if TYPE_CHECKING:
    import docker

BuilderName = Literal["classic", "buildkit"]
BUILDER_CHOICES = ("auto", "classic", "buildkit")
#: The host address published ports bind to, unless told otherwise: loopback only.
DEFAULT_HOST_IP = "127.0.0.1"


def parse_builder(value: str) -> str:
    """One of :data:`BUILDER_CHOICES`."""
    if value not in BUILDER_CHOICES:
        raise ConfigurationError(f"{value!r} is unknown", hint="valid: " + ", ".join(BUILDER_CHOICES))
    return value


def describe_endpoint() -> str:
    """Which engine endpoint the docker SDK and CLI will try, for error messages."""
    try:
        return resolve_endpoint().describe()
    except ConfigurationError as exc:
        return f"an unreadable endpoint ({exc.what})"


#: How long one engine API call may take before the engine counts as frozen.
CALL_TIMEOUT = 30.0
#: A classic build is one API call whose answer streams the build output, and the engine sends
#: nothing while a step is silent (a `RUN` that compiles for ten minutes): the read timeout is
#: the longest silent stretch a step may have, so it must be long. A frozen engine is still found
#: in CALL_TIMEOUT + ENGINE_WATCH_EVERY by the ping of :class:`~pytest_dockapp.builds.image.EngineWatch`
#: during BuildKit builds; a classic build's stream cannot be cut from here, so it waits this out.
BUILD_TIMEOUT = 900.0
#: How often the engine is pinged while a BuildKit CLI build runs (the CLI waits forever).
ENGINE_WATCH_EVERY = 5.0

#: Each client's first ping's headers (see :func:`engine_headers`).
_FIRST_PING: weakref.WeakKeyDictionary[docker.DockerClient, Mapping[str, str]] = weakref.WeakKeyDictionary()


def is_engine_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the engine did not answer (gone, refused, frozen), not that it said no.

    A stream the engine cut mid-answer (a classic build's) reaches us as urllib3's own
    ``ProtocolError``: the SDK reads build output from the raw response, past requests."""
    import requests.exceptions
    import urllib3.exceptions

    return isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError,
            urllib3.exceptions.ReadTimeoutError,
        ),
    )


@contextlib.contextmanager
def engine_phase(phase: str, endpoint: Endpoint | None = None) -> Iterator[None]:
    """Turn a lost or frozen engine during ``phase`` into :class:`EngineUnavailableError` that names
    ``endpoint`` (default: the one the environment selects)."""
    try:
        yield
    except Exception as exc:
        if not is_engine_failure(exc):
            raise
        raise EngineUnavailableError(
            f"the Docker engine at {endpoint.describe() if endpoint else describe_endpoint()} stopped answering "
            f"while {phase}",
            evidence=str(exc),
            evidence_title="docker SDK said",
            hint=f"check the engine (docker info); each engine call is given up after {CALL_TIMEOUT:g}s. "
            "Containers this session could not remove are listed at its end, with the command that removes them",
        ) from None


def connect(timeout: float = CALL_TIMEOUT, endpoint: Endpoint | None = None) -> docker.DockerClient:
    """A docker SDK client for ``endpoint`` (default: :func:`resolve_endpoint`) that has answered a
    ping, or :class:`EngineUnavailableError`."""
    endpoint = endpoint or resolve_endpoint()
    import_sdk(ssh=endpoint.scheme == "ssh")
    import docker
    import docker.errors
    import requests.exceptions
    from docker.constants import MINIMUM_DOCKER_API_VERSION

    try:
        # One /_ping both proves the engine answers and names its API version. The SDK's
        # version="auto" asks /version instead, which costs the engine about 6 ms more here
        # (it queries containerd and runc), and a ping would still follow.
        client = docker.DockerClient(
            timeout=int(timeout), version=MINIMUM_DOCKER_API_VERSION, **endpoint.client_kwargs()
        )
        if endpoint.scheme == "ssh":
            _one_ssh_pool(client)
        _read_environment_once(client.api)
        headers = ping(client)
        _FIRST_PING[client] = headers
        api_version = headers.get("Api-Version")
        client.api._version = api_version or client.api._retrieve_server_version()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise EngineUnavailableError(
            f"no Docker engine answered at {endpoint.describe()}",
            evidence=str(exc),
            evidence_title="docker SDK said",
            hint="start the engine (dockerd / Docker Desktop) or point DOCKER_HOST at a running one",
        ) from None
    return client


def _read_environment_once(api: docker.APIClient) -> None:
    """Settle the proxy and CA bundle that requests would take from the environment, now, for
    every later call. With ``trust_env`` on, requests reads them by iterating os.environ at every
    call; from a background thread (a removal, a lease, an app's coverage taken out) that raced
    pytest's own PYTEST_CURRENT_TEST changes and failed with KeyError. A socket (unix, ssh) has no
    proxy; a tcp:// engine keeps the one the environment names for it, as the docker CLI does."""
    import requests.utils

    if api.base_url.startswith(("http://", "https://")):
        for attempt in range(3):
            try:  # read here too, maybe off the main thread (the early start): again if it moved
                api.proxies = requests.utils.get_environ_proxies(api.base_url)
                break
            except (KeyError, RuntimeError):
                if attempt == 2:
                    raise
        if api.verify is True:
            api.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    api.trust_env = False


def import_sdk(ssh: bool) -> None:
    """Import the docker SDK, without paramiko unless the endpoint is ssh://.

    The SDK imports its ssh adapter, and with it paramiko, whenever paramiko is installed (the
    ``[ssh]`` extra): 95 ms of its 190 ms import here (``python -X importtime -c "import docker"``),
    for every session on a local socket. The adapter is blocked for that import and then put back
    as a stand-in that imports it on first use, so a later ssh:// client in the same process
    (another session under pytester) still works, and without paramiko still gets the SDK's
    "Install paramiko" message.
    """
    import sys

    if ssh or "docker" in sys.modules:
        return
    name = "docker.transport.sshconn"
    blocked = name not in sys.modules
    if blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # import of it raises ImportError
    try:
        import docker.api.client
        import docker.transport
    finally:
        if blocked:
            del sys.modules[name]
    if not hasattr(docker.api.client, "SSHHTTPAdapter"):
        docker.api.client.SSHHTTPAdapter = _ssh_adapter


def _ssh_adapter(*args: Any, **kwargs: Any) -> Any:
    try:
        from docker.transport.sshconn import SSHHTTPAdapter
    except ImportError as exc:  # the SDK turns a NameError into "Install paramiko package ..."
        raise NameError("SSHHTTPAdapter") from exc
    return SSHHTTPAdapter(*args, **kwargs)


def _one_ssh_pool(client: docker.DockerClient) -> None:
    """Send every request through one pool of ssh channels. The SDK's ssh adapter keeps a pool per
    request URL, and each pool holds its channels open: a session opened its 11th channel at the
    container create and the server refused it (sshd's MaxSessions is 10 by default; seen in 5
    of 6 runs here, docker/compose#6463)."""
    adapter = getattr(client.api, "_custom_adapter", None)
    get_connection = getattr(adapter, "get_connection", None)
    if adapter is None or get_connection is None or not hasattr(adapter, "pools"):
        return

    def one_pool(url: str, proxies: Any = None) -> Any:
        return get_connection("http+docker://ssh/", proxies)

    adapter.get_connection = one_pool


def endpoint_of(client: docker.DockerClient) -> Endpoint:
    """The endpoint of a client made elsewhere, read from its base URL."""
    url = str(getattr(client.api, "base_url", "") or "")
    if url.startswith("http+docker://"):  # the SDK's spelling of a local socket or ssh
        return resolve_endpoint()
    return Endpoint(url.replace("http://", "tcp://").replace("https://", "tcp://"), "docker SDK client")


def is_podman(client: docker.DockerClient) -> bool:
    """Whether the engine is podman's Docker-compatible API (its ping names ``Libpod-Api-Version``)."""
    try:
        return "Libpod-Api-Version" in engine_headers(client)
    except Exception:
        return False


def engine_headers(client: docker.DockerClient) -> Mapping[str, str]:
    """The headers of the engine's first ``/_ping`` answer to ``client`` (what it is, its API
    version): asked once per client, not by each question (three pings per session before)."""
    headers = _FIRST_PING.get(client)
    if headers is None:
        headers = _FIRST_PING[client] = ping(client)
    return headers


def ping(client: docker.DockerClient) -> Mapping[str, str]:
    """The headers of the engine's unversioned ``/_ping`` answer."""
    api = client.api
    response = api._get(api.base_url + "/_ping")
    api._raise_for_status(response)
    headers: Mapping[str, str] = response.headers
    return headers


@dataclass(frozen=True)
class Builder:
    """The builder a build will use, how it is reached, and why it was picked."""

    name: BuilderName
    cli: str | None = None
    buildx: bool = False
    rawjson: bool = False
    endpoint: Endpoint | None = None  # the engine every CLI call must reach
    cli_version: str = ""
    buildx_version: str = ""
    why: str = ""  # said in the header when the choice is not the obvious one

    def describe(self) -> str:
        why = f"; {self.why}" if self.why else ""
        if self.name == "classic":
            return f"classic (engine API){why}"
        via = f"buildx {self.buildx_version}" if self.buildx else "DOCKER_BUILDKIT=1"
        progress = "rawjson" if self.rawjson else "plain"
        version = f" {self.cli_version}" if self.cli_version else ""
        return f"buildkit ({self.cli}{version} via {via}, --progress={progress}){why}"


@dataclass(frozen=True)
class CliInfo:
    """What a docker CLI can do: its own version, and its buildx plugin's, if any."""

    path: str
    version: str = ""
    buildx_version: str = ""

    @property
    def buildx(self) -> bool:
        return bool(self.buildx_version)

    @property
    def buildkit(self) -> bool:
        """buildx, or a CLI before 23.0, which carries its own BuildKit client (DOCKER_BUILDKIT=1)."""
        version = _version_tuple(self.version)
        return self.buildx or (bool(version) and version < (23,))

    @property
    def rawjson(self) -> bool:
        return _version_tuple(self.buildx_version) >= (0, 12)  # --progress=rawjson arrived in buildx 0.12

    def lacks(self) -> str:
        return f"{self.path} {self.version or '(version unknown)'} has no buildx and no built-in BuildKit client"


def _run(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version_tuple(text: str) -> tuple[int, ...]:
    nums = []
    for part in text.lstrip("v").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        nums.append(int(digits))
        if len(nums) == 3:
            break
    return tuple(nums)


@cache
def cli_info(cli: str) -> CliInfo:
    """What the docker CLI at ``cli`` can do.

    Asking the CLI costs two process starts (about 0.1 s); the answer is kept on disk,
    keyed by the CLI's and the buildx plugin's path, size and mtime, so only a changed
    CLI is asked again.
    """
    key = _cli_key(cli)
    path = state_files.cache_file("docker-cli.json")
    entry = state_files.load(path).get(key)
    if isinstance(entry, dict) and {"version", "buildx"} <= set(entry):
        return CliInfo(cli, str(entry["version"]), str(entry["buildx"]))
    info = _ask_cli(cli)
    state_files.update(
        path, lambda known: known.__setitem__(key, {"version": info.version, "buildx": info.buildx_version})
    )
    return info


def _cli_key(cli: str) -> str:
    home_plugins = os.path.join(os.path.expanduser("~"), ".docker", "cli-plugins")
    plugin_dirs = [
        home_plugins,
        "/usr/local/lib/docker/cli-plugins",
        "/usr/libexec/docker/cli-plugins",
        "/usr/lib/docker/cli-plugins",
    ]
    parts = []
    for path in [cli] + [os.path.join(d, "docker-buildx") for d in plugin_dirs]:
        try:
            st = os.stat(path)
        except OSError:
            continue
        parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _ask_cli(cli: str) -> CliInfo:
    client = _run([cli, "version", "--format", "{{.Client.Version}}"]) or ""
    buildx = _run([cli, "buildx", "version"]) or ""
    # "github.com/docker/buildx v0.12.1 abcdef"
    words = buildx.split()
    return CliInfo(cli, client, words[1].lstrip("v") if len(words) > 1 else "")


def docker_clis(cli: str | None = None) -> list[str]:
    """``cli`` if given, else every ``docker`` on PATH, in PATH order (one per real file)."""
    if cli:
        found = shutil.which(cli)
        return [found] if found else []
    seen: set[str] = set()
    out = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(folder or ".", "docker")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                out.append(path)
    return out


def resolve_builder(
    choice: str = "auto", cli: str | None = None, *, endpoint: Endpoint | None = None, podman: bool = False
) -> Builder:
    """Pick the builder for ``choice`` (auto, classic or buildkit), the engine, and the docker CLI:
    ``cli`` if given, else the first ``docker`` on PATH that can drive BuildKit (measured: the
    example app's cold build takes 47 s on the classic builder here, 22 s on BuildKit)."""
    parse_builder(choice)
    if podman:
        # podman's API builds with buildah behind the classic endpoint; it has no BuildKit session
        # (measured: the CLI fails with "failed to dial gRPC: unable to upgrade to h2c").
        if choice == "buildkit":
            raise ConfigurationError(
                "BuildKit was asked for, but the engine is podman, which builds only through the classic API",
                hint="use --dockapp-builder auto or classic with podman",
            )
        return Builder("classic", endpoint=endpoint, why="podman builds through the classic API")
    if choice == "classic":
        return Builder("classic", endpoint=endpoint)
    infos = [cli_info(path) for path in docker_clis(cli)]
    able = next((i for i in infos if i.buildkit), None)
    if able is not None:
        skipped = [i.lacks() for i in infos[: infos.index(able)]]
        why = f"picked over the first docker on PATH: {skipped[0]}" if skipped else ""
        return Builder(
            "buildkit", able.path, able.buildx, able.rawjson, endpoint, able.version, able.buildx_version, why
        )
    if choice == "buildkit":
        raise ConfigurationError(
            f"BuildKit was asked for, but no docker CLI here can run it ({cli or 'docker on PATH'})",
            evidence="\n".join(i.lacks() for i in infos) or "no docker CLI found",
            evidence_title="docker CLIs",
            hint="install the buildx plugin, point dockapp_docker_cli at a CLI that has it "
            "(or a CLI older than 23.0, which has BuildKit built in), or use --dockapp-builder classic",
        )
    why = "no docker CLI here can drive BuildKit" if infos else "no docker CLI found for BuildKit"
    return Builder("classic", endpoint=endpoint, why=why)


def engine_version(client: docker.DockerClient) -> str:
    """``"Docker 20.10.24 (linux)"`` or what the engine says of itself."""
    try:
        # "Server: Docker/20.10.24 (linux)" comes with every ping; /version is slower to answer.
        server = engine_headers(client).get("Server", "")
        name, _, rest = server.partition("/")
        if name and rest:
            return f"{'podman' if name == 'Libpod' else name} {rest}"
        v = client.version()
    except Exception:  # the header must never fail a run
        return "unknown engine"
    return f"Docker {v.get('Version', '?')} ({v.get('Os', '?')}/{v.get('Arch', '?')})"
