"""C1: a clean, seeded PostgreSQL for every test. 100 tests, each writing a row and counting
the table, against a seed of ``--rows`` rows, one ``pytest`` process per variant:

- floor: the same tests sharing the session's database, with no reset (``dockapp_services``);
- clean: ``dockapp_clean`` (the database dropped and created from its seed template per test);
- fresh: ``dockapp_fresh``, a whole stack of the test's own (``--fresh-tests`` tests only: it
  takes seconds each; its per-test time is scaled to 100 tests).

    python bench/clean_state.py --runs 3 --rows 10000

Variants interleaved run by run, medians (min-max), ratios to the floor. Needs the local bases
(``.ci/make-bases busybox postgres``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from services import DOCKERFILE  # V1's app: a busybox httpd

COMPOSE = """services:
  web:
    build: .
    depends_on:
      db: {condition: service_healthy}
  db:
    image: dockapp-test/postgres:bookworm
    healthcheck: {test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}
"""
CONFTEST = """
import pytest

PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-At"]

def psql(db, sql, database="app"):
    code, out = db.exec([*PSQL, "-d", database, "-c", sql])
    assert code == 0, out
    return out.strip()

@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    db = dockapp_services["db"]
    psql(db, "CREATE DATABASE app", database="postgres")
    psql(db, "CREATE TABLE items (n int); INSERT INTO items SELECT generate_series(1, {rows})")
"""
TEST = """
import pytest
from conftest import psql

@pytest.mark.parametrize("n", range({tests}))
def test_write({fixtures}, n):
    db = dockapp_services["db"] if "{fixture}" != "dockapp_fresh" else {fixture}.services["db"]
    if "{fixture}" == "dockapp_fresh":
        # a stack of the test's own: seeded here (dockapp_seed seeds the session's)
        psql(db, "CREATE DATABASE app", database="postgres")
        psql(db, "CREATE TABLE items (n int); INSERT INTO items SELECT generate_series(1, {rows})")
    psql(db, "INSERT INTO items VALUES (-1)")
    count = int(psql(db, "SELECT count(*) FROM items"))
    assert count == {rows} + 1 if "{fixture}" != "dockapp_services" else count > {rows}
"""


def project(root: Path, name: str, fixture: str, tests: int, rows: int) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "compose.yaml").write_text(COMPOSE)
    (folder / "pytest.ini").write_text("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    (folder / "conftest.py").write_text(CONFTEST.replace("{rows}", str(rows)))
    fixtures = ", ".join(dict.fromkeys([fixture, "dockapp_services", "dockapp_seed"]))
    body = (
        TEST.replace("{fixtures}", fixtures)
        .replace("{fixture}", fixture)
        .replace("{tests}", str(tests))
        .replace("{rows}", str(rows))
    )
    (folder / "test_clean.py").write_text(body)
    return folder


def session(folder: Path) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--fresh-tests", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        k = args.fresh_tests
        variants = {
            "floor (shared, no reset)": project(root, "floor", "dockapp_services", 100, args.rows),
            "dockapp_clean": project(root, "clean", "dockapp_clean", 100, args.rows),
            f"floor, {k} tests": project(root, "floor-k", "dockapp_services", k, args.rows),
            f"dockapp_fresh, {k} tests": project(root, "fresh", "dockapp_fresh", k, args.rows),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, folder in variants.items():
                times[name].append(session(folder))
        med = {name: statistics.median(values) for name, values in times.items()}
        floor = med["floor (shared, no reset)"]
        print(f"a seed of {args.rows} rows, {args.runs} runs")
        print("| variant | median s (min-max) |\n|---|---|")
        for name, values in times.items():
            print(f"| {name} | {med[name]:.2f} ({min(values):.2f}-{max(values):.2f}) |")
        clean_each = (med["dockapp_clean"] - floor) / 100
        fresh_each = (med[f"dockapp_fresh, {k} tests"] - med[f"floor, {k} tests"]) / k
        print(f"100 tests with dockapp_clean: {med['dockapp_clean'] / floor:.2f}x the floor")
        print(f"added per test: dockapp_clean {clean_each * 1000:.0f} ms, dockapp_fresh {fresh_each * 1000:.0f} ms "
              f"({fresh_each / clean_each:.0f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
