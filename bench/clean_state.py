"""C1: a clean, seeded PostgreSQL for every test. 100 tests, each connecting (psycopg, the published
port), writing a row and counting the table, against a seed of ``--rows`` rows (several sizes:
how it grows), one ``pytest`` process per variant:

- floor: the same tests sharing the session's database, with no reset (``dockapp_services``);
- clean: ``dockapp_clean``;
- janitor: pytest-postgresql's ``postgresql`` fixture (its ``DatabaseJanitor`` creates each test's
  database from a template of the seed, and drops it after) on the same image, run by hand as
  its ``postgresql_noproc`` expects;
- fresh: ``dockapp_fresh``, a whole stack of the test's own (``--fresh-tests`` tests only: it takes
  seconds each; its per-test time is scaled);
- with ``--workers N``, floor and clean again under ``pytest -n N`` (``dockapp_compose_scope =
  worker``: each worker's stack seeded and restored on its own).

    pip install pytest-postgresql 'psycopg[binary]'
    python bench/clean_state.py --runs 3 --rows 1000 10000 100000 --workers 4

What is compared is each test's time, from the start of the second test to the end of the last
one's call (session start, the seed and the stack's removal are left out: they are paid once),
medians of interleaved runs, as ratios to the floor. The restore's own median is what
``dockapp_clean`` prints in its summary. Needs the local bases (``.ci/make-bases busybox postgres``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from services import DOCKERFILE  # V1's app: a busybox httpd

POSTGRES = "dockapp-test/postgres:bookworm"
COMPOSE = f"""services:
  web:
    build: .
    depends_on:
      db: {{condition: service_healthy}}
  db:
    image: {POSTGRES}
    ports: ["5432"]
    healthcheck: {{test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}}
"""
SEED = "CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int); "
SEED += "INSERT INTO items (n) SELECT generate_series(1, {rows});"
# Each test's time: from the second test's start to the last test's call (per xdist worker).
TIMING = """
import os, time
from pathlib import Path
import pytest

_seen = []

def pytest_runtest_logstart(nodeid, location):
    _seen.append(time.perf_counter())

def pytest_runtest_logreport(report):
    if report.when == "call":
        _seen.append(time.perf_counter())

def pytest_sessionfinish(session):
    if len(_seen) > 3:  # a start and a call per test
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(f"window-{worker}.txt").write_text(f"{_seen[-1] - _seen[2]} {len(_seen) // 2 - 1}")
"""
WINDOW = (
    TIMING
    + """
import psycopg

def connect(app, dbname="app"):
    return psycopg.connect(host=app.host, port=app.port, user="postgres", dbname=dbname, autocommit=True)
"""
)
DOCKAPP_SEED = """
@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    seed(dockapp_services["db"])

def seed(db):
    with connect(db, "postgres") as c:
        c.execute("CREATE DATABASE app")
    with connect(db) as c:
        c.execute(SEED)
"""
DOCKAPP_TEST = """
import pytest
from conftest import connect, seed

@pytest.mark.parametrize("n", range({tests}))
def test_write({fixtures}, n):
    db = dockapp_services["db"] if "{fixture}" != "dockapp_fresh" else dockapp_fresh.services["db"]
    if "{fixture}" == "dockapp_fresh":
        seed(db)  # a stack of the test's own: dockapp_seed seeds the session's
    with connect(db) as c:
        c.execute("INSERT INTO items (n) VALUES (-1)")
        count = c.execute("SELECT count(*) FROM items").fetchone()[0]
    assert count == {rows} + 1 if "{fixture}" != "dockapp_services" else count > {rows}
"""
JANITOR_CONFTEST = """
from pytest_postgresql import factories

postgresql_noproc = factories.postgresql_noproc(dbname="app", load=[Path(__file__).parent / "seed.sql"])
postgresql = factories.postgresql("postgresql_noproc")
"""
JANITOR_TEST = """
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_write(postgresql, n):
    with postgresql.cursor() as c:
        c.execute("INSERT INTO items (n) VALUES (-1)")
        assert c.execute("SELECT count(*) FROM items").fetchone()[0] == {rows} + 1
    postgresql.commit()
"""


def project(root: Path, name: str, fixture: str, tests: int, rows: int, scope: str = "session") -> Path:
    folder = root / name
    folder.mkdir()
    fixtures = ", ".join(dict.fromkeys([fixture, "dockapp_services", "dockapp_seed"]))
    fill = {"{fixtures}": fixtures, "{fixture}": fixture, "{tests}": str(tests), "{rows}": str(rows)}
    seed = SEED.replace("{rows}", str(rows))
    if fixture == "postgresql":
        (folder / "seed.sql").write_text(seed)
        (folder / "conftest.py").write_text(WINDOW + JANITOR_CONFTEST)
        body = JANITOR_TEST
    else:
        (folder / "Dockerfile").write_text(DOCKERFILE)
        (folder / "compose.yaml").write_text(COMPOSE)
        ini = f"[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\ndockapp_compose_scope = {scope}\n"
        (folder / "pytest.ini").write_text(ini)
        (folder / "conftest.py").write_text(WINDOW + f"SEED = {seed!r}\n" + DOCKAPP_SEED)
        body = DOCKAPP_TEST
    for key, value in fill.items():
        body = body.replace(key, value)
    (folder / "test_clean.py").write_text(body)
    return folder


def session(folder: Path, args: list[str]) -> tuple[float, float, float | None]:
    """The session's seconds, each test's seconds (mean over xdist workers), the restore's median ms."""
    for old in folder.glob("window-*.txt"):
        old.unlink()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=folder,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"{folder.name}: pytest failed\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    out = done.stdout
    wall = time.perf_counter() - began
    per_test = []
    for window in folder.glob("window-*.txt"):
        seconds, tests = window.read_text().split()
        per_test.append(float(seconds) / int(tests))
    found = re.search(r"clean state: \d+ restores .*: median ([\d.]+) ms", out)
    return wall, statistics.mean(per_test), float(found.group(1)) if found else None


def janitor_server() -> tuple[str, str]:
    """A PostgreSQL of the same image, run by hand: its container ID and published port."""
    run = ["docker", "run", "-d", "--rm", "--label", "org.pytest-dockapp.bench=clean_state", "-p", "127.0.0.1::5432"]
    cid = subprocess.run([*run, POSTGRES], check=True, capture_output=True, text=True).stdout.strip()
    ready = ["docker", "exec", cid, "pg_isready", "-h", "127.0.0.1"]
    while subprocess.run(ready, capture_output=True).returncode != 0:
        time.sleep(0.1)
    port = subprocess.run(["docker", "port", cid, "5432"], check=True, capture_output=True, text=True).stdout
    return cid, port.splitlines()[0].rsplit(":", 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000])
    parser.add_argument("--fresh-tests", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    cid, port = janitor_server()
    janitor_args = ["--postgresql-host=127.0.0.1", f"--postgresql-port={port}", "--postgresql-user=postgres"]
    k, n = max(2, args.fresh_tests), args.workers  # each test's time needs a second test
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            variants: dict[tuple[int, str], tuple[Path, list[str]]] = {}
            for rows in args.rows:
                for name, fixture, tests, extra in (
                    ("floor (shared, no reset)", "dockapp_services", 100, []),
                    ("dockapp_clean", "dockapp_clean", 100, []),
                    ("pytest-postgresql janitor", "postgresql", 100, janitor_args),
                    ("dockapp_fresh", "dockapp_fresh", k, []),
                ):
                    variants[rows, name] = (project(root, f"{fixture}{rows}", fixture, tests, rows), extra)
                if n:
                    for name, fixture in (("floor", "dockapp_services"), ("dockapp_clean", "dockapp_clean")):
                        folder = project(root, f"{name}{rows}n", fixture, 100, rows, scope="worker")
                        variants[rows, f"{name}, -n {n}"] = (folder, ["-n", str(n)])
            results: dict[tuple[int, str], list[tuple[float, float, float | None]]] = {key: [] for key in variants}
            for _ in range(args.runs):
                for key, (folder, extra) in variants.items():
                    results[key].append(session(folder, extra))
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    print(f"{args.runs} runs; each test's ms (median, min-max), and its ratio to the floor of the same seed")
    print("| seed rows | variant | ms per test | × floor | restore median ms | session s |\n|---|---|---|---|---|---|")
    for rows in args.rows:
        floors = {"": statistics.median(r[1] for r in results[rows, "floor (shared, no reset)"])}
        if n:
            floors[f", -n {n}"] = statistics.median(r[1] for r in results[rows, f"floor, -n {n}"])
        for (size, name), runs in results.items():
            if size != rows:
                continue
            each = [r[1] * 1000 for r in runs]
            floor = floors[f", -n {n}"] if name.endswith(f"-n {n}") and n else floors[""]
            restores = [r[2] for r in runs if r[2] is not None]
            restore = f"{statistics.median(restores):.1f}" if restores else "-"
            print(f"| {rows} | {name} | {statistics.median(each):.1f} ({min(each):.1f}-{max(each):.1f}) | "
                  f"{statistics.median(each) / 1000 / floor:.2f} | {restore} | "
                  f"{statistics.median(r[0] for r in runs):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
