"""Scaling figures for the README: many tests, many apps, a crowded engine, memory.

    python bench/scaling.py --runs 3

- S1: 100 tests sharing one session app, against the floor (the raw CLI in a session fixture);
- S2: 100 function-scoped apps (one per test) under -n 1, 2 and 4, against the floor;
- S3: the session cost of the sweep with 1,000 foreign containers on the engine (created, never
  started, unlabelled: other projects'), against the same session on the uncrowded engine;
- S4: resident memory of the pytest process with 50 apps alive at once.

Whole ``python -m pytest`` processes, variants interleaved run by run, medians (min-max).
Foreign containers are created and removed by this script only, by their own label.
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

DOCKERFILE = """FROM dockapp-test/busybox:1
RUN mkdir -p /www && echo hello > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

FLOOR_CONFTEST = """
import os, subprocess, time, urllib.request
import pytest

def _up():
    cid = subprocess.check_output(["docker", "run", "-d", "-p", "127.0.0.1::80", os.environ["FLOOR_IMAGE"]],
                                  text=True).strip()
    port = subprocess.check_output(["docker", "port", cid, "80/tcp"], text=True).split(":")[-1].strip()
    url = f"http://127.0.0.1:{port}/"
    for _ in range(1000):
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            time.sleep(0.01)
    return cid, url

@pytest.fixture(scope="SCOPE")
def app_url():
    cid, url = _up()
    yield url
    subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
"""

DOCKAPP_CONFTEST = {
    "session": "import pytest\n\n@pytest.fixture\ndef app_url(dockapp):\n    return dockapp.url + '/'\n",
    "function": (
        "import pytest\n\n@pytest.fixture\ndef app_url(dockapp_factory):\n    return dockapp_factory().url + '/'\n"
    ),
}

TESTS = "".join(
    f"\ndef test_{n}(app_url):\n    import urllib.request\n    assert urllib.request.urlopen(app_url).status == 200\n"
    for n in range(100)
)

MEMORY_TEST = """
import resource

def test_fifty(dockapp_factory):
    apps = [dockapp_factory() for _ in range(50)]
    assert all(a.get("/").status_code == 200 for a in apps)
    open("maxrss-kb", "w").write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""

FOREIGN = "dockapp-bench.foreign=1"


def project(root: Path, name: str, conftest: str, tests: str, floor: bool) -> Path:
    path = root / name
    path.mkdir()
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "conftest.py").write_text(conftest)
    (path / "test_many.py").write_text(tests)
    if floor:
        (path / "pytest.ini").write_text("[pytest]\naddopts = -p no:dockapp\n")
    return path


def run(path: Path, *args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=path,
        env={**os.environ, "FLOOR_IMAGE": "dockapp-bench/scaling:1"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{path.name} failed:\n{proc.stdout[-3000:]}")
    return wall


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}s ({min(values):.2f}–{max(values):.2f})"


def compare(label: str, floor: Path, plugin: Path, runs: int, *args: str) -> str:
    run(floor, *args), run(plugin, *args)  # warm-up
    walls: dict[str, list[float]] = {"floor": [], "dockapp": []}
    for _ in range(runs):
        walls["floor"].append(run(floor, *args))
        walls["dockapp"].append(run(plugin, *args))
    ratio = statistics.median(walls["dockapp"]) / statistics.median(walls["floor"])
    return f"| {label} | {fmt(walls['floor'])} | {fmt(walls['dockapp'])} | {ratio:.2f}× |"


def foreign(count: int) -> None:
    for _ in range(count):
        subprocess.run(
            ["docker", "create", "--label", FOREIGN, "dockapp-test/busybox:1", "true"],
            capture_output=True,
            check=True,
        )


def remove_foreign() -> None:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={FOREIGN}"], capture_output=True, text=True
    ).stdout.split()
    for start in range(0, len(ids), 200):
        subprocess.run(["docker", "rm", "-f", *ids[start : start + 200]], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="S1,S2,S3,S4")
    args = parser.parse_args()
    only = set(args.only.split(","))
    subprocess.run(
        ["docker", "build", "-q", "-t", "dockapp-bench/scaling:1", "-"],
        input=DOCKERFILE,
        text=True,
        check=True,
        capture_output=True,
    )
    root = Path(tempfile.mkdtemp(prefix="dockapp-scaling-"))
    rows = ["| figure | floor (raw CLI) | dockapp | vs floor |", "|---|---|---|---|"]
    try:
        if "S1" in only:
            floor = project(root, "s1-floor", FLOOR_CONFTEST.replace("SCOPE", "session"), TESTS, True)
            plugin = project(root, "s1-dockapp", DOCKAPP_CONFTEST["session"], TESTS, False)
            rows.append(compare("S1 100 tests, one session app", floor, plugin, args.runs))
        if "S2" in only:
            floor = project(root, "s2-floor", FLOOR_CONFTEST.replace("SCOPE", "function"), TESTS, True)
            plugin = project(root, "s2-dockapp", DOCKAPP_CONFTEST["function"], TESTS, False)
            for workers in ("1", "2", "4"):
                rows.append(
                    compare(f"S2 100 function-scoped apps, -n {workers}", floor, plugin, args.runs, "-n", workers)
                )
        if "S3" in only:
            one = "\ndef test_one(app_url):\n    import urllib.request\n    urllib.request.urlopen(app_url).read()\n"
            plugin = project(root, "s3-dockapp", DOCKAPP_CONFTEST["session"], one, False)
            run(plugin)
            quiet = [run(plugin) for _ in range(args.runs * 2)]
            foreign(1000)
            try:
                crowded = [run(plugin) for _ in range(args.runs * 2)]
            finally:
                remove_foreign()
            extra = (statistics.median(crowded) - statistics.median(quiet)) * 1000
            rows.append(
                f"| S3 one session, 1,000 foreign containers on the engine | {fmt(quiet)} (uncrowded) | "
                f"{fmt(crowded)} | {extra:+.0f} ms |"
            )
        if "S4" in only:
            plugin = project(root, "s4-dockapp", "", MEMORY_TEST, False)
            run(plugin)
            rss = int((plugin / "maxrss-kb").read_text()) / 1024
            rows.append(f"| S4 pytest process with 50 apps alive | | {rss:.0f} MiB max RSS | |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
