"""W1's phases (issue 25): one test, one process, and where each millisecond over the floor goes.

    python bench/phases.py --runs 15

The W1 project of ``bench/run.py`` (busybox httpd with a HEALTHCHECK, one test that GETs it)
runs as a whole pytest process, interleaved with the floor (the raw CLI in a fixture: ``docker
run``, a readiness poll, ``docker rm -f``). In the dockapp runs a plugin loaded with ``-p``
times the plugin's phases from the inside, each by wrapping the one function that does it:

- connect: ``import docker`` (through ``import_sdk``: no paramiko for a local socket), the
  client and its ``/_ping``;
- image: the reuse check of the unchanged build (fingerprint, the tag's inspect);
- lease: the created, never started container that pins the image;
- container create and start;
- ready: the port answering, then the image's HEALTHCHECK run once (one exec);
- teardown: the removal at the session's end.

Medians over the runs (min-max), in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import DOCKAPP_CONFTEST, DOCKERFILES, FLOOR_CONFTEST, FLOOR_UP, TEST_GET

TIMER = """
import functools, json, os, time

PHASES = {}


def _wrap(owner, name, phase):
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[phase] = PHASES.get(phase, 0.0) + time.perf_counter() - began

    setattr(owner, name, timed)


def pytest_configure(config):
    from pytest_dockapp.engine import client
    from pytest_dockapp.run import app, images, manager
    from pytest_dockapp.run.readiness import healthcheck, wait

    _wrap(client, "import_sdk", "SDK import (no paramiko)")
    _wrap(manager, "connect", "connect: SDK import, client, ping")
    _wrap(images.Images, "_build", "image: reuse check")
    _wrap(images.Images, "_lease", "lease: container create")
    _wrap(app.AppRunner, "_create", "container create")
    _wrap(app.AppRunner, "_run", "container start")
    _wrap(wait.ReadyWait, "run", "ready: port, then HEALTHCHECK")
    _wrap(healthcheck.HealthcheckRun, "_run", "of which the HEALTHCHECK exec")
    _wrap(manager.AppManager, "close", "teardown (session end)")


def pytest_unconfigure(config):
    with open("phases.jsonl", "a") as fh:
        fh.write(json.dumps(PHASES) + "\\n")
"""


def project(root: Path, variant: str) -> Path:
    folder = root / variant
    folder.mkdir()
    (folder / "Dockerfile").write_text("\n".join(line.strip() for line in DOCKERFILES["fast"].splitlines()))
    (folder / "test_w1.py").write_text(TEST_GET.replace("{n}", "0"))
    (folder / "pytest.ini").write_text("[pytest]\n")
    if variant == "floor":
        (folder / "conftest.py").write_text(FLOOR_CONFTEST.replace("SCOPE", "session"))
        (folder / "floor-up.sh").write_text(FLOOR_UP)
        subprocess.run(
            ["docker", "build", "-q", "-t", "bench-floor:floor", str(folder)], check=True, capture_output=True
        )
    else:
        (folder / "conftest.py").write_text(DOCKAPP_CONFTEST["session"])
        (folder / "phase_timer.py").write_text(TIMER)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-phases-"))
    folders = {v: project(root, v) for v in ("floor", "dockapp")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:docker_tools"]
    walls: dict[str, list[float]] = {"floor": [], "dockapp": []}
    for run in range(opts.runs + 1):  # the first round warms up (and makes the build to reuse)
        for variant, folder in folders.items():
            extra = ["-p", "phase_timer"] if variant == "dockapp" else []
            began = time.perf_counter()
            subprocess.run([*cmd, *extra], cwd=folder, check=True, capture_output=True, env=_env(folder))
            if run:
                walls[variant].append(time.perf_counter() - began)
    phases = [json.loads(line) for line in (folders["dockapp"] / "phases.jsonl").read_text().splitlines()[1:]]
    print("| phase | median ms (min-max) |\n|---|---|")
    for name in phases[0]:
        values = [p.get(name, 0.0) * 1000 for p in phases]
        print(f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")
    floor, dockapp = statistics.median(walls["floor"]), statistics.median(walls["dockapp"])
    print(f"\nwhole process: floor {floor:.3f}s, dockapp {dockapp:.3f}s ({dockapp / floor:.2f}x the floor)")


def _env(folder: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(folder), "XDG_CACHE_HOME": str(folder / ".xdg")}


if __name__ == "__main__":
    main()
