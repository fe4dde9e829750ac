"""Which engine a session talks to, decided once, for the docker SDK and every CLI call alike.

The docker SDK reads ``DOCKER_HOST`` but ignores docker contexts, while the CLI (which runs
BuildKit builds) follows the current context. Left alone, the two can build on one engine and
run on another. :func:`resolve_endpoint` follows the CLI's order (``DOCKER_HOST``, then
``DOCKER_CONTEXT``, then the config's ``currentContext``), and :meth:`Endpoint.cli_env` pins
every CLI call to the same engine.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pytest_dockapp.core.errors import ConfigurationError

#: What a unix socket URL means when nothing else is set.
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
#: Where published ports are dialled for an engine on this machine.
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Endpoint:
    """An engine's address (``unix://…``, ``tcp://host:port``, ``ssh://user@host``) and where it came from."""

    url: str
    source: str  # "DOCKER_HOST", "context NAME", "default socket"
    context: str | None = None
    #: For a context's TLS: the folder with ca.pem, cert.pem and key.pem (the CLI's layout).
    cert_path: str | None = None
    tls_verify: bool = False
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme or "unix"

    @property
    def hostname(self) -> str | None:
        """The engine's host name or address for tcp:// and ssh://; None for local sockets."""
        if self.scheme in ("unix", "npipe", "fd"):
            return None
        return urlsplit(self.url).hostname

    @property
    def is_local(self) -> bool:
        """Whether published ports are reachable on this machine's loopback (unix socket, or a
        tcp:// address of this machine's own loopback)."""
        host = self.hostname
        if host is None:
            return True
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def connect_host(self) -> str:
        """Where published ports are dialled: the engine's host, or loopback for a local engine."""
        return LOOPBACK if self.is_local else str(self.hostname)

    def publish_address(self) -> str:
        """The host address published ports bind to on the engine: loopback for a local engine (not
        reachable from the network), the engine's own address for a remote one."""
        if self.is_local:
            return LOOPBACK
        host = str(self.hostname)
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        try:
            return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
        except OSError:
            return "0.0.0.0"  # cannot tell which address the engine has: every address, documented

    def describe(self) -> str:
        return f"{self.url} ({self.source})"

    def cli_env(self) -> dict[str, str]:
        """The environment for a docker CLI call that must reach this engine and no other."""
        env = dict(self.environ or os.environ)
        env.pop("DOCKER_CONTEXT", None)  # DOCKER_HOST must decide, not a context the CLI would pick
        env["DOCKER_HOST"] = self.url
        if self.cert_path:
            env["DOCKER_CERT_PATH"] = self.cert_path
            if self.tls_verify:
                env["DOCKER_TLS_VERIFY"] = "1"
        return env

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``docker.DockerClient`` that reach this engine."""
        from docker.utils import kwargs_from_env

        if self.source == "DOCKER_HOST":
            kwargs: dict[str, Any] = kwargs_from_env(environment=dict(self.environ or os.environ))
        else:
            kwargs = {"base_url": self.url}
            if self.cert_path:
                kwargs["tls"] = _context_tls(self.cert_path, self.tls_verify)
        if self.scheme == "ssh":
            _require_paramiko()
        return kwargs


def _context_tls(cert_path: str, verify: bool) -> Any:
    from docker.tls import TLSConfig

    def file(name: str) -> str | None:
        path = os.path.join(cert_path, name)
        return path if os.path.exists(path) else None

    cert, key = file("cert.pem"), file("key.pem")
    return TLSConfig(
        client_cert=(cert, key) if cert and key else None, ca_cert=file("ca.pem"), verify=verify and file("ca.pem")
    )


def _require_paramiko() -> None:
    """The docker SDK reaches ssh:// engines through paramiko. Its other way, the OpenSSH client
    (``use_ssh_client``), starts one ssh process per connection, and its socket's close wrote to
    the pipe of an exited ``dial-stdio`` after an exec: BrokenPipeError in 2 of 4 runs here."""
    import importlib.util

    if importlib.util.find_spec("paramiko") is None:
        raise ConfigurationError(
            "an ssh:// engine needs paramiko, which is not installed",
            hint="pip install 'pytest-dockapp[ssh]'",
        )


def resolve_endpoint(environ: Mapping[str, str] | None = None) -> Endpoint:
    """The engine the docker CLI would use: ``DOCKER_HOST``, ``DOCKER_CONTEXT``, the current context."""
    env = dict(os.environ if environ is None else environ)
    host = env.get("DOCKER_HOST")
    if host:
        return Endpoint(host, "DOCKER_HOST", environ=env)
    name = env.get("DOCKER_CONTEXT") or _current_context(env)
    if not name or name == "default":
        return Endpoint(DEFAULT_SOCKET, "default socket", environ=env)
    return _context_endpoint(name, env)


def _config_dir(env: Mapping[str, str]) -> str:
    """The docker CLI's configuration folder."""
    return env.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def _current_context(env: Mapping[str, str]) -> str | None:
    import json

    try:
        with open(os.path.join(_config_dir(env), "config.json"), encoding="utf-8") as fh:
            name = json.load(fh).get("currentContext")
    except (OSError, ValueError, AttributeError):
        return None
    return str(name) if name else None


def _context_endpoint(name: str, env: Mapping[str, str]) -> Endpoint:
    """Read a context's endpoint from the CLI's store (``contexts/meta/<sha256 of name>/meta.json``)."""
    import hashlib
    import json

    config_dir = _config_dir(env)
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = os.path.join(config_dir, "contexts", "meta", digest, "meta.json")
    try:
        with open(meta, encoding="utf-8") as fh:
            docker_endpoint = json.load(fh)["Endpoints"]["docker"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigurationError(
            f"docker context {name!r} is selected, but its endpoint cannot be read",
            evidence=meta,
            evidence_title="looked for",
            hint="docker context ls shows the contexts; select another (docker context use NAME) or set DOCKER_HOST",
        ) from None
    tls_dir = os.path.join(config_dir, "contexts", "tls", digest, "docker")
    return Endpoint(
        str(docker_endpoint.get("Host") or DEFAULT_SOCKET),
        f"context {name}",
        context=name,
        cert_path=tls_dir if os.path.isdir(tls_dir) else None,
        tls_verify=not docker_endpoint.get("SkipTLSVerify", False),
        environ=env,
    )
