"""A three-service stack (an app built from a Dockerfile, PostgreSQL, Redis; the app waits for
both to be healthy): one pytest session with one test, against the raw compose CLI.

    python bench/services.py --runs 3

- dockapp: ``python -m pytest`` with ``dockapp_compose = compose.yaml`` and one test using
  ``dockapp`` (start, build reuse or build, stack start, the test, teardown);
- compose: ``docker-compose up -d --build`` (compose v1 from Debian's packages), a readiness
  loop (both health checks healthy and the app answering HTTP), then ``docker-compose down -v -t 0`` (SIGKILL at once, as the plugin removes containers).

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
    healthcheck: {test: pg_isready -h 127.0.0.1, interval: 1s}
  cache:
    image: dockapp-test/redis:bookworm
    healthcheck: {test: [CMD, redis-cli, ping], interval: 1s}
"""
TEST = "def test_first(dockapp):\n    assert dockapp.get('/').status_code == 200\n"


def dockapp(folder: Path) -> float:
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - begin


def compose(folder: Path, n: int) -> float:
    project = ["docker-compose", "-p", f"bench-services-{n}"]
    begin = time.perf_counter()
    subprocess.run([*project, "up", "-d", "--build"], cwd=folder, check=True, capture_output=True)
    try:
        while True:
            ids = subprocess.check_output([*project, "ps", "-q"], cwd=folder, text=True).split()
            health = subprocess.check_output(
                ["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", *ids], text=True
            ).split()
            port = subprocess.check_output([*project, "port", "web", "80"], cwd=folder, text=True).strip()
            if health == ["healthy", "healthy"] and port:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port.rsplit(':', 1)[-1]}/", timeout=2)
                    break
                except OSError:
                    pass
            time.sleep(0.1)
    finally:
        subprocess.run([*project, "down", "-v", "-t", "0"], cwd=folder, check=True, capture_output=True)
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "Dockerfile").write_text(DOCKERFILE)
        (folder / "compose.yaml").write_text(COMPOSE)
        (folder / "pytest.ini").write_text("[pytest]\ndockapp_compose = compose.yaml\n")
        (folder / "test_stack.py").write_text(TEST)
        times: dict[str, list[float]] = {"dockapp": [], "compose": []}
        for n in range(runs):
            times["dockapp"].append(dockapp(folder))
            times["compose"].append(compose(folder, n))
    floor = statistics.median(times["compose"])
    print("| variant | median s (min-max) | ratio to compose |\n|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} ({min(values):.2f}-{max(values):.2f}) | {med / floor:.2f}× |")


if __name__ == "__main__":
    main()
