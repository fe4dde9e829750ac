"""C2: a clean, seeded MariaDB for every test. 100 tests, each connecting (PyMySQL, the published
port), writing a row and counting the table, against a seed of ``--rows`` rows, one ``pytest``
process per variant: the floor (the session's database shared, no reset) and ``dockapp_clean``.
The restore's median is what ``dockapp_clean`` prints in its summary; each test's time is
measured as in C1 (``bench/clean_state.py``), medians of interleaved runs, as ratios to the floor.

    pip install PyMySQL
    python bench/clean_state_mariadb.py --runs 3 --rows 1000 10000

Needs the local bases (``.ci/make-bases busybox mariadb``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from clean_state import TIMING, session
from services import DOCKERFILE  # V1's app: a busybox httpd

COMPOSE = """services:
  web:
    build: .
    depends_on:
      db: {condition: service_healthy}
  db:
    image: dockapp-test/mariadb:bookworm
    ports: ["3306"]
    healthcheck: {test: [CMD, mariadb-admin, ping], interval: 1s, retries: 60}
"""
CONFTEST = """
import pymysql

def sql(db, statement):
    code, out = db.exec(["mariadb", "-uroot", "--batch", "--skip-column-names", "-e", statement])
    assert code == 0, out
    return out.strip()

@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    sql(dockapp_services["db"], "CREATE USER app@'%'; GRANT ALL ON *.* TO app@'%'; CREATE DATABASE shop; "
        "CREATE TABLE shop.items (id INT AUTO_INCREMENT PRIMARY KEY, n INT); "
        "INSERT INTO shop.items (n) SELECT seq FROM shop.seq_1_to_{rows}")

def connect(db):
    return pymysql.connect(host=db.host, port=db.port, user="app", database="shop", autocommit=True)
"""
TEST = """
import pytest
from conftest import connect

@pytest.mark.parametrize("n", range(100))
def test_write({fixture}, dockapp_services, n):
    with connect(dockapp_services["db"]) as c, c.cursor() as cur:
        cur.execute("INSERT INTO items (n) VALUES (-1)")
        cur.execute("SELECT count(*) FROM items")
        count = cur.fetchone()[0]
    assert count == {rows} + 1 if "{fixture}" == "dockapp_clean" else count > {rows}
"""


def project(root: Path, fixture: str, rows: int) -> Path:
    folder = root / f"{fixture}{rows}"
    folder.mkdir()
    (folder / "Dockerfile").write_text(DOCKERFILE)
    (folder / "compose.yaml").write_text(COMPOSE)
    (folder / "pytest.ini").write_text("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    (folder / "conftest.py").write_text(TIMING + CONFTEST.replace("{rows}", str(rows)))
    fixtures = "dockapp_clean" if fixture == "dockapp_clean" else "dockapp_seed"
    body = TEST.replace("{fixture}", fixtures).replace("{rows}", str(rows))
    (folder / "test_clean.py").write_text(body)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        variants = {
            (rows, name): project(root, fixture, rows)
            for rows in args.rows
            for name, fixture in (("floor (shared, no reset)", "dockapp_seed"), ("dockapp_clean", "dockapp_clean"))
        }
        results: dict[tuple[int, str], list[tuple[float, float, float | None]]] = {key: [] for key in variants}
        for _ in range(args.runs):
            for key, folder in variants.items():
                results[key].append(session(folder, []))
    print(f"{args.runs} runs; each test's ms (median, min-max), and its ratio to the floor of the same seed")
    print("| seed rows | variant | ms per test | × floor | restore median ms |\n|---|---|---|---|---|")
    for (rows, name), runs in results.items():
        each = [r[1] * 1000 for r in runs]
        floor = statistics.median(r[1] for r in results[rows, "floor (shared, no reset)"]) * 1000
        restores = [r[2] for r in runs if r[2] is not None]
        restore = f"{statistics.median(restores):.1f}" if restores else "-"
        print(f"| {rows} | {name} | {statistics.median(each):.1f} ({min(each):.1f}-{max(each):.1f}) | "
              f"{statistics.median(each) / floor:.2f} | {restore} |")  # fmt: skip


if __name__ == "__main__":
    main()
