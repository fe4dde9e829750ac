"""A fresh stack for every test (issue 25): ``dockapp_fresh`` under ``dockapp_compose``, with
warm spares, against the floor (the raw CLI in a function-scoped fixture) and against the code
before stacks were spared (``--dockapp-spares 0``: each stack starts on the test's time).

    python bench/fresh_stacks.py --runs 3

The stack: an app built from a Dockerfile (busybox httpd) that depends on Redis being healthy,
on a network of its own. The floor does what a careful user's fixture would: a network, Redis
(polled with ``docker exec … redis-cli ping``, since an engine health interval of 1 s would
be slower), then the app (its port polled), and ``docker rm -f`` plus ``docker network rm``
after the test. 20 tests, with an empty body and a 500 ms one; whole ``python -m pytest``
processes, variants interleaved run by run, medians (min-max). Needs the local bases
(``.ci/make-bases busybox redis``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from fresh import FRESH, measure, row, tests
from scaling import DOCKERFILE

COMPOSE = """services:
  web:
    build: .
    depends_on:
      cache: {condition: service_healthy}
  cache:
    image: dockapp-test/redis:bookworm
    healthcheck: {test: [CMD, redis-cli, ping], interval: 1s, retries: 30}
"""

FLOOR_CONFTEST = """
import os, subprocess, time, urllib.request, uuid
import pytest

def _sh(*args):
    return subprocess.run(args, capture_output=True, text=True)

def _until(check):
    for _ in range(3000):
        if check():
            return
        time.sleep(0.01)
    raise TimeoutError

@pytest.fixture
def app_url():
    name, label = f"floor-{uuid.uuid4().hex[:8]}", os.environ["DOCKAPP_LABELS"]
    _sh("docker", "network", "create", "--label", label, name)
    _sh("docker", "run", "-d", "--label", label, "--name", f"{name}-cache", "--network", name,
        "--network-alias", "cache", "dockapp-test/redis:bookworm")
    _until(lambda: _sh("docker", "exec", f"{name}-cache", "redis-cli", "ping").stdout.strip() == "PONG")
    _sh("docker", "run", "-d", "--label", label, "--name", f"{name}-web", "--network", name,
        "-p", "127.0.0.1::80", os.environ["FLOOR_IMAGE"])
    port = _sh("docker", "port", f"{name}-web", "80/tcp").stdout.split(":")[-1].strip()
    url = f"http://127.0.0.1:{port}/"

    def answers():
        try:
            return urllib.request.urlopen(url, timeout=1).status == 200
        except OSError:
            return False

    _until(answers)
    yield url
    _sh("docker", "rm", "-f", f"{name}-web", f"{name}-cache")
    _sh("docker", "network", "rm", name)
"""


def project(root: Path, name: str, conftest: str, body: float, floor: bool) -> Path:
    path = root / name
    path.mkdir()
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "compose.yaml").write_text(COMPOSE)
    (path / "conftest.py").write_text(conftest)
    (path / "test_many.py").write_text(tests(body, 20))
    (path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:dockapp\n" if floor else "[pytest]\ndockapp_compose = compose.yaml\n"
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bodies", default="0,0.5", help="test body seconds, e.g. 0.5")
    args = parser.parse_args()
    subprocess.run(["docker", "build", "-q", "-t", "dockapp-bench/scaling:1", "-"], input=DOCKERFILE, text=True,
                   check=True, capture_output=True)  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="dockapp-fresh-stacks-"))
    rows = [
        "| case | floor (raw CLI) | before (no spares) | dockapp_fresh (default spares) | vs floor | vs before "
        "| peak containers (floor/before/fresh) | peak RSS MiB (before/fresh) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for body in (float(b) for b in args.bodies.split(",")):
            variants: dict[str, tuple[Path, tuple[str, ...]]] = {
                "floor": (project(root, f"floor-{body}", FLOOR_CONFTEST, body, True), ()),
                "before": (project(root, f"before-{body}", FRESH, body, False), ("--dockapp-spares", "0")),
                "fresh": (project(root, f"fresh-{body}", FRESH, body, False), ()),
            }
            walls, peaks, rss = measure(variants, args.runs)
            rows.append(row(f"20 stacks, body {body * 1000:.0f} ms", walls, peaks, rss))
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
