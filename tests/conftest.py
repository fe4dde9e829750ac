"""Fixtures for pytest-dockapp's own tests (plain helpers are in helpers.py).

Integration tests use the real engine and local bases only (no registry):
``dockapp-test/busybox:1`` (FROM scratch + static busybox) and, for the example
app, ``dockapp-test/node:bookworm``; ``.ci/make-bases`` builds both when missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    BUSYBOX,
    ENDPOINT,
    ENGINE_IS_LOCAL,
    MARIADB_BASE,
    NODE_BASE,
    POSTGRES13_BASE,
    POSTGRES_BASE,
    PYTHON_BASE,
    REDIS_BASE,
    ROOT,
    SUITE_RUN_LABEL,
    App,
    ci_engine,
    find_buildkit_cli,
    leftover_names,
    strict,
)


def pytest_configure(config: pytest.Config) -> None:
    # Launched as a background job of a shell without job control (`cmd &` in a script), this
    # process, and every session the suite starts, would ignore SIGINT: the Ctrl-C tests would
    # see sessions that cannot be interrupted. A handler here is reset to the default at exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Every session the suite starts (in-process or as a subprocess) inherits this.
    labels = [os.environ.get("DOCKAPP_LABELS", ""), SUITE_RUN_LABEL]
    os.environ["DOCKAPP_LABELS"] = ",".join(filter(None, labels))
    config.addinivalue_line(
        "markers", "local_engine(reason): needs the engine on this machine (loopback ports, /proc); skipped elsewhere"
    )
    config.addinivalue_line(
        "markers", "remote: in the subset .ci/run also runs against a second engine reached over tcp://"
    )
    config.addinivalue_line("markers", "remote_engine: needs the second engine (DOCKAPP_TEST_REMOTE_HOST)")


#: The images the engine had when this suite run began: the run removes only the images it made.
_IMAGES_BEFORE = pytest.StashKey[set[str]]()
#: What the suite's sessions build, by repository: removed at the end unless KEEP_IMAGES is set.
BUILT_REPOS = ("pytest-dockapp/", "dockapp-test/corpus-")
KEEP_IMAGES = "DOCKAPP_TEST_KEEP_IMAGES"


def _engine() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:
        return None
    return client


def pytest_sessionstart(session: pytest.Session) -> None:
    client = None if os.environ.get(KEEP_IMAGES) or hasattr(session.config, "workerinput") else _engine()
    if client is not None:
        session.config.stash[_IMAGES_BEFORE] = {i["Id"] for i in client.api.images(all=True)}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The suite leaves no image of its own behind (about 30 tags per run, and a cache-warm tag
    per cache check, before this); the local bases stay. ``DOCKAPP_TEST_KEEP_IMAGES=1`` keeps
    them, to look at or to make the next run's builds cached."""
    before = session.config.stash.get(_IMAGES_BEFORE, None)
    client = _engine() if before is not None else None
    if client is None or before is None:
        return
    import docker.errors

    removed = 0
    for image in client.api.images():
        if image["Id"] in before:
            continue
        for tag in image.get("RepoTags") or []:
            if tag.startswith(BUILT_REPOS):
                try:
                    client.api.remove_image(tag)  # never forced: another live session's lease keeps it
                    removed += 1
                except docker.errors.APIError:
                    pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and removed:
        reporter.write_line(f"removed the {removed} image tags this suite run built ({KEEP_IMAGES}=1 keeps them)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENGINE_IS_LOCAL:
        return
    for item in items:
        marker = item.get_closest_marker("local_engine")
        if marker is not None:
            reason = marker.args[0] if marker.args else "needs a local engine"
            item.add_marker(pytest.mark.skip(reason=f"engine at {ENDPOINT.describe()} is not local: {reason}"))


@pytest.fixture(scope="session")
def remote_host(pytestconfig: pytest.Config) -> str:
    """The second engine's DOCKER_HOST (.ci/remote-engine start), with the busybox base loaded."""
    host = ci_engine("DOCKAPP_TEST_REMOTE_HOST", "a second engine", ".ci/remote-engine start")
    remote = {**os.environ, "DOCKER_HOST": host}
    remote.pop("DOCKER_CONTEXT", None)
    if subprocess.run(["docker", "image", "inspect", BUSYBOX], env=remote, capture_output=True).returncode:
        save = subprocess.Popen(["docker", "save", BUSYBOX], stdout=subprocess.PIPE)
        subprocess.run(["docker", "load", "-q"], env=remote, stdin=save.stdout, check=True, capture_output=True)
        save.wait()
    return host


@pytest.fixture
def on_podman(monkeypatch: pytest.MonkeyPatch) -> Any:
    """podman's Docker API (``.ci/podman-engine start``) as the session's engine; its client."""
    import docker

    host = ci_engine("DOCKAPP_TEST_PODMAN_HOST", "podman's service", ".ci/podman-engine start")
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.setenv("CONTAINERS_CONF", "/etc/dockapp-podman/containers.conf")
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    return docker.DockerClient(base_url=host)


@pytest.fixture(scope="session")
def remote_client(remote_host: str) -> Any:
    import docker

    return docker.DockerClient(base_url=remote_host)


@pytest.fixture(scope="session")
def docker_client(pytestconfig: pytest.Config) -> Any:
    """The real engine; its absence fails the suite in strict mode (CI) and skips otherwise."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        if strict(pytestconfig):
            pytest.fail(f"no Docker engine for the integration tests: {exc}", pytrace=False)
        pytest.skip(f"no Docker engine: {exc}")
    return client


def _ensure_base(client: Any, name: str, which: str) -> str:
    """``name`` on the engine, built by ``.ci/make-bases which`` when missing."""
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        subprocess.run([str(ROOT / ".ci" / "make-bases"), which], check=True)
    return name


@pytest.fixture(scope="session")
def busybox(docker_client: Any) -> str:
    """The tiny local base image most test Dockerfiles start FROM."""
    return _ensure_base(docker_client, BUSYBOX, "busybox")


@pytest.fixture(scope="session")
def node_base(docker_client: Any) -> str:
    """A local nodejs+npm base (mmdebstrap, built once when missing)."""
    return _ensure_base(docker_client, NODE_BASE, "node")


@pytest.fixture(scope="session")
def redis_base(docker_client: Any) -> str:
    """A local redis-server base (mmdebstrap, built once when missing)."""
    return _ensure_base(docker_client, REDIS_BASE, "redis")


@pytest.fixture(scope="session")
def postgres_base(docker_client: Any) -> str:
    """A local PostgreSQL 15 base (mmdebstrap, built once when missing)."""
    return _ensure_base(docker_client, POSTGRES_BASE, "postgres")


@pytest.fixture(scope="session")
def postgres13_base(docker_client: Any) -> str:
    """A local PostgreSQL 13 base (Debian 11's, mmdebstrap, built once when missing)."""
    return _ensure_base(docker_client, POSTGRES13_BASE, "postgres13")


@pytest.fixture(scope="session")
def mariadb_base(docker_client: Any) -> str:
    """A local MariaDB 10.11 base (mmdebstrap, built once when missing)."""
    return _ensure_base(docker_client, MARIADB_BASE, "mariadb")


@pytest.fixture(scope="session")
def python_base(docker_client: Any) -> str:
    """A local python3 (3.11) base (mmdebstrap, built once when missing)."""
    return _ensure_base(docker_client, PYTHON_BASE, "python")


@pytest.fixture(scope="session")
def buildkit_cli(pytestconfig: pytest.Config) -> str:
    cli = find_buildkit_cli()
    if cli is None:
        if strict(pytestconfig):
            pytest.fail("no docker CLI here can run BuildKit (no buildx, no CLI < 23.0)", pytrace=False)
        pytest.skip("no docker CLI here can run BuildKit")
    return cli


@pytest.fixture(params=["classic", "buildkit"])
def builder_args(request: pytest.FixtureRequest) -> list[str]:
    """Command-line options for each builder; the test runs once per builder."""
    if request.param == "classic":
        return ["--dockapp-builder", "classic"]
    cli = request.getfixturevalue("buildkit_cli")
    # "--opt=value": a bare path argument would make pytest pick its rootdir from it
    return ["--dockapp-builder=buildkit", f"--dockapp-docker-cli={cli}"]


@pytest.fixture
def no_leaks(docker_client: Any) -> Iterator[None]:
    """Fails the test if a session it started left a labelled container or network behind.

    Only this suite run's own resources count (they carry its ``SUITE_RUN_LABEL``): other
    projects and other runs of this suite may use the same engine at the same time.
    """
    before = set(leftover_names(docker_client, SUITE_RUN_LABEL))
    yield
    after = set(leftover_names(docker_client, SUITE_RUN_LABEL)) - before
    assert not after, f"leaked containers/volumes/networks: {sorted(after)}"


@pytest.fixture
def app(
    pytester: pytest.Pytester, busybox: str, no_leaks: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> App:
    # pytester makes the project folder HOME; the plugin's cache files (~/.cache/pytest-dockapp)
    # would then sit in the build context and change it between runs.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return App(pytester, busybox)
