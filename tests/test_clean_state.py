"""A clean, seeded database for every test (``dockapp_seed`` and ``dockapp_clean``), as a user's
suite uses it: a real PostgreSQL and Redis from a compose file."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import textwrap
from typing import Any

import pytest

from pytest_dockapp.engine import cleanup
from pytest_dockapp.services.resources import STACK_LABEL

from .helpers import App, pytest_cmd, wait_for

COMPOSE = """
services:
  web:
    build: .
    depends_on:
      db: {condition: service_healthy}
      cache: {condition: service_started}
  db:
    image: POSTGRES
    healthcheck: {test: "pg_isready -h 127.0.0.1", interval: 1s, retries: 30}
  cache:
    image: REDIS
"""

CONFTEST = """
import pytest

def psql(db, sql, database="app"):
    psql = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-At"]
    code, out = db.exec([*psql, "-d", database, "-c", sql])
    assert code == 0, out
    return out.strip()

@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    db, cache = dockapp_services["db"], dockapp_services["cache"]
    psql(db, "CREATE DATABASE app", database="postgres")
    psql(db, "CREATE TABLE items (n int); INSERT INTO items SELECT generate_series(1, 1000)")
    cache.exec(["redis-cli", "SET", "greeting", "hello"])
    cache.exec(["redis-cli", "SET", "session", "abc", "PX", "600000"])
    cache.exec(["redis-cli", "-n", "2", "RPUSH", "queue", "a", "b"])
"""

TESTS = """
import pytest
from conftest import psql

@pytest.mark.parametrize("n", range(3))
def test_each_test_sees_only_the_seed(dockapp_clean, dockapp_services, n):
    db, cache = dockapp_services["db"], dockapp_services["cache"]
    assert psql(db, "SELECT count(*) FROM items") == "1000"
    psql(db, "INSERT INTO items VALUES (-1)")
    # a connection the app left open: the next restore ends it
    sleep = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "app", "-c", "SELECT pg_sleep(600)"]
    db.container.exec_run(sleep, detach=True)
    assert cache.exec(["redis-cli", "DBSIZE"])[1] == "2\\n"
    assert cache.exec(["redis-cli", "GET", "greeting"])[1] == "hello\\n"
    assert 0 < int(cache.exec(["redis-cli", "PTTL", "session"])[1]) <= 600000
    assert cache.exec(["redis-cli", "-n", "2", "LRANGE", "queue", "0", "-1"])[1] == "a\\nb\\n"
    cache.exec(["redis-cli", "SET", f"written-{n}", "1"])
    cache.exec(["redis-cli", "-n", "2", "RPUSH", "queue", "c"])
    assert dockapp_clean.get("/").text == "hello\\n"
"""


def test_every_test_starts_from_the_seed_in_postgres_and_redis(
    app: App, pytester: pytest.Pytester, redis_base: str, postgres_base: str
) -> None:
    app.httpd()
    compose = textwrap.dedent(COMPOSE).replace("POSTGRES", postgres_base).replace("REDIS", redis_base)
    (pytester.path / "compose.yaml").write_text(compose)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_clean=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["clean state: 3 restores of * (*), * (*): median * ms, max * ms on the tests' path"])


ROWS_SEED = """
@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    psql(dockapp_services["db"], "CREATE DATABASE app", database="postgres")
    psql(dockapp_services["db"], \"\"\"
        CREATE TABLE items (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int,
                            doubled int GENERATED ALWAYS AS (n * 2) STORED);
        CREATE TABLE refs (id serial PRIMARY KEY, item int REFERENCES items (id));
        CREATE TABLE events (at int, what text) PARTITION BY RANGE (at);
        CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (0) TO (100);
        CREATE SEQUENCE tickets;
        INSERT INTO items (n) SELECT generate_series(1, 1000);
        INSERT INTO refs (item) SELECT generate_series(1, 1000, 10);
        INSERT INTO events VALUES (1, 'seeded');
        SELECT nextval('tickets');
    \"\"\")
    # the app's transaction left open on a seeded table: the snapshot must not wait for it
    hold = "BEGIN; LOCK TABLE refs IN ROW SHARE MODE; SELECT pg_sleep(600)"
    dockapp_services["db"].container.exec_run([*PSQL, "-d", "app", "-c", hold], detach=True)
    held = "SELECT count(*) FROM pg_locks WHERE relation = 'refs'::regclass AND mode = 'RowShareLock'"
    while psql(dockapp_services["db"], held) == "0":
        time.sleep(0.05)

SEEDED = "1000|1001|100|1001000|1|2|3|t"
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres"]

def state(db):
    return psql(db, \"\"\"WITH i AS (INSERT INTO items (n) VALUES (0) RETURNING id)
        SELECT concat_ws('|', (SELECT count(*) FROM items), (SELECT id FROM i), (SELECT count(*) FROM refs),
        (SELECT sum(doubled) FROM items), (SELECT count(*) FROM events), nextval('tickets'),
        (SELECT count(*) FROM information_schema.columns WHERE table_name = 'items'),
        to_regclass('scratch') IS NULL)\"\"\")
"""

ROWS_TESTS = """
import pytest
from conftest import SEEDED, psql, state

@pytest.mark.parametrize("n", range(2))
def test_writes_rows(dockapp_clean, dockapp_services, n):
    db = dockapp_services["db"]
    assert state(db) == SEEDED
    psql(db, "INSERT INTO refs (item) VALUES (2); DELETE FROM refs WHERE item = 1; UPDATE items SET n = -n")
    psql(db, "INSERT INTO events VALUES (5, 'written'); SELECT nextval('tickets')")

def test_changes_the_schema(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert state(db) == SEEDED
    psql(db, "ALTER TABLE items ADD COLUMN extra int; CREATE TABLE scratch (x int); DELETE FROM refs")

def test_empties_a_table(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert state(db) == SEEDED
    psql(db, "TRUNCATE items CASCADE")

def test_only_draws_a_ticket(dockapp_clean, dockapp_services):
    psql(dockapp_services["db"], "SELECT nextval('tickets')")  # a sequence logs ahead: no WAL

def test_only_inserts_and_only_deletes(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert state(db) == SEEDED  # a row into items, nothing else there
    psql(db, "DELETE FROM refs WHERE item = 11")  # and only a seeded row out of refs

def test_sees_the_seed(dockapp_clean, dockapp_services):
    assert state(dockapp_services["db"]) == SEEDED
"""


def _rows_run(app: App, pytester: pytest.Pytester, image: str, more_tests: str = "") -> pytest.RunResult:
    """:data:`ROWS_TESTS` (and ``more_tests``) against a PostgreSQL of ``image`` seeded as :data:`ROWS_SEED`."""
    if not (pytester.path / "compose.yaml").exists():
        _postgres_alone(app, pytester, image)
    conftest = (pytester.path / "conftest.py").read_text()
    pytester.makeconftest("import time\n" + conftest.split("@pytest.fixture")[0] + textwrap.dedent(ROWS_SEED))
    pytester.makepyfile(test_rows=ROWS_TESTS + more_tests)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)


@pytest.mark.parametrize("way", ["psql in the container", "psycopg"])
def test_the_rows_a_test_changed_are_put_back_in_place_and_a_schema_change_takes_a_clone(
    app: App, pytester: pytest.Pytester, postgres_base: str, way: str
) -> None:
    """Over psycopg where the tests' environment has it (the port is published), else through psql
    in the container: the same restores (a schema change swaps a clone in; the session follows)."""
    _postgres_alone(app, pytester, postgres_base)
    if way != "psycopg":
        pytester.makepyfile(sitecustomize="import sys\nsys.modules['psycopg'] = None  # not installed\n")
    result = _rows_run(app, pytester, postgres_base)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(
        [f"clean state: * restores of db (postgres: app by rows put back over {way} (rows * ms, clone * ms at the *"]
    )


def test_before_postgresql_15_each_test_gets_a_clone_and_the_summary_says_why(
    app: App, pytester: pytest.Pytester, postgres13_base: str
) -> None:
    # nothing of the row restore in the app's database: no copies, no functions, no event trigger
    nothing = "SELECT count(*) FROM pg_namespace WHERE nspname = '_dockapp_seed'"
    more = "\n\ndef test_nothing_of_ours(dockapp_clean, dockapp_services):\n"
    more += f"    assert psql(dockapp_services['db'], {nothing!r}) == '0'\n"
    result = _rows_run(app, pytester, postgres13_base, more)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(
        ["clean state: 8 restores of db (postgres: every database by a clone (*needs PostgreSQL 15*is 13)):*"]
    )


def test_the_database_user_an_image_sets_in_its_environment_is_the_one_the_restore_logs_in_as(
    app: App, pytester: pytest.Pytester, postgres_base: str
) -> None:
    """``POSTGRES_USER`` set by the image (its ``ENV``), not the compose file: the server has no
    ``postgres`` role, and the snapshot and restores are made as the image's user."""
    app.httpd()
    cmd = "test -s $PGDATA/PG_VERSION || { initdb -A trust -U app >/dev/null && echo host all all all trust >> "
    cmd += "$PGDATA/pg_hba.conf; }; exec postgres -c listen_addresses=* -c unix_socket_directories=/tmp"
    (pytester.path / "Dockerfile.db").write_text(
        f"FROM {postgres_base}\nENV POSTGRES_USER=app\nCMD {json.dumps(['sh', '-c', cmd])}\n"
    )
    (pytester.path / "compose.yaml").write_text(
        "services:\n  web: {build: ., depends_on: {db: {condition: service_healthy}}}\n"
        "  db:\n    build: {context: ., dockerfile: Dockerfile.db}\n"
        '    healthcheck: {test: "pg_isready -h 127.0.0.1 -U app", interval: 1s, retries: 30}\n'
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    seed_db_only = CONFTEST.split("    cache.exec")[0].replace('"-U", "postgres"', '"-U", "app"')
    both = 'db, cache = dockapp_services["db"], dockapp_services["cache"]'
    pytester.makeconftest(seed_db_only.replace(both, 'db = dockapp_services["db"]'))
    pytester.makepyfile(
        test_user="""
        import pytest
        from conftest import psql

        @pytest.mark.parametrize("n", range(2))
        def test_sees_the_seed(dockapp_clean, dockapp_services, n):
            assert psql(dockapp_services["db"], "SELECT count(*) FROM items") == "1000"
            psql(dockapp_services["db"], "INSERT INTO items VALUES (-1)")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["clean state: 2 restores of db (postgres: *"])


def test_sql_files_the_image_runs_at_its_first_start_are_the_seed_when_the_conftest_has_none(
    app: App, pytester: pytest.Pytester, postgres_base: str
) -> None:
    """The compose file's own declarative seed: a SQL file mounted in
    ``/docker-entrypoint-initdb.d``, which the official images run at the first start (the
    image here does as they do). With no ``dockapp_seed`` of the conftest's, what the stack
    started with is what every test starts from."""
    app.httpd()
    first_start = (
        "test -s $PGDATA/PG_VERSION || { initdb -A trust -U postgres >/dev/null && echo host all all all trust >> "
        "$PGDATA/pg_hba.conf && pg_ctl -w -o '-c listen_addresses= -c unix_socket_directories=/tmp' start && "
        "for f in /docker-entrypoint-initdb.d/*.sql; do psql -h /tmp -v ON_ERROR_STOP=1 -f $f || exit 1; done && "
        "pg_ctl -w stop; }; exec postgres -c listen_addresses=* -c unix_socket_directories=/tmp"
    )
    (pytester.path / "Dockerfile.db").write_text(f"FROM {postgres_base}\nCMD {json.dumps(['sh', '-c', first_start])}\n")
    (pytester.path / "seed.sql").write_text("CREATE TABLE items (n int);\nINSERT INTO items VALUES (1), (2), (3);\n")
    (pytester.path / "compose.yaml").write_text(
        "services:\n  web: {build: ., depends_on: {db: {condition: service_healthy}}}\n"
        "  db:\n    build: {context: ., dockerfile: Dockerfile.db}\n"
        "    volumes: [./seed.sql:/docker-entrypoint-initdb.d/seed.sql]\n"
        '    healthcheck: {test: "pg_isready -h 127.0.0.1", interval: 1s, retries: 30}\n'
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makeconftest(CONFTEST.split("@pytest.fixture")[0])  # psql(), and no dockapp_seed
    pytester.makepyfile(
        test_seed="""
        import pytest
        from conftest import psql

        @pytest.mark.parametrize("n", range(2))
        def test_sees_what_the_stack_started_with(dockapp_clean, dockapp_services, n):
            assert psql(dockapp_services["db"], "SELECT string_agg(n::text, ',') FROM items", "postgres") == "1,2,3"
            psql(dockapp_services["db"], "INSERT INTO items VALUES (-1)", "postgres")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["clean state: 2 restores of db (postgres: *"])


def test_a_service_whose_data_cannot_be_put_back_gives_each_test_a_fresh_stack_unless_the_session_seeds(
    app: App, pytester: pytest.Pytester, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        f"services:\n  web: {{build: .}}\n  queue: {{image: {app.busybox}, command: [sleep, '600'], "
        "volumes: [data:/data]}\nvolumes: {data: {}}\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_writes_to_the_queue(dockapp_clean, n):
            queue = dockapp_clean.services["queue"]
            assert queue.exec(["sh", "-c", "ls /data; touch /data/written"]) == (0, "")
        """
    )
    # nothing seeded: a stack of its own is exactly as seeded, so each test gets one
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["clean state: service queue keeps data (a volume) * each test got a fresh stack *"])
    # with --dockapp-keep, a failing test's own stack stays running, with what the test left in it
    failing = pytester.makepyfile(
        test_fails="def test_fails(dockapp_clean):\n    dockapp_clean.services['queue'].exec(['touch', '/data/left'])\n"
        "    assert False\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-keep", str(failing))
    failing.unlink()
    kept = [c for c in docker_client.api.containers(all=True) if c["Names"][0].endswith("-queue-kept")]
    try:
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["kept dockapp-*-queue-kept at (no port); remove: docker rm -f *"])
        assert docker_client.api.exec_start(docker_client.api.exec_create(kept[0]["Id"], ["ls", "/data"])) == b"left\n"
    finally:
        for container in kept:
            cleanup.remove_labelled(docker_client, f"{STACK_LABEL}={container['Labels'][STACK_LABEL]}")
    assert len(kept) == 1
    # the same where the session's stack is reused across runs: its reset leaves the queue's data be
    monkeypatch.setenv("DOCKAPP_REUSE", "force")
    try:
        for _ in range(2):
            pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    finally:
        from pytest_dockapp.services.reuse import down

        down(docker_client, pytester.path)
    monkeypatch.delenv("DOCKAPP_REUSE")
    # and under pytest-xdist with the one stack all workers share: each test's stack is its own
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "-o", "dockapp_compose_scope=session").assert_outcomes(
        passed=2
    )
    # a seed runs once, on the session's stack: a fresh stack per test would start unseeded
    pytester.makeconftest("import pytest\n\n@pytest.fixture(scope='session')\ndef dockapp_seed(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*service queue keeps data (a volume), and dockapp_clean can put back only PostgreSQL, MariaDB (MySQL) *"
            "dockapp_seed seeds the session's stack once*",
            "*mark it x-dockapp: {state: none} in the compose file*",
        ]
    )
    # marked as holding nothing the tests care about, the stack's other services are restored as usual
    compose = (
        (pytester.path / "compose.yaml")
        .read_text()
        .replace("volumes: [data:/data]}", "volumes: [data:/data], x-dockapp: {state: none}}")
    )
    (pytester.path / "compose.yaml").write_text(compose)
    pytester.makepyfile("def test_one(dockapp_clean):\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_without_a_stack_each_test_gets_an_app_of_its_own(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        seen = []

        def test_one(dockapp_clean):
            seen.append(dockapp_clean.container.id)

        def test_two(dockapp_clean):
            assert dockapp_clean.container.id not in seen
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_under_xdist_each_workers_stack_is_restored_on_its_own_and_a_shared_one_is_refused(
    app: App, pytester: pytest.Pytester, redis_base: str
) -> None:
    app.httpd()
    compose = f"services:\n  web: {{build: ., depends_on: [cache]}}\n  cache: {{image: {redis_base}}}\n"
    (pytester.path / "compose.yaml").write_text(compose)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def dockapp_seed(dockapp_services):
            dockapp_services["cache"].exec(["redis-cli", "SET", "seeded", "1"])
        """
    )
    pytester.makepyfile(
        test_clean="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_write(dockapp_clean, dockapp_services, n):
            cache = dockapp_services["cache"]
            assert cache.exec(["redis-cli", "DBSIZE"])[1] == "1\\n"
            cache.exec(["redis-cli", "SET", f"written-{n}", "1"])
        """
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_compose_scope = worker\n")
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2").assert_outcomes(passed=4)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_compose_scope = session\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*hint: set dockapp_compose_scope = worker*"])


def _web_and_db(app: App, pytester: pytest.Pytester, image: str, healthcheck: str) -> None:
    """The web app waiting for one database service, ``db``, in the compose file the ini names."""
    app.httpd()
    compose = "services:\n  web: {build: ., depends_on: {db: {condition: service_healthy}}}\n  db:\n"
    compose += f"    image: {image}\n    healthcheck: {healthcheck}\n"
    (pytester.path / "compose.yaml").write_text(compose)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")


def _postgres_alone(app: App, pytester: pytest.Pytester, postgres_base: str) -> None:
    """The web app and its PostgreSQL (no Redis), seeded as :data:`CONFTEST` seeds it."""
    _web_and_db(app, pytester, postgres_base, '{test: "pg_isready -h 127.0.0.1", interval: 1s, retries: 30}')
    seed_db_only = CONFTEST.split("    cache.exec")[0]
    both = 'db, cache = dockapp_services["db"], dockapp_services["cache"]'
    pytester.makeconftest(seed_db_only.replace(both, 'db = dockapp_services["db"]'))


def test_with_keep_a_failing_tests_database_is_kept_with_the_command_that_opens_it(
    app: App, pytester: pytest.Pytester, postgres_base: str, docker_client: Any
) -> None:
    _postgres_alone(app, pytester, postgres_base)
    pytester.makepyfile(
        test_keep="""
        from conftest import psql

        def test_writes_and_fails(dockapp_clean, dockapp_services):
            psql(dockapp_services["db"], "INSERT INTO items VALUES (-1)")
            assert False, "a bug"

        def test_the_next_one_sees_the_seed(dockapp_clean, dockapp_services):
            assert psql(dockapp_services["db"], "SELECT count(*) FROM items") == "1000"
        """
    )
    out = _kept(pytester, docker_client, "app_kept_1", ["-Atc", "SELECT count(*) FROM items"])
    assert out.split() == ["1001"]  # what the failing test left, to look at


def _kept(pytester: pytest.Pytester, docker_client: Any, database: str, query: list[str]) -> str:
    """Run ``test_keep.py`` with ``--dockapp-keep`` (one test fails, the next passes), check the
    summary's line about the failing test's ``database``, and return what its connect command
    prints with ``query`` appended; the kept stack is removed after."""
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-keep")
    kept = [c for c in docker_client.api.containers(all=True) if c["Names"][0].endswith("-db-kept")]
    try:
        result.assert_outcomes(passed=1, failed=1)
        line = next(x for x in result.outlines if x.startswith("kept the database test_keep.py::test_writes_and_fails"))
        assert f" {database} in " in line and "-db-kept; connect: docker exec -it " in line, line
        command = [w for w in shlex.split(line.split("connect: ", 1)[1]) if w != "-it"]
        out = subprocess.run([*command, *query], capture_output=True, text=True)
        assert out.returncode == 0, out
        return out.stdout
    finally:
        for container in kept:  # this session's kept stack, by its label
            cleanup.remove_labelled(docker_client, f"{STACK_LABEL}={container['Labels'][STACK_LABEL]}")


def test_with_keep_a_failing_tests_mariadb_tables_are_kept_with_the_command_that_opens_them(
    app: App, pytester: pytest.Pytester, mariadb_base: str, docker_client: Any
) -> None:
    _web_and_db(app, pytester, mariadb_base, "{test: [CMD, mariadb-admin, ping], interval: 1s, retries: 60}")
    pytester.makeconftest(MARIADB_CONFTEST)
    pytester.makepyfile(
        test_keep="""
        from conftest import sql

        def test_writes_and_fails(dockapp_clean, dockapp_services):
            sql(dockapp_services["db"], "INSERT INTO shop.items (n) VALUES (-1); CREATE TABLE shop.scratch (x INT)")
            assert False, "a bug"

        def test_the_next_one_sees_the_seed(dockapp_clean, dockapp_services):
            db = dockapp_services["db"]
            assert sql(db, "SELECT count(*) FROM shop.items") == "1000"
            assert sql(db, "SHOW TABLES FROM shop").split() == ["items", "notes"]
        """
    )
    query = ["--batch", "--skip-column-names", "-e", "SELECT count(*) FROM items; SHOW TABLES"]
    out = _kept(pytester, docker_client, "shop_kept_1", query)
    assert out.split() == ["1001", "items", "notes", "scratch"]  # what the failing test left


def test_sigterm_while_the_next_clone_is_made_removes_the_whole_stack(
    app: App, pytester: pytest.Pytester, postgres_base: str, docker_client: Any
) -> None:
    _postgres_alone(app, pytester, postgres_base)
    pytester.makepyfile(
        test_hold="""
        import time
        from conftest import psql

        def test_writes(dockapp_clean, dockapp_services):
            # a new table: only a clone undoes that, and the next one is made in the background
            psql(dockapp_services["db"], "CREATE TABLE more AS SELECT generate_series(1, 50000)")

        def test_held_while_the_next_clone_is_made(dockapp_clean):
            open("in-test", "w").close()  # the restore before this test started the next clone
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        pytest_cmd("test_hold.py"), cwd=pytester.path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    wait_for(pytester.path / "in-test", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, out
    flt = {"label": f"org.pytest-dockapp.pid={proc.pid}"}
    assert docker_client.api.containers(all=True, filters=flt) == [], out  # the database and its clones with it
    assert docker_client.api.volumes(filters=flt).get("Volumes") in (None, []), out


MARIADB_CONFTEST = """
import pytest

def sql(db, statement):
    code, out = db.exec(["mariadb", "-uroot", "--batch", "--skip-column-names", "-e", statement])
    assert code == 0, out
    return out.strip()

@pytest.fixture(scope="session")
def dockapp_seed(dockapp_services):
    schema = "CREATE DATABASE shop; CREATE TABLE shop.items (id INT AUTO_INCREMENT PRIMARY KEY, n INT);"
    # rows a cascade deletes fire no trigger and move no count of their table
    schema += "CREATE TABLE shop.notes (id INT PRIMARY KEY, item INT REFERENCES shop.items (id) ON DELETE CASCADE);"
    sql(dockapp_services["db"], schema + "INSERT INTO shop.items (n) SELECT seq FROM shop.seq_1_to_1000")
    sql(dockapp_services["db"], "INSERT INTO shop.notes SELECT seq, seq FROM shop.seq_1_to_100")
"""

MARIADB_TESTS = """
import pytest
from conftest import sql

@pytest.mark.parametrize("n", range(3))
def test_each_test_sees_only_the_seed(dockapp_clean, dockapp_services, n):
    db = dockapp_services["db"]
    assert sql(db, "SELECT count(*) FROM shop.items") == "1000"
    assert sql(db, "SHOW TABLES FROM shop").split() == ["items", "notes"]  # the table the test before made is gone
    sql(db, "INSERT INTO shop.items (n) VALUES (-1)")
    assert sql(db, "SELECT max(id) FROM shop.items") == "1001"  # AUTO_INCREMENT as seeded
    sql(db, f"CREATE TABLE shop.scratch_{n} (x INT)")
    # a connection the app left open, in a transaction that locks every row: the restore ends it
    lock = "BEGIN; SELECT count(*) FROM shop.items FOR UPDATE; SELECT SLEEP(600)"
    db.container.exec_run(["mariadb", "-uroot", "-e", lock], detach=True)
    while sql(db, "SELECT count(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP%'") == "0":
        pass  # holding its locks before the test ends, as an app's connection would

def test_only_reads_but_leaves_its_transaction_open(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert sql(db, "SELECT count(*) FROM shop.items") == "1000"
    lock = "BEGIN; SELECT count(*) FROM shop.items FOR UPDATE; SELECT SLEEP(600)"
    db.container.exec_run(["mariadb", "-uroot", "-e", lock], detach=True)
    while sql(db, "SELECT count(*) FROM information_schema.processlist WHERE info LIKE 'SELECT SLEEP%'") == "0":
        pass

def test_only_reads(dockapp_clean, dockapp_services):
    assert sql(dockapp_services["db"], "SELECT count(*) FROM shop.items") == "1000"

def test_writes_after_tests_that_only_read(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    sql(db, "SET SESSION innodb_lock_wait_timeout = 5; UPDATE shop.items SET n = 0 WHERE id = 1")  # no lock left
    assert sql(db, "SELECT count(*) FROM shop.items WHERE n = 0") == "1"

def test_changes_rows_but_no_table(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert sql(db, "SELECT count(*), sum(n) FROM shop.items") == "1000\t500500"
    sql(db, "UPDATE shop.items SET n = -n WHERE id <= 10; DELETE FROM shop.items WHERE id BETWEEN 20 AND 29")
    sql(db, "INSERT INTO shop.items (n) VALUES (7), (8)")

def test_sees_the_seed_after_rows_changed(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert sql(db, "SELECT count(*), sum(n) FROM shop.items") == "1000\t500500"
    assert sql(db, "SELECT count(*) FROM shop.notes") == "100"
    sql(db, "INSERT INTO shop.items (n) VALUES (-1)")
    assert sql(db, "SELECT max(id) FROM shop.items") == "1001"  # AUTO_INCREMENT as seeded
"""


MARIADB_ACCOUNT = """

def test_the_restore_logs_in_as_an_account_of_its_own(dockapp_clean, dockapp_services):
    db = dockapp_services["db"]
    assert sql(db, "SELECT user FROM mysql.user WHERE user LIKE 'dockapp%'") == "dockapp_restore"
    assert "dockapp_restore" in sql(db, "SHOW PROCESSLIST")
"""


@pytest.mark.parametrize("way", ["mariadb in the container", "PyMySQL"])
def test_every_test_starts_from_the_seed_in_mariadb(
    app: App, pytester: pytest.Pytester, mariadb_base: str, way: str
) -> None:
    """Over PyMySQL where the tests' environment has it (the port is published), as an account of
    its own that is gone at the end, else through the client in the container: the same restores."""
    _web_and_db(app, pytester, mariadb_base, "{test: [CMD, mariadb-admin, ping], interval: 1s, retries: 60}")
    pytester.makeconftest(MARIADB_CONFTEST)
    tests = MARIADB_TESTS
    if way != "PyMySQL":
        pytester.makepyfile(sitecustomize="import sys\nsys.modules['pymysql'] = None  # not installed\n")
    else:  # the restore's account is dropped as the session ends (a reused server keeps no login of ours)
        tests += MARIADB_ACCOUNT
    pytester.makepyfile(test_clean=tests)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=8 + (way == "PyMySQL"))
    result.stdout.fnmatch_lines(
        [f"clean state: * restores of db (mariadb: the tables a test wrote put back row by row* over {way}*): median *"]
    )
