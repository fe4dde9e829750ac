"""Which engine a session reaches, and where its published ports are dialled (no engine needed)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.core.errors import ConfigurationError
from pytest_dockapp.engine.client import resolve_builder
from pytest_dockapp.engine.endpoint import DEFAULT_SOCKET, Endpoint, resolve_endpoint
from pytest_dockapp.run.app import pick_binding


def write_context(config_dir: Path, name: str, host: str) -> None:
    """A context as ``docker context create NAME --docker host=HOST`` stores it."""
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}}}))


def test_docker_host_wins_over_any_context(tmp_path: Path) -> None:
    write_context(tmp_path, "remote1", "tcp://10.0.0.9:2375")
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote1", "DOCKER_HOST": "tcp://10.0.0.7:2375"}
    assert resolve_endpoint(env).describe() == "tcp://10.0.0.7:2375 (DOCKER_HOST)"


def test_docker_context_variable_then_the_current_context(tmp_path: Path) -> None:
    write_context(tmp_path, "remote1", "tcp://10.0.0.9:2375")
    write_context(tmp_path, "remote2", "ssh://me@build-box")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "remote2"}))
    env = {"DOCKER_CONFIG": str(tmp_path)}
    assert resolve_endpoint({**env, "DOCKER_CONTEXT": "remote1"}).describe() == "tcp://10.0.0.9:2375 (context remote1)"
    current = resolve_endpoint(env)
    assert (current.url, current.context, current.hostname) == ("ssh://me@build-box", "remote2", "build-box")
    assert resolve_endpoint({"DOCKER_CONFIG": str(tmp_path / "none")}).url == DEFAULT_SOCKET


def test_an_unreadable_context_is_a_configuration_error(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "gone"}
    with pytest.raises(ConfigurationError, match="docker context 'gone' is selected, but its endpoint cannot be read"):
        resolve_endpoint(env)


def test_every_cli_call_is_pinned_to_the_resolved_engine(tmp_path: Path) -> None:
    write_context(tmp_path, "remote1", "tcp://10.0.0.9:2375")
    env = resolve_endpoint({"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote1", "PATH": "/bin"}).cli_env()
    assert env["DOCKER_HOST"] == "tcp://10.0.0.9:2375" and "DOCKER_CONTEXT" not in env and env["PATH"] == "/bin"


@pytest.mark.parametrize(
    ("url", "publish", "dial"),
    [
        ("unix:///var/run/docker.sock", "127.0.0.1", "127.0.0.1"),
        ("tcp://127.0.0.1:2375", "127.0.0.1", "127.0.0.1"),
        ("tcp://localhost:2375", "127.0.0.1", "127.0.0.1"),
        ("tcp://10.250.0.2:2375", "10.250.0.2", "10.250.0.2"),
        ("tcp://[fd00::2]:2375", "fd00::2", "fd00::2"),
        ("ssh://me@10.250.0.2", "10.250.0.2", "10.250.0.2"),
    ],
)
def test_ports_are_published_and_dialled_where_the_engine_is(url: str, publish: str, dial: str) -> None:
    endpoint = Endpoint(url, "DOCKER_HOST")
    assert (endpoint.publish_address(), endpoint.connect_host()) == (publish, dial)


def test_the_binding_of_the_dialled_address_family_is_used() -> None:
    """An engine may bind one port twice: 0.0.0.0:32777 and [::]:32776 (seen on a remote engine)."""
    bindings = [{"HostIp": "::", "HostPort": "32776"}, {"HostIp": "0.0.0.0", "HostPort": "32777"}]
    assert pick_binding(bindings, "127.0.0.1") == 32777
    assert pick_binding(bindings, "::1") == 32776
    assert pick_binding([{"HostIp": "", "HostPort": "40000"}], "10.0.0.1") == 40000


def test_podman_builds_classic_and_refuses_buildkit() -> None:
    assert resolve_builder("auto", podman=True).name == "classic"
    with pytest.raises(ConfigurationError, match="the engine is podman, which builds only through the classic API"):
        resolve_builder("buildkit", podman=True)


def test_podman_tags_are_matched_without_their_registry_prefix() -> None:
    from pytest_dockapp.engine.cleanup import normalize_tag

    assert normalize_tag("docker.io/pytest-dockapp/cache-check:x") == "pytest-dockapp/cache-check:x"
    assert normalize_tag("localhost/pytest-dockapp/app:1") == "pytest-dockapp/app:1"
    assert normalize_tag("pytest-dockapp/app:1") == "pytest-dockapp/app:1"
    assert normalize_tag("docker.io/busybox:1") == "docker.io/busybox:1"


def fake_cli(folder: Path, version: str, buildx: str = "") -> Path:
    """A ``docker`` that answers only the two questions the builder choice asks."""
    folder.mkdir()
    cli = folder / "docker"
    buildx_answer = f'echo "github.com/docker/buildx v{buildx} abc"; exit 0' if buildx else "exit 1"
    cli.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = version ]; then echo {version}; exit 0; fi\n'
        f'if [ "$1" = buildx ]; then {buildx_answer}; fi\n'
        "exit 1\n"
    )
    cli.chmod(0o755)
    return cli


def test_auto_finds_buildkit_in_any_docker_on_path_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen here: docker on PATH is 28 without buildx, /usr/bin/docker 20.10 drives BuildKit; auto
    used to build classic (47 s for the example app, against 22 s)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    new = fake_cli(tmp_path / "new", "28.2.2")
    old = fake_cli(tmp_path / "old", "20.10.24")
    monkeypatch.setenv("PATH", f"{new.parent}:{old.parent}")
    builder = resolve_builder("auto")
    assert (builder.name, builder.cli, builder.buildx) == ("buildkit", str(old), False)
    assert builder.describe() == (
        f"buildkit ({old} 20.10.24 via DOCKER_BUILDKIT=1, --progress=plain); picked over the first docker on "
        f"PATH: {new} 28.2.2 has no buildx and no built-in BuildKit client"
    )
    monkeypatch.setenv("PATH", str(new.parent))
    assert resolve_builder("auto").describe() == "classic (engine API); no docker CLI here can drive BuildKit"
    with pytest.raises(ConfigurationError, match="no docker CLI here can run it"):
        resolve_builder("buildkit")
    with_buildx = fake_cli(tmp_path / "bx", "28.2.2", buildx="0.12.1")
    assert resolve_builder("auto", str(with_buildx)).describe() == (
        f"buildkit ({with_buildx} 28.2.2 via buildx 0.12.1, --progress=rawjson)"
    )


def test_a_local_session_skips_paramikos_import_and_a_later_ssh_client_still_gets_it() -> None:
    """paramiko was 95 ms of the SDK's 190 ms import, for every session on a local socket."""
    code = """
import sys
from pytest_dockapp.engine.client import import_sdk
import_sdk(ssh=False)
import docker
assert "paramiko" not in sys.modules, "paramiko imported for a local engine"
client = docker.APIClient(base_url="ssh://root@127.0.0.1:1", version="1.41", use_ssh_client=True)
assert type(client._custom_adapter).__name__ == "SSHHTTPAdapter"
assert "paramiko" in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


class _EnvironmentInFlux(dict[str, str]):
    """``os.environ`` as a background thread may see it while pytest's main thread sets and
    removes PYTEST_CURRENT_TEST: a key listed, then gone when read."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise KeyError("PYTEST_CURRENT_TEST")

    def items(self):  # type: ignore[no-untyped-def]
        raise KeyError("PYTEST_CURRENT_TEST")

    def keys(self):  # type: ignore[no-untyped-def]
        raise KeyError("PYTEST_CURRENT_TEST")


def _fake_engine() -> tuple[str, Any]:
    """An HTTP server on loopback that answers a ping and an empty container list, as an engine would."""
    import http.server
    import threading

    class Engine(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"OK" if "/_ping" in self.path else b"[]"
            self.send_response(200)
            self.send_header("Api-Version", "1.41")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"tcp://127.0.0.1:{server.server_address[1]}", server


@pytest.mark.parametrize("engine", ["the local socket", "tcp"])
def test_engine_calls_never_read_the_whole_environment_so_a_background_call_cannot_race_pytest(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal, a lease or an app's coverage runs its engine calls in background threads while
    pytest changes PYTEST_CURRENT_TEST: a call that iterated os.environ (requests does, for proxy
    settings, at every call) failed with KeyError. The settings are read once, at connect."""
    from pytest_dockapp.engine.client import connect

    for name in ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    url, server = _fake_engine()
    try:
        endpoint = Endpoint(url, "DOCKER_HOST", environ={"DOCKER_HOST": url}) if engine == "tcp" else None
        client = connect(endpoint=endpoint)
        monkeypatch.setattr("os.environ", _EnvironmentInFlux(os.environ))
        assert isinstance(client.api.containers(limit=1), list)
    finally:
        server.shutdown()


def test_a_tcp_engine_is_reached_through_the_proxy_the_environment_names_at_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_dockapp.engine.client import connect

    url, server = _fake_engine()
    try:
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("HTTP_PROXY", url.replace("tcp://", "http://"))  # the fake engine is its own proxy
        engine = "tcp://engine.invalid:2375"
        client = connect(endpoint=Endpoint(engine, "DOCKER_HOST", environ={"DOCKER_HOST": engine}))
        assert client.api.containers() == []  # engine.invalid resolves nowhere: the proxy answered
    finally:
        server.shutdown()
