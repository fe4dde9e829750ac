"""A fresh app for every test (issue 25): ``dockapp_fresh`` with warm spares, against the floor
(the raw CLI in a function-scoped fixture) and against the code before spares
(``dockapp_factory()`` with ``--dockapp-spares 0``: a start per test on the test's time).

    python bench/fresh.py --runs 3

100 tests, each with its own app; with an empty test body and with a 100 ms one; ``-n 1``,
``-n 2`` and ``-n 4``. Whole ``python -m pytest`` processes, variants interleaved run by run,
medians (min-max). Also: the most containers of the session on the engine at once (sampled
every 20 ms), and the pytest process's peak RSS (without xdist: its workers are other processes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from scaling import DOCKERFILE, FLOOR_CONFTEST, fmt

FACTORY = "import pytest\n\n@pytest.fixture\ndef app_url(dockapp_factory):\n    return dockapp_factory().url + '/'\n"
FRESH = "import pytest\n\n@pytest.fixture\ndef app_url(dockapp_fresh):\n    return dockapp_fresh.url + '/'\n"


def tests(body_seconds: float, count: int = 100) -> str:
    return "".join(
        f"\ndef test_{n}(app_url):\n    import time, urllib.request\n"
        f"    assert urllib.request.urlopen(app_url).status == 200\n    time.sleep({body_seconds})\n"
        for n in range(count)
    )


def project(root: Path, name: str, conftest: str, body: float, floor: bool) -> Path:
    path = root / name
    path.mkdir()
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "conftest.py").write_text(conftest)
    (path / "test_many.py").write_text(tests(body))
    ini = "[pytest]\naddopts = -p no:dockapp\n" if floor else "[pytest]\n"
    (path / "pytest.ini").write_text(ini)
    return path


def run(path: Path, *args: str) -> tuple[float, int, int]:
    """Wall seconds, the most labelled containers at once, and the peak RSS (KiB) of pytest."""
    label = f"dockapp-bench.run={uuid.uuid4().hex[:12]}"
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out = subprocess.run(["docker", "ps", "-q", "--filter", f"label={label}"], capture_output=True, text=True)
            peak[0] = max(peak[0], len(out.stdout.split()))
            time.sleep(0.02)

    env = {**os.environ, "FLOOR_IMAGE": "dockapp-bench/scaling:1", "DOCKAPP_LABELS": label}
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    if status != 0:
        raise SystemExit(f"{path.name} failed:\n{out[-3000:]}")
    return wall, peak[0], usage.ru_maxrss


def measure(
    variants: dict[str, tuple[Path, tuple[str, ...]]], runs: int, *args: str
) -> tuple[dict[str, list[float]], dict[str, int], dict[str, int]]:
    """Each variant's walls, peak containers and peak RSS: a warm-up each, then ``runs`` rounds
    of all variants in turn (the engine drifts over minutes)."""
    for path, extra in variants.values():
        run(path, *args, *extra)  # warm-up: builds, imports
    walls: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, int] = {}
    rss: dict[str, int] = {}
    for _ in range(runs):
        for name, (path, extra) in variants.items():
            wall, peak, maxrss = run(path, *args, *extra)
            walls[name].append(wall)
            peaks[name], rss[name] = max(peaks.get(name, 0), peak), max(rss.get(name, 0), maxrss)
    return walls, peaks, rss


def row(case: str, walls: dict[str, list[float]], peaks: dict[str, int], rss: dict[str, int] | None) -> str:
    """A table row: floor, before and fresh; fresh's ratios to both; peaks (RSS None: xdist workers)."""
    med = {k: statistics.median(v) for k, v in walls.items()}
    memory = f"{rss['before'] / 1024:.0f}/{rss['fresh'] / 1024:.0f}" if rss is not None else "(workers)"
    return (
        f"| {case} | {fmt(walls['floor'])} | {fmt(walls['before'])} | {fmt(walls['fresh'])} "
        f"| {med['fresh'] / med['floor']:.2f}× | {med['fresh'] / med['before']:.2f}× "
        f"| {peaks['floor']}/{peaks['before']}/{peaks['fresh']} | {memory} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bodies", default="0,0.1", help="test body seconds, e.g. 0.1")
    parser.add_argument("--workers", default="0,1,2,4", help="0: no xdist; else -n N")
    parser.add_argument("--spares", help="dockapp_spares for the dockapp_fresh column (default: the plugin's)")
    args = parser.parse_args()
    subprocess.run(["docker", "build", "-q", "-t", "dockapp-bench/scaling:1", "-"], input=DOCKERFILE, text=True,
                   check=True, capture_output=True)  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="dockapp-fresh-"))
    rows = [
        f"| case | floor (raw CLI) | before (factory, no spares) | dockapp_fresh (spares {args.spares or 'default'}) "
        "| vs floor "
        "| vs before "
        "| peak containers (floor/before/fresh) | peak RSS MiB (before/fresh) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        for body in (float(b) for b in args.bodies.split(",")):
            # the floor's containers carry the run's label too, so that its peak is counted the same way
            labelled = FLOOR_CONFTEST.replace('"run", "-d",', '"run", "-d", "--label", os.environ["DOCKAPP_LABELS"],')
            floor = project(root, f"floor-{body}", labelled.replace("SCOPE", "function"), body, True)
            before = project(root, f"before-{body}", FACTORY, body, False)
            fresh = project(root, f"fresh-{body}", FRESH, body, False)
            for workers in args.workers.split(","):
                xdist = ("-n", workers) if workers != "0" else ()
                variants = {
                    "floor": (floor, ()),
                    "before": (before, ("--dockapp-spares", "0")),
                    "fresh": (fresh, ("--dockapp-spares", args.spares) if args.spares else ()),
                }
                walls, peaks, rss = measure(variants, args.runs, *xdist)
                case = f"body {body * 1000:.0f} ms, {'no xdist' if workers == '0' else '-n ' + workers}"
                rows.append(row(case, walls, peaks, rss if workers == "0" else None))
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
