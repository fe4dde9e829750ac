"""L1: the developer loop. The second ``pytest`` run of one test with ``--dockapp-reuse`` (it
attaches to the stack the first run left) against the same run without reuse (build reuse, a
whole stack start), and against the floor: a pytest run (the plugin off) whose one test sends
one HTTP request to the same app, already running, started by hand; and against that run
finding the app with the docker SDK itself (what any attach through the SDK pays). Two stacks:

- the example app (``example-app/``: Node web + Redis), as its README runs it offline;
- PostgreSQL + Redis + a busybox web app that waits for both (V1's app).

Then the same with a changed source file each run: with reuse the app is rebuilt and only its
service started anew (Redis and PostgreSQL kept); without, the whole stack starts.

    python bench/reuse_runs.py --runs 5

Variants interleaved run by run, medians (min-max), ratios. Needs the local bases
(``.ci/make-bases busybox node redis postgres``) and no CI variable set (reuse is off in CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from services import DOCKERFILE  # V1's app: a busybox httpd

ROOT = Path(__file__).resolve().parent.parent
SETTLE = 2.0
BASES = {"BASE_IMAGE": "dockapp-test/node:bookworm", "REDIS_IMAGE": "dockapp-test/redis:bookworm"}
PG_STACK = """services:
  web:
    build: .
    depends_on:
      db: {condition: service_healthy}
      cache: {condition: service_started}
  db:
    image: dockapp-test/postgres:bookworm
    healthcheck: {test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}
  cache:
    image: dockapp-test/redis:bookworm
"""
TEST = """
def test_one(dockapp):
    assert dockapp.get("{path}").ok
"""
FLOOR = """
import os, requests

def test_one():
    assert requests.get(os.environ["APP_URL"] + "{path}").ok
"""
# What any attach through the docker SDK pays: the SDK's import (without paramiko, as the plugin
# imports it unless the engine is ssh://), one listing, one inspect, then the floor's request.
BY_HAND = """
import sys

import pytest
import requests

@pytest.fixture(scope="session")
def url():
    sys.modules["docker.transport.sshconn"] = None
    import docker

    client = docker.from_env()
    web = next(c for c in client.api.containers(filters={"label": "LABEL"}) if c["Names"][0].endswith("-web"))
    ports = client.api.inspect_container(web["Id"])["NetworkSettings"]["Ports"]
    return "http://127.0.0.1:" + next(b[0]["HostPort"] for b in ports.values() if b)

def test_one(url):
    assert requests.get(url + "{path}").ok
"""


def _env() -> dict[str, str]:
    """A developer's environment: no CI variable, and Python writes bytecode. This machine sets
    PYTHONDONTWRITEBYTECODE, so an editable install compiles every module of ours on every run
    (0.3-0.4 s here), which no developer's machine does after the first run; the floor's pytest
    and requests have their bytecode from pip either way."""
    from pytest_dockapp.services.reuse import CI_VARIABLES

    drop = {*CI_VARIABLES, "PYTHONDONTWRITEBYTECODE"}
    return {k: v for k, v in os.environ.items() if k not in drop} | BASES


def example(root: Path) -> tuple[Path, str]:
    folder = root / "example"
    shutil.copytree(ROOT / "example-app", folder, ignore=shutil.ignore_patterns("tests", "README.md"))
    (folder / "test_one.py").write_text(TEST.replace("{path}", "/health"))
    return folder, "/health"


def pg_stack(root: Path) -> tuple[Path, str]:
    folder = root / "pg"
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "compose.yaml").write_text(PG_STACK)
    (folder / "pytest.ini").write_text("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    (folder / "test_one.py").write_text(TEST.replace("{path}", "/"))
    return folder, "/"


def run(folder: Path, *args: str, env: dict[str, str] | None = None) -> float:
    extra = ["--dockapp-build-arg", f"BASE_IMAGE={BASES['BASE_IMAGE']}"] if folder.name == "example" else []
    # The engine settles after the run before (a removed stack's unmounts on fuse-overlayfs went
    # on for a second or more and slowed the next run, whichever it was): every variant alike.
    time.sleep(SETTLE)
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *args],
                         cwd=folder, env=env or _env(), capture_output=True, text=True)  # fmt: skip
    took = time.perf_counter() - began
    if out.returncode != 0:
        raise SystemExit(f"{folder.name} {args}: exit {out.returncode}\n{out.stdout[-3000:]}")
    return took


def floor_folder(folder: Path, path: str) -> tuple[Path, str]:
    """The floor's project, and the URL of the app the last reuse run left running (started by
    that run, as a developer's own ``docker compose up`` would have)."""
    import docker

    from pytest_dockapp.engine import cleanup

    client = docker.from_env()
    flt = {"label": f"{cleanup.REUSE_PROJECT}={folder.resolve()}"}
    web = next(c for c in client.containers.list(filters=flt) if c.name.endswith("-web"))
    port = next(b[0]["HostPort"] for b in web.attrs["NetworkSettings"]["Ports"].values() if b)
    floor = folder.parent / f"{folder.name}-floor"
    floor.mkdir(exist_ok=True)
    (floor / "test_one.py").write_text(FLOOR.replace("{path}", path))
    return floor, f"http://127.0.0.1:{port}"


def by_hand_folder(folder: Path, path: str) -> Path:
    """A project whose one test finds the running app with the docker SDK, by the label reuse gives it."""
    from pytest_dockapp.engine import cleanup

    hand = folder.parent / f"{folder.name}-by-hand"
    hand.mkdir(exist_ok=True)
    label = f"{cleanup.REUSE_PROJECT}={folder.resolve()}"
    (hand / "test_one.py").write_text(BY_HAND.replace("LABEL", label).replace("{path}", path))
    return hand


def touch_source(folder: Path, n: int) -> None:
    source = folder / ("server.js" if folder.name == "example" else "Dockerfile")
    text = source.read_text().split("\n# bench edit")[0].split("\n// bench edit")[0]
    mark = "// bench edit" if source.suffix == ".js" else "# bench edit"
    source.write_text(f"{text}\n{mark} {n}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = _env() | {"XDG_CACHE_HOME": str(root / "cache")}
        for make in (example, pg_stack):
            folder, path = make(root)
            try:
                measure(folder, path, args.runs, env)
            finally:
                run(folder, "--dockapp-down", env=env)


def measure(folder: Path, path: str, runs: int, env: dict[str, str]) -> None:
    run(folder, env=env)  # warm-up: the build, then one run that leaves the stack
    run(folder, "--dockapp-reuse", env=env)
    variants = ("floor", "by hand, docker SDK", "reuse", "no reuse", "edit, reuse", "edit, no reuse")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for n in range(runs):
        run(folder, "--dockapp-reuse", env=env)  # untimed: the reused stack takes the last edit's app
        floor, url = floor_folder(folder, path)  # an edit run started the app anew, on another port
        times["floor"].append(run(floor, "-p", "no:dockapp", env=env | {"APP_URL": url}))
        times["by hand, docker SDK"].append(run(by_hand_folder(folder, path), "-p", "no:dockapp", env=env))
        times["reuse"].append(run(folder, "--dockapp-reuse", env=env))
        times["no reuse"].append(run(folder, env=env))
        touch_source(folder, 2 * n)
        times["edit, reuse"].append(run(folder, "--dockapp-reuse", env=env))
        touch_source(folder, 2 * n + 1)
        times["edit, no reuse"].append(run(folder, env=env))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{folder.name}: {runs} runs, one test each")
    print("| variant | median s (min-max) | ratio |\n|---|---|---|")
    for name, values in times.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"| {name} | {med[name]:.2f} ({spread}) | {med[name] / med['floor']:.2f}x floor |")
    speedup = med["no reuse"] / med["reuse"]
    print(f"reuse: {med['reuse'] / med['floor']:.2f}x the floor, {speedup:.1f}x faster than without")
    print(f"a changed source: {med['edit, no reuse'] / med['edit, reuse']:.1f}x faster with reuse")


if __name__ == "__main__":
    main()
