"""C2's floor: what MariaDB takes to put a table's AUTO_INCREMENT counter back, the one statement a
restore cannot avoid after a test that inserted into such a table (nothing else lowers it).

    python bench/mariadb_autoinc.py [--image dockapp-test/mariadb:bookworm] [--rounds 30]

One MariaDB container (removed at the end), one 1,000-row InnoDB table, PyMySQL over the
published port; each statement's median over ``--rounds``, each ALTER after an insert moved the
counter. Then the same with the server's durability settings off, which a restore would not do
to a user's server, to show that it is not the disk. Needs PyMySQL and the MariaDB base
(``.ci/make-bases mariadb``).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable

import pymysql

ALTER = "ALTER TABLE items AUTO_INCREMENT = 1001"
INSERT = "INSERT INTO items (name, n) VALUES ('t', 1)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="dockapp-test/mariadb:bookworm")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    name = f"dockapp-bench-autoinc-{int(time.time())}"
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::3306", args.image], check=True)
    try:
        port = int(subprocess.check_output(["docker", "port", name, "3306"], text=True).split(":")[-1])
        sql = "CREATE USER 'bench'@'%' IDENTIFIED BY 'bench'; GRANT ALL ON *.* TO 'bench'@'%';"
        for _ in range(60):  # the server's first start
            if subprocess.run(["docker", "exec", name, "mariadb", "-e", sql], capture_output=True).returncode == 0:
                break
            time.sleep(1)
        measure(port, args.rounds)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def measure(port: int, rounds: int) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=port, user="bench", password="bench", autocommit=True)
    cur = conn.cursor()

    def q(statement: str) -> None:
        cur.execute(statement)
        cur.fetchall()

    def median(statement: str, before: str | None = None) -> str:
        took = []
        for _ in range(rounds):
            if before:
                q(before)
            began = time.perf_counter()
            q(statement)
            took.append((time.perf_counter() - began) * 1000)
        return f"{statistics.median(took):.2f} ms"

    for statement in ("CREATE DATABASE app", "USE app"):
        q(statement)
    q("CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50), n INT) ENGINE=InnoDB")
    q("INSERT INTO items (name, n) SELECT CONCAT('x', seq), seq FROM seq_1_to_1000")
    rows: list[tuple[str, Callable[[], str]]] = [
        ("SELECT 1 (a round trip)", lambda: median("SELECT 1")),
        ("an insert", lambda: median(INSERT)),
        ("a delete by key", lambda: median("DELETE FROM items WHERE id = 1001", INSERT)),
        (ALTER, lambda: median(ALTER, INSERT)),
    ]
    rows += [(f"{ALTER}, {how}", lambda how=how: median(f"{ALTER}, {how}", INSERT)) for how in
             ("ALGORITHM=INSTANT", "ALGORITHM=INPLACE, LOCK=NONE", "ALGORITHM=NOCOPY")]  # fmt: skip
    print("| statement | median |\n|---|---|")
    for what, run in rows:
        print(f"| {what} | {run()} |")
    for setting, off in (("innodb_flush_log_at_trx_commit", "0"), ("sync_frm", "0")):
        q(f"SET GLOBAL {setting} = {off}")
        print(f"| {ALTER}, up to {setting} = {off} | {median(ALTER, INSERT)} |")


if __name__ == "__main__":
    main()
