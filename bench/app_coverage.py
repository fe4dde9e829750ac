"""K1: what measuring the app's own code inside its container adds to a suite's wall time, next
to what ``pytest --cov`` adds to a unit-test suite. One ``pytest`` process per variant, the
variants interleaved run by run; medians (min-max) and the ratio of each pair:

- the example app's suite (``example-app``: Node + Redis), without and with ``--dockapp-cov``;
- the Python example's suite (``example-python-app``), without and with ``--cov`` (pytest-cov
  measures the tests, and the app inside its container);
- a unit-test suite of about the same length (this repository's Dockerfile parser tests),
  without and with ``--cov=pytest_dockapp``.

    python bench/app_coverage.py --runs 5

Needs the local bases (``.ci/make-bases node redis python``) and pytest-cov.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = ["--dockapp-build-arg", "BASE_IMAGE=dockapp-test/node:bookworm"]
PYTHON = ["--dockapp-build-arg", "BASE_IMAGE=dockapp-test/python:bookworm"]
PAIRS = {
    "example app (Node), --dockapp-cov": (["example-app", *NODE], ["--dockapp-cov"]),
    "Python example, --cov": (["example-python-app", *PYTHON], ["--cov=example-python-app"]),
    "unit tests, --cov": (["tests/test_dockerfile.py", "tests/test_dockerignore.py"], ["--cov=pytest_dockapp"]),
}


def run(args: list[str]) -> float:
    env = {**os.environ, "REDIS_IMAGE": "dockapp-test/redis:bookworm"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a developer's machine: see bench/reuse_runs.py
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True)  # fmt: skip
    took = time.perf_counter() - began
    if out.returncode != 0:
        raise SystemExit(f"{args}: exit {out.returncode}\n{out.stdout[-3000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in PAIRS}
    for args, extra in PAIRS.values():  # warm-up: builds, bytecode
        run(args + extra)
    for _ in range(runs):
        for name, (args, extra) in PAIRS.items():
            times[name][0].append(run(args))
            times[name][1].append(run(args + extra))
    print(f"{runs} runs each, medians (min-max)\n")
    print("| suite | without | with | ratio | added |\n|---|---|---|---|---|")
    for name, (without, with_) in times.items():
        a, b = statistics.median(without), statistics.median(with_)
        spread = f"{a:.2f} ({min(without):.2f}-{max(without):.2f}) | {b:.2f} ({min(with_):.2f}-{max(with_):.2f})"
        print(f"| {name} | {spread} | {b / a:.2f}x | {b - a:+.2f} s |")
    (ROOT / ".coverage").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
