"""Services from a compose file, run as a user would: a real Dockerfile, compose file and ini."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from typing import Any

import pytest

from .helpers import App, pytest_cmd

COMPOSE = """
services:
  web:
    build: .
    environment:
      CACHE_HOST: cache
    depends_on:
      cache: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
  cache:
    image: REDIS
    healthcheck: {test: [CMD, redis-cli, ping], interval: 1s, retries: 30}
    volumes: [cachedata:/data]
    networks:
      default: {aliases: [redis]}
  migrate:
    image: BUSYBOX
    command: [sh, -c, "echo migrated"]
volumes:
  cachedata:
"""

STACK_TESTS = """
def test_the_app_is_the_built_service(dockapp):
    assert dockapp.get("/").text == "hello\\n"
    assert dockapp.exec(["sh", "-c", "echo $CACHE_HOST"])[1] == "cache\\n"

def test_services_reach_each_other_by_name_and_alias(dockapp):
    for name in ("cache", "redis"):
        assert dockapp.exec(["sh", "-c", f"printf 'PING\\r\\n' | nc -w 5 {name} 6379"])[1] == "+PONG\\r\\n"

def test_a_test_talks_to_the_database_directly(dockapp_services):
    assert sorted(dockapp_services) == ["cache", "web"]
    assert dockapp_services["cache"].exec(["redis-cli", "set", "k", "v"])[1] == "OK\\n"
    assert dockapp_services["cache"].port is not None

def test_failing(dockapp_services):
    assert dockapp_services["web"].get("/").text == "bye"
"""


def project(app: App, redis: str, compose: str = COMPOSE) -> None:
    app.httpd()
    (app.pytester.path / "compose.yaml").write_text(
        textwrap.dedent(compose).lstrip().replace("REDIS", redis).replace("BUSYBOX", app.busybox)
    )


def test_a_compose_project_runs_with_one_ini_line_and_no_conftest(
    app: App, pytester: pytest.Pytester, redis_base: str
) -> None:
    project(app, redis_base)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(STACK_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, failed=1)
    # JUnit properties name each service by its compose name: stable across runs
    junit = (pytester.path / "junit.xml").read_text()
    for prop in ("dockapp.web.image", "dockapp.web.build", "dockapp.cache.ready_seconds"):
        assert f'name="{prop}"' in junit
    # the failing test's report has a log section per service of its stack
    result.stdout.fnmatch_lines(["*dockapp logs: dockapp-*-cache (since this test started)*"])
    result.stdout.fnmatch_lines(["*dockapp logs: dockapp-*-web (since this test started)*"])
    result.stdout.fnmatch_lines(
        [
            "stack dockapp-* (compose.yaml):",
            "  service cache: image *redis*; ready in *s (HEALTHCHECK + port accepts), removed in *s",
            "  service migrate: image *busybox*; ran to the end: exited with code 0",
            "  service web: built * in *; ready in *s (port accepts), removed in *s",
        ]
    )


HOSTILE = {
    "a one-shot service that fails": (
        "  web: {build: ., depends_on: {migrate: {condition: service_completed_successfully}}}\n"
        "  migrate: {image: BUSYBOX, command: [sh, -c, 'echo no such table >&2; exit 3']}\n",
        [
            "*service migrate exited with code 3, and others wait for it to complete successfully*",
            "*no such table*",
            "hint: run it as compose runs it, with the services it needs: docker compose -f */compose.yaml run --rm "
            "migrate",
        ],
    ),
    "a health check that never passes": (
        "  web: {build: ., depends_on: {db: {condition: service_healthy}}}\n"
        "  db: {image: BUSYBOX, command: [sleep, '600'],"
        " healthcheck: {test: [CMD, 'false'], interval: 1s, retries: 1000}}\n",
        ["*container dockapp-*-db did not become ready within 3s*"],
    ),
    "a health check the engine gives up on": (
        "  web: {build: ., depends_on: {db: {condition: service_healthy}}}\n"
        "  db: {image: BUSYBOX, command: [sleep, '600'], healthcheck: {test: [CMD, 'false'], interval: 200ms,"
        " retries: 2}}\n",
        [
            "*service db: container dockapp-*-db is unhealthy*",
            "*give its healthcheck in * a start_period or more retries*",
        ],
    ),
    "a service that exits": (
        "  web: {build: ., depends_on: [db]}\n  db: {image: BUSYBOX, command: [sh, -c, 'echo bye; exit 1']}\n",
        ["*db exited with code 1*", "*bye*"],
    ),
    "an image that is not on the engine": (
        "  web: {build: ., depends_on: [db]}\n  db: {image: 'no-such/image:1'}\n",
        ["*service db runs image 'no-such/image:1', which is not on the engine and could not be pulled*"],
    ),
    "a dependency cycle": (
        "  web: {build: ., depends_on: [a]}\n  a: {image: BUSYBOX, depends_on: [b]}\n"
        "  b: {image: BUSYBOX, depends_on: [a]}\n",
        ["*depends_on has a cycle: a -> b -> a*"],
    ),
    "a key a test run cannot honour": (
        "  web: {build: ., privileged: true, helthcheck: {test: [CMD, 'true']}}\n",
        [
            "*compose.yaml: 2 keys a test run cannot honour*",
            "*service web: privileged (compose.yaml:2): containers are never privileged*",
            "*service web: helthcheck (compose.yaml:2): not a key of the Compose Specification: check its spelling*",
            "*dockapp_compose_ignore = helthcheck privileged*",
        ],
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_compose_file_gets_one_clear_error(app: App, pytester: pytest.Pytester, case: str) -> None:
    services, lines = HOSTILE[case]
    app.httpd()
    (pytester.path / "compose.yaml").write_text("services:\n" + services.replace("BUSYBOX", app.busybox))
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_timeout = 3\n")
    pytester.makepyfile("def test_one(dockapp):\n    pass\n\ndef test_two(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(lines)
    result.stdout.fnmatch_lines(["*(the session stack failed: see the first error above*"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "Ctrl-C"])
def test_a_stack_killed_while_starting_leaves_nothing_after_the_next_run(
    app: App, pytester: pytest.Pytester, docker_client: Any, how: signal.Signals
) -> None:
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        "services:\n  web: {build: ., depends_on: {db: {condition: service_healthy}}}\n"
        f"  db: {{image: {app.busybox}, command: [sleep, '600'], volumes: [data:/data],"
        " healthcheck: {test: [CMD, 'false'], interval: 1s, retries: 1000}}\nvolumes:\n  data:\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(test_stack="def test_one(dockapp):\n    pass\n")
    proc = subprocess.Popen(pytest_cmd("test_stack.py"), cwd=pytester.path, stdout=subprocess.PIPE, text=True)
    flt = {"label": f"org.pytest-dockapp.pid={proc.pid}"}
    deadline = time.monotonic() + 120
    while not docker_client.api.containers(filters={**flt, "name": "-db"}):  # db is up, its health never passes
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(how)
    proc.communicate(timeout=60)

    def left() -> list[str]:
        names = [c["Names"][0] for c in docker_client.api.containers(all=True, filters=flt)]
        names += [n["Name"] for n in docker_client.api.networks(filters=flt)]
        return names + [v["Name"] for v in (docker_client.api.volumes(filters=flt) or {}).get("Volumes") or []]

    if how != signal.SIGKILL:
        assert left() == []  # its own teardown removed the stack
        return
    assert left(), "SIGKILL runs no teardown: the stack is still there"
    pytester.makepyfile(test_next="def test_two(dockapp_image):\n    pass\n")
    (pytester.path / "compose.yaml").write_text("services:\n  web: {build: .}\n")
    result = pytester.runpytest_subprocess("test_next.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["swept leftovers of killed sessions: * containers, 1 networks, 1 volumes, *"])
    assert left() == []
    assert os.environ.get("DOCKAPP_LABELS")  # the leak check of `app` covered this run's own resources too


def test_the_cache_marker_and_the_factory_take_a_service(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    worker = pytester.path / "worker"
    worker.mkdir()
    (worker / "job.sh").write_text("echo working\n")
    app.dockerfile('FROM {BUSYBOX}\nCOPY job.sh /job.sh\nCMD ["sleep", "600"]\n', path=worker)
    (pytester.path / "compose.yaml").write_text("services:\n  web: {build: .}\n  worker: {build: ./worker}\n")
    (pytester.path / "extra.yaml").write_text(
        "services:\n  web: {build: ., depends_on: [side]}\n"
        f"  side: {{image: {app.busybox}, command: [sleep, '600']}}\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.dockapp_cache(service="worker", change=["job.sh"])  # relative to its context
        def test_worker_cache(dockapp_cache_report):
            assert dockapp_cache_report.step("COPY job.sh /job.sh").cached is False

        @pytest.mark.dockapp_budget(service="worker", layers=2)
        def test_worker_budget():
            pass

        def test_own_stack(dockapp_factory, dockapp):
            mine = dockapp_factory(compose="extra.yaml", service="web")
            assert mine.get("/").text == "hello\\n" and mine.name != dockapp.name
            assert sorted(mine.services) == ["side", "web"]
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    # the worker's image: busybox's 2 layers and its COPY
    result.stdout.fnmatch_lines(["*image pytest-dockapp/worker:* has 3 layers > budget 2"])


XDIST_TESTS = """
import os, pytest

@pytest.mark.parametrize("n", range(6))
def test_stack(dockapp_services, n):
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(f"seen-{worker}-{n}", "w") as fh:
        fh.write(dockapp_services["cache"].container.id)
    assert dockapp_services["web"].get("/").status_code == 200
"""


@pytest.mark.parametrize(("scope", "stacks"), [("session", 1), ("worker", 2)])
def test_xdist_workers_share_one_stack_or_run_one_each(
    app: App, pytester: pytest.Pytester, redis_base: str, scope: str, stacks: int
) -> None:
    project(app, redis_base)
    pytester.makeini(f"[pytest]\ndockapp_compose = compose.yaml\ndockapp_compose_scope = {scope}\n")
    pytester.makepyfile(XDIST_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=6)
    seen = {p.read_text() for p in pytester.path.glob("seen-*")}
    workers = {p.name.split("-")[1] for p in pytester.path.glob("seen-*")}
    assert len(workers) == 2 and len(seen) == stacks
    if scope == "session":  # the workers' lines come in the order the workers ended
        result.stdout.fnmatch_lines(["*stack dockapp-* (compose.yaml; shared by every pytest-xdist worker):"])
        # told once: the other worker's "started by another worker" line adds nothing
        assert "shared, started by another pytest-xdist worker" not in result.stdout.str()
        assert result.stdout.str().count("  service web: ") == 1
        result.stdout.fnmatch_lines(["removed dockapp-*, the stack the workers shared"])


@pytest.mark.remote
def test_an_app_with_postgres_and_redis_passes_with_two_ini_lines(
    app: App, pytester: pytest.Pytester, redis_base: str, postgres_base: str
) -> None:
    """The user's project of issue 22, as it is: locally, and in .ci/run's remote subset with
    DOCKER_HOST alone pointing at the second engine."""
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        textwrap.dedent(
            f"""
            services:
              web:
                build: .
                environment: {{DATABASE_URL: "postgresql://postgres@db/postgres", REDIS_HOST: cache}}
                depends_on:
                  db: {{condition: service_healthy}}
                  cache: {{condition: service_healthy}}
              db:
                image: {postgres_base}
                volumes: [pgdata:/var/lib/postgresql/data]
                healthcheck: {{test: pg_isready -h 127.0.0.1, interval: 1s, retries: 30}}
              cache:
                image: {redis_base}
                healthcheck: {{test: [CMD, redis-cli, ping], interval: 1s, retries: 30}}
            volumes:
              pgdata:
            """
        )
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makepyfile(
        """
        import socket

        def test_app(dockapp):
            assert dockapp.get("/").text == "hello\\n"

        def test_database_from_the_test(dockapp_services):
            db = dockapp_services["db"]
            assert db.exec(["psql", "-h", "127.0.0.1", "-tAc", "select 40 + 2"]) == (0, "42\\n")
            with socket.create_connection((db.host, db.ports[5432]), timeout=10):
                pass  # published, reachable from the tests

        def test_the_app_reaches_both(dockapp):
            for host, port in (("db", 5432), ("cache", 6379)):
                code, out = dockapp.exec(["sh", "-c", f"echo | nc -w 3 {host} {port}; echo rc=$?"])
                assert "rc=0" in out, out
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@pytest.mark.local_engine("a bind mount names a folder of this machine")
def test_the_run_keys_reach_the_container(app: App, pytester: pytest.Pytester) -> None:
    import socket

    app.httpd()
    with socket.socket() as s:  # a free port for the one fixed host port the file asks for
        s.bind(("127.0.0.1", 0))
        fixed = s.getsockname()[1]
    (pytester.path / "data").mkdir()
    (pytester.path / "data" / "seed.txt").write_text("seeded\n")
    (pytester.path / "web.env").write_text("FROM_FILE=1\nOVERRIDDEN=file\n")
    (pytester.path / "compose.yaml").write_text(
        textwrap.dedent(
            f"""
            services:
              web:
                build: .
                env_file: web.env
                environment: [OVERRIDDEN=compose]
                entrypoint: ["/bin/sh", "-c"]
                command: ["echo started as $$(id -u) in $$(pwd); exec httpd -f -p 80 -h /www"]
                working_dir: /tmp
                user: "1000"
                tmpfs: [/scratch]
                labels: {{team: payments}}
                volumes: ["./data:/seed:ro"]
                ports: ["{fixed}:80"]
            """
        )
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_compose_host_ports = true\n")
    pytester.makepyfile(
        f"""
        def test_keys(dockapp):
            assert dockapp.port == {fixed}
            assert "started as 1000 in /tmp" in dockapp.logs()
            env = dockapp.exec(["env"])[1]
            assert "FROM_FILE=1" in env and "OVERRIDDEN=compose" in env
            assert dockapp.exec(["cat", "/seed/seed.txt"]) == (0, "seeded\\n")
            assert dockapp.exec(["sh", "-c", "touch /seed/x"])[0] != 0  # read-only
            assert "/scratch" in dockapp.exec(["sh", "-c", "grep scratch /proc/mounts"])[1]
            assert dockapp.container.labels["team"] == "payments"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_dockapp_fresh_under_compose_is_a_stack_of_the_tests_own(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        "services:\n  web: {build: ., depends_on: [side]}\n"
        f"  side: {{image: {app.busybox}, command: [sleep, '600']}}\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_fresh(dockapp_fresh, n):
            assert sorted(dockapp_fresh.services) == ["side", "web"]
            open(f"seen-{n}", "w").write(dockapp_fresh.services["side"].container.id)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert len({p.read_text() for p in pytester.path.glob("seen-*")}) == 2  # a stack per test


ODD_NAMES = """
services:
  "web app":
    build: .
    depends_on:
      "wéb☃": {condition: service_started}
      "job/x": {condition: service_completed_successfully}
  "wéb☃":
    image: BUSYBOX
    command: [sleep, "300"]
  "job/x":
    image: BUSYBOX
    command: [sh, -c, "echo done"]
"""


def test_service_names_the_engine_refuses_as_container_names_still_run(
    app: App, pytester: pytest.Pytester, docker_client: Any
) -> None:
    project(app, "unused", ODD_NAMES)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(
        """
        def test_stack(dockapp, dockapp_services):
            assert dockapp.get("/").text == "hello\\n"
            assert sorted(dockapp_services) == ["web app", "wéb☃"]
            assert dockapp_services["wéb☃"].container.labels["org.pytest-dockapp.service"] == "wéb☃"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "Invalid container name" not in result.stdout.str()


SLOW_JOB = """
services:
  web:
    build: .
    depends_on:
      migrate: {condition: service_completed_successfully}
  migrate:
    image: BUSYBOX
    command: [sleep, "30"]
"""


def test_a_one_shot_job_that_outlives_the_timeout_is_a_clear_error(app: App, pytester: pytest.Pytester) -> None:
    project(app, "unused", SLOW_JOB)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_timeout = 2\n")
    pytester.makepyfile("def test_f(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*service migrate*did not finish within 2s*", "*hint: a service others wait for*"])
    assert "requests.exceptions" not in result.stdout.str() and "Read timed out" not in result.stdout.str()
