"""Helpers shared by pytest-dockapp's own tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine.client import cli_info
from pytest_dockapp.engine.endpoint import resolve_endpoint

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = "dockapp-test/busybox:1"
REDIS_BASE = "dockapp-test/redis:bookworm"
POSTGRES_BASE = "dockapp-test/postgres:bookworm"
POSTGRES13_BASE = "dockapp-test/postgres:13-bullseye"
PYTHON_BASE = "dockapp-test/python:bookworm"
MARIADB_BASE = "dockapp-test/mariadb:bookworm"
NODE_BASE = os.environ.get("DOCKAPP_TEST_NODE_BASE", "dockapp-test/node:bookworm")

#: The engine this suite runs against, and where its published ports are dialled.
ENDPOINT = resolve_endpoint()
ENGINE_IS_LOCAL = ENDPOINT.is_local
DIAL_HOST = ENDPOINT.connect_host()

#: The test file most acceptance tests run: the busybox httpd serves "hello".
HOME_TEST = """
def test_home(dockapp):
    r = dockapp.get("/")
    assert r.status_code == 200
    assert r.text == "hello\\n"
"""


def strict(config: pytest.Config) -> bool:
    return bool(config.getoption("dockapp_strict") or os.environ.get("DOCKAPP_STRICT") or os.environ.get("CI"))


def ci_engine(variable: str, what: str, script: str) -> str:
    """The address of an extra engine that ``.ci/run`` starts (``what``, by ``script``) and names in
    ``variable``: CI must have it, a newcomer's first run skips the tests that need it."""
    value = os.environ.get(variable)
    if not value:
        if os.environ.get("CI"):
            pytest.fail(f"{variable} is not set: .ci/run starts {what}", pytrace=False)
        pytest.skip(f"{what} is not running: run {script} and set {variable}")
    return value


def find_buildkit_cli() -> str | None:
    """A docker CLI that can run BuildKit builds here, if any."""
    for candidate in (shutil.which("docker"), "/usr/bin/docker", "/usr/local/bin/docker"):
        if candidate and os.path.exists(candidate) and cli_info(candidate).buildkit:
            return candidate
    return None


#: Every session this suite run starts labels its resources with this (``DOCKAPP_LABELS``, set in
#: conftest.py), so that leak checks see this run's resources only.
SUITE_RUN_LABEL = f"org.pytest-dockapp.test.suite-run={uuid.uuid4().hex[:12]}"


def leftover_names(client: Any, label: str | None = None) -> list[str]:
    """Names of labelled containers (leases included), volumes and networks; of ``label`` only, if given."""
    if label is None:
        return cleanup.leftovers(client)
    names = [c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters={"label": label})]
    names += [v["Name"] for v in (client.api.volumes(filters={"label": label}) or {}).get("Volumes") or []]
    return names + [n["Name"] for n in client.api.networks(filters={"label": label})]


class App:
    """Writes a small app project (Dockerfile + files) into a pytester dir."""

    def __init__(self, pytester: pytest.Pytester, busybox: str):
        self.pytester = pytester
        self.busybox = busybox

    def dockerfile(self, body: str, name: str = "Dockerfile", path: Path | None = None) -> Path:
        target = (path or self.pytester.path) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(body).lstrip().replace("{BUSYBOX}", self.busybox))
        return target

    def httpd(
        self,
        extra: str = "",
        cmd: str = '["httpd", "-f", "-p", "80", "-h", "/www"]',
        expose: str = "EXPOSE 80",
        path: Path | None = None,
    ) -> Path:
        """A busybox httpd that serves /www/index.html ("hello"), in ``path`` (default: the project)."""
        return self.dockerfile(
            f"""
            FROM {{BUSYBOX}}
            RUN mkdir -p /www && echo hello > /www/index.html
            {extra}
            {expose}
            CMD {cmd}
            """,
            path=path,
        )


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]


def wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the session never became ready"
        time.sleep(0.05)


HOLD_TEST = """
import os, time

def test_hold(dockapp):
    with open("ready-" + os.environ["HOLDER"], "w") as fh:
        fh.write(str(os.getpid()))
    while not os.path.exists("release-" + os.environ["HOLDER"]):
        time.sleep(0.05)
"""


def start_holder(pytester: pytest.Pytester, name: str, test: str = HOLD_TEST) -> subprocess.Popen[str]:
    """A pytest session in the background that runs ``test`` (by default: hold its `dockapp`
    until released), once it has written ``ready-<name>``."""
    pytester.makepyfile(test_hold=test)
    proc = subprocess.Popen(
        pytest_cmd("test_hold.py"),
        cwd=pytester.path,
        env={**os.environ, "HOLDER": name},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for(pytester.path / f"ready-{name}", proc)
    return proc


class EngineProxy:
    """A unix-socket proxy in front of the engine: ``kill()`` makes the engine vanish mid-session
    (every connection is cut and none is accepted), ``freeze()`` makes it hang (connections are
    accepted, nothing is answered). Point a session at it with ``DOCKER_HOST=proxy.url``."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock"):
        import socket
        import threading

        self.path, self.target = path, target
        self.url = f"unix://{path}"
        self.frozen = threading.Event()
        self.dead = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.dead.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            while self.frozen.is_set() and not self.dead.is_set():
                time.sleep(0.05)
            if not data or self.dead.is_set():
                break
            try:
                dst.sendall(data)
            except OSError:
                return
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(2)

    def freeze(self) -> None:
        self.frozen.set()

    def kill(self) -> None:
        self.dead.set()
        for sock in [self._listener, *self._socks]:
            with contextlib.suppress(OSError):
                sock.shutdown(2)
            with contextlib.suppress(OSError):
                sock.close()


def expect_error(pytester: pytest.Pytester, *args: str, lines: list[str], outcome: str = "errors") -> pytest.RunResult:
    """Run the project's HOME_TEST with ``args``: one test ends in ``outcome``, and the output
    has ``lines`` (fnmatch patterns, in order)."""
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest(*args)
    result.assert_outcomes(**{outcome: 1})
    result.stdout.fnmatch_lines(lines)
    return result
