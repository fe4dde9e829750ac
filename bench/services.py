"""A three-service stack (an app built from a Dockerfile, PostgreSQL, Redis; the app waits for
both to be healthy): one pytest session with one test, against the raw compose CLI.

    python bench/services.py --runs 3

- dockapp: ``python -m pytest`` with ``dockapp_compose = compose.yaml`` and one test using
  ``dockapp`` (start, build reuse or build, stack start, the test, teardown);
- compose: ``docker-compose up -d --build`` (compose v1 from Debian's packages), a readiness
  loop (both health checks healthy and the app answering HTTP), then ``docker-compose down -v -t 0``
  (SIGKILL at once, as the plugin removes containers);
- pytest-docker (``--pytest-docker-python``: a venv with pytest-docker, which this project does
  not depend on): the same session with its ``docker_services`` fixture on compose v1
  (``up --build -d``: v1 has no ``--wait``; compose itself waits for the health checks the app
  depends on), ``wait_until_responsive`` on the app, ``down -v -t 0``;
- with ``--xdist``: 8 tests under ``-n 4``, ``dockapp_compose_scope`` session and worker, and
  the builds and stacks each run made.

Whole processes, variants interleaved run by run, medians (min-max). Needs the local bases
(``.ci/make-bases busybox redis postgres``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCKERFILE = """FROM dockapp-test/busybox:1
RUN mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""
COMPOSE = """services:
  web:
    build: .
    ports: ["80"]
    depends_on:
      db: {condition: service_healthy}
      cache: {condition: service_healthy}
  db:
    image: dockapp-test/postgres:bookworm
    healthcheck: {test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}
  cache:
    image: dockapp-test/redis:bookworm
    healthcheck: {test: [CMD, redis-cli, ping], interval: 1s, retries: 30}
"""
TEST = "def test_first(dockapp):\n    assert dockapp.get('/').status_code == 200\n"
XDIST_TEST = """
import pytest

@pytest.mark.parametrize("n", range(8))
def test_many(dockapp, n):
    assert dockapp.get('/').status_code == 200
"""
PYTEST_DOCKER_CONFTEST = """
import urllib.request
import pytest

@pytest.fixture(scope="session")
def docker_compose_command():
    return "docker-compose"

@pytest.fixture(scope="session")
def docker_compose_file(pytestconfig):
    return str(pytestconfig.rootpath / "compose.yaml")

@pytest.fixture(scope="session")
def docker_setup():
    return ["up --build -d"]

@pytest.fixture(scope="session")
def docker_cleanup():
    return ["down -v -t 0"]

@pytest.fixture(scope="session")
def web(docker_ip, docker_services):
    url = f"http://{docker_ip}:{docker_services.port_for('web', 80)}/"

    def answers():
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    docker_services.wait_until_responsive(check=answers, timeout=60, pause=0.1)
    return url
"""
PYTEST_DOCKER_TEST = (
    "import urllib.request\n\ndef test_first(web):\n    assert urllib.request.urlopen(web).status == 200\n"
)


def session(python: str, folder: Path, *args: str) -> tuple[float, str]:
    begin = time.perf_counter()
    out = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=folder, check=True,
                         capture_output=True, text=True)  # fmt: skip
    return time.perf_counter() - begin, out.stdout


def compose(folder: Path, n: int) -> float:
    """``up -d --build``, every health check healthy and the app answering, ``down -v -t 0``."""
    project = ["docker-compose", "-p", f"bench-{folder.parent.name}-{folder.name}-{n}"]
    begin = time.perf_counter()
    subprocess.run([*project, "up", "-d", "--build"], cwd=folder, check=True, capture_output=True)
    try:
        while True:
            ids = subprocess.check_output([*project, "ps", "-q"], cwd=folder, text=True).split()
            health = subprocess.check_output(
                ["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", *ids], text=True
            ).split()
            port = subprocess.check_output([*project, "port", "web", "80"], cwd=folder, text=True).strip()
            if health and all(h == "healthy" for h in health) and port:  # every health check passes
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port.rsplit(':', 1)[-1]}/", timeout=2)
                    break
                except OSError:
                    pass
            time.sleep(0.1)
    finally:
        subprocess.run([*project, "down", "-v", "-t", "0"], cwd=folder, check=True, capture_output=True)
    return time.perf_counter() - begin


def project(folder: Path, ini: str = "", test: str = TEST) -> Path:
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "compose.yaml").write_text(COMPOSE)
    (folder / "pytest.ini").write_text("[pytest]\n" + ini)
    (folder / "test_stack.py").write_text(test)
    return folder


def table(times: dict[str, list[float]], floor: str) -> None:
    base = statistics.median(times[floor])
    print(f"| variant | median s (min-max) | ratio to {floor} |\n|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} ({min(values):.2f}-{max(values):.2f}) | {med / base:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pytest-docker-python", help="a python whose environment has pytest-docker")
    parser.add_argument("--xdist", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ours = project(root / "dockapp", "dockapp_compose = compose.yaml\n")
        plain = project(root / "compose")
        times: dict[str, list[float]] = {"compose": [], "dockapp": []}
        if args.pytest_docker_python:
            peer = project(root / "pytest-docker", test=PYTEST_DOCKER_TEST)
            (peer / "conftest.py").write_text(PYTEST_DOCKER_CONFTEST)
            times["pytest-docker"] = []
        for n in range(args.runs):
            times["dockapp"].append(session(sys.executable, ours)[0])
            times["compose"].append(compose(plain, n))
            if args.pytest_docker_python:
                times["pytest-docker"].append(session(args.pytest_docker_python, peer, "-p", "no:dockapp")[0])
        table(times, "pytest-docker" if args.pytest_docker_python else "compose")
        if args.xdist:
            xdist(root, args.runs)


def xdist(root: Path, runs: int) -> None:
    folders = {
        scope: project(
            root / f"xdist-{scope}", f"dockapp_compose = compose.yaml\ndockapp_compose_scope = {scope}\n", XDIST_TEST
        )
        for scope in ("session", "worker")
    }
    times: dict[str, list[float]] = {f"-n 4, scope {s}": [] for s in folders}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(runs):
        for scope, folder in folders.items():
            seconds, out = session(sys.executable, folder, "-n", "4")
            times[f"-n 4, scope {scope}"].append(seconds)
            # a build, or the reuse of an unchanged one; the other workers take that image
            built = out.count("  service web: built ") + out.count("nothing it is built from changed")
            counts[scope] = (built, out.count(" stack dockapp-") - out.count("started by another"))
    table(times, "-n 4, scope session")
    for scope, (built, stacks) in counts.items():
        print(f"scope {scope}: {built} build (or reuse) of the app and {stacks} stack(s) in the last run")


if __name__ == "__main__":
    main()
