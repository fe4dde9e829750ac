"""The developer loop (``--dockapp-reuse``): a second ``pytest`` run attaches to the app or stack
the first one left running, as a developer re-runs one test; and everything around it: a change
replaces it, two runs at once never share it, ``--dockapp-down``, the idle sweep, SIGKILL, CI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.engine import cleanup
from pytest_dockapp.services.reuse import CI_VARIABLES

from .helpers import App, pytest_cmd, wait_for

#: Each run writes the container IDs it was handed, by service.
IDS_TEST = """
import json, os

def test_ids(dockapp_services):
    with open(os.environ.get("IDS", "ids.json"), "w") as fh:
        json.dump({n: a.container.id for n, a in dockapp_services.items()}, fh)
    assert dockapp_services.main.get("/").text == "hello\\n"
"""

APP_TEST = """
import json

def test_ids(dockapp):
    with open("ids.json", "w") as fh:
        json.dump({"app": dockapp.container.id}, fh)
    assert dockapp.get("/").ok
"""


@pytest.fixture
def dev(app: App, pytester: pytest.Pytester, docker_client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's machine: no CI variable set. Whatever a test left reusable is removed after
    it, even when it failed (before the leak check of ``app``)."""
    for name in CI_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    yield
    from pytest_dockapp.services.reuse import down

    down(docker_client, pytester.path)


def _ids(pytester: pytest.Pytester) -> dict[str, str]:
    data: dict[str, str] = json.loads((pytester.path / "ids.json").read_text())
    return data


def _reusable(client: Any, project: Path) -> list[str]:
    flt = {"label": f"{cleanup.REUSE_PROJECT}={project.resolve()}"}
    return sorted(c["Names"][0].lstrip("/") for c in client.api.containers(all=True, filters=flt))


def _web_and_redis(app: App, pytester: pytest.Pytester, redis_base: str, ini: str = "") -> None:
    """A web app and its Redis from a compose file, and a test that writes the IDs it was handed."""
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        f"services:\n  web: {{build: ., depends_on: [cache]}}\n  cache: {{image: {redis_base}}}\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n" + ini)
    pytester.makepyfile(test_ids=IDS_TEST)


def _down(pytester: pytest.Pytester) -> pytest.RunResult:
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-down")
    assert result.ret == 0, result.stdout.str()
    return result


@pytest.mark.remote
def test_a_second_run_attaches_to_the_stack_the_first_left_running(
    app: App, pytester: pytest.Pytester, redis_base: str, docker_client: Any, dev: None
) -> None:
    _web_and_redis(app, pytester, redis_base)
    first = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["dockapp reuse: on;*", "reuse: started the stack compose.yaml; it stays running*"])
    started = _ids(pytester)
    assert len(_reusable(docker_client, pytester.path)) == 2
    since = time.time()
    second = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines(
        ["reuse: attached to the stack compose.yaml the last run left (idle *; no build, no start"]
    )
    assert _ids(pytester) == started
    # The attached stack's running containers pin its images: no lease is made (each cost 25-45 ms).
    leases = docker_client.events(
        since=f"{since:.6f}",
        until=f"{time.time() + 1:.6f}",
        decode=True,
        filters={
            "type": "container",
            "event": "create",
            "label": [f"{cleanup.KIND}=lease", f"{cleanup.PID}={os.getpid()}"],
        },
    )
    assert [e["Actor"]["Attributes"]["name"] for e in leases] == []
    down = _down(pytester)
    down.stdout.fnmatch_lines(["dockapp down: removed *web*"])
    assert _reusable(docker_client, pytester.path) == []
    # reuse off (the default): the stack goes at the end, as always
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert _reusable(docker_client, pytester.path) == []


def test_a_changed_dockerfile_or_setting_replaces_the_app_and_says_what_changed(
    app: App, pytester: pytest.Pytester, docker_client: Any, dev: None
) -> None:
    app.httpd()
    pytester.makepyfile(test_ids=APP_TEST)
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse").assert_outcomes(passed=1)
    first = _ids(pytester)["app"]
    app.httpd(extra="RUN echo changed > /www/changed")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["reuse: the app * changed since the last run: image * → *"])
    second = _ids(pytester)["app"]
    assert second != first
    assert [c["Id"] for c in docker_client.api.containers(all=True, filters={"id": first})] == []
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse", "--dockapp-health-path=/")
    result.stdout.fnmatch_lines(["reuse: the app * changed since the last run: options * → *"])
    assert _ids(pytester)["app"] != second
    _down(pytester)
    assert _reusable(docker_client, pytester.path) == []


def test_two_runs_at_once_never_share_one_app_and_down_keeps_the_one_in_use(
    app: App, pytester: pytest.Pytester, docker_client: Any, dev: None
) -> None:
    app.httpd()
    pytester.makepyfile(test_ids=APP_TEST)
    holder = subprocess.Popen(
        pytest_cmd("--dockapp-reuse", "test_hold.py"),
        cwd=pytester.path,
        env={**os.environ, "HOLDER": "a"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    pytester.makepyfile(test_hold=HOLD)
    try:
        wait_for(pytester.path / "ready-a", holder)
        held = (pytester.path / "ready-a").read_text()
        result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse", "test_ids.py")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            ["reuse: another pytest run is using the reusable app *; this run started its own*"]
        )
        assert _ids(pytester)["app"] != held
        assert [c["Id"] for c in docker_client.api.containers(all=True, filters={"id": _ids(pytester)["app"]})] == []
        _down(pytester).stdout.fnmatch_lines(["dockapp down: kept *: a pytest run is using it now"])
    finally:
        (pytester.path / "release-a").write_text("")
        out = holder.communicate(timeout=120)[0]
    assert holder.returncode == 0, out
    _down(pytester).stdout.fnmatch_lines(["dockapp down: removed *"])
    assert _reusable(docker_client, pytester.path) == []


HOLD = """
import os, time

def test_hold(dockapp):
    with open("ready-" + os.environ["HOLDER"], "w") as fh:
        fh.write(dockapp.container.id)
    while not os.path.exists("release-" + os.environ["HOLDER"]):
        time.sleep(0.05)
"""


def test_a_run_killed_while_attached_leaves_the_app_reusable(
    app: App, pytester: pytest.Pytester, docker_client: Any, dev: None
) -> None:
    app.httpd()
    pytester.makepyfile(test_ids=APP_TEST, test_hold=HOLD)
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse", "test_ids.py").assert_outcomes(passed=1)
    started = _ids(pytester)["app"]
    holder = subprocess.Popen(
        pytest_cmd("--dockapp-reuse", "test_hold.py"),
        cwd=pytester.path,
        env={**os.environ, "HOLDER": "k"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    wait_for(pytester.path / "ready-k", holder)
    assert (pytester.path / "ready-k").read_text() == started
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse", "test_ids.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["reuse: attached to the app *"])
    assert _ids(pytester)["app"] == started
    _down(pytester)


def test_an_unused_reusable_app_is_swept_after_its_ttl_and_reuse_is_off_in_ci(
    app: App, pytester: pytest.Pytester, docker_client: Any, dev: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.httpd()
    pytester.makepyfile(test_ids=APP_TEST)
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse").assert_outcomes(passed=1)
    assert len(_reusable(docker_client, pytester.path)) == 1
    # the next run, reuse on or off, sweeps what went unused longer than dockapp_reuse_ttl (2 h):
    # this app's last use is moved back 3 h (a zero TTL would sweep other runs' reusable apps too)
    state = Path(os.environ["XDG_CACHE_HOME"]) / "pytest-dockapp" / cleanup.REUSE_FILE
    record = json.loads(state.read_text())
    state.write_text(
        json.dumps({slot: {**entry, "last_used": time.time() - 3 * 3600} for slot, entry in record.items()})
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["swept leftovers of killed sessions: *; 1 containers of reusable apps * unused past *"]
    )
    assert _reusable(docker_client, pytester.path) == []
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp reuse: off, because CI is set (read as CI: CI, GITHUB_ACTIONS, *"])
    assert _reusable(docker_client, pytester.path) == []
    monkeypatch.setenv("DOCKAPP_REUSE", "force")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert len(_reusable(docker_client, pytester.path)) == 1
    _down(pytester)


def test_with_dockapp_clean_each_run_of_a_reused_stack_starts_from_the_seed(
    app: App, pytester: pytest.Pytester, redis_base: str, postgres_base: str, docker_client: Any, dev: None
) -> None:
    from .test_clean_state import COMPOSE, CONFTEST, TESTS

    app.httpd()
    compose = COMPOSE.replace("POSTGRES", postgres_base).replace("REDIS", redis_base)
    (pytester.path / "compose.yaml").write_text(compose)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    # the seed is not idempotent (CREATE DATABASE): a second seed on the last run's data would fail
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_clean=TESTS)
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse").assert_outcomes(passed=3)
    again = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    again.assert_outcomes(passed=3)
    again.stdout.fnmatch_lines(["clean state: 3 restores of *", "reuse: attached to the stack compose.yaml *"])
    _down(pytester)
    assert _reusable(docker_client, pytester.path) == []


def test_with_dockapp_clean_a_reused_mariadb_that_started_with_no_database_starts_from_the_seed(
    app: App, pytester: pytest.Pytester, mariadb_base: str, docker_client: Any, dev: None
) -> None:
    from .test_clean_state import MARIADB_CONFTEST, MARIADB_TESTS, _web_and_db

    _web_and_db(app, pytester, mariadb_base, "{test: [CMD, mariadb-admin, ping], interval: 1s, retries: 60}")
    pytester.makeconftest(MARIADB_CONFTEST)  # CREATE DATABASE shop: a second seed on the last run's data would fail
    pytester.makepyfile(test_clean=MARIADB_TESTS)
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse").assert_outcomes(passed=8)
    project = f"{cleanup.REUSE_PROJECT}={pytester.path.resolve()}"
    (db,) = docker_client.containers.list(filters={"label": [project, f"{cleanup.PREFIX}service=db"]})
    accounts = db.exec_run(["mariadb", "-uroot", "-Ne", "SELECT user FROM mysql.user WHERE user LIKE 'dockapp%'"])
    assert accounts.output == b"", accounts  # the restore's own login is gone with the session
    again = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    again.assert_outcomes(passed=8)
    again.stdout.fnmatch_lines(["reuse: attached to the stack compose.yaml *"])
    _down(pytester)
    assert _reusable(docker_client, pytester.path) == []


def test_a_changed_app_source_restarts_only_the_app_and_keeps_its_database(
    app: App, pytester: pytest.Pytester, redis_base: str, docker_client: Any, dev: None
) -> None:
    _web_and_redis(app, pytester, redis_base, "dockapp_health_path = /\n")
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse").assert_outcomes(passed=1)
    first = _ids(pytester)
    app.httpd(extra="RUN echo changed > /www/changed")
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "  service web: built * ready in *s (GET /)",  # the session's health path, as in a start
            "reuse: the stack compose.yaml changed since the last run: image of web * → *; started web anew and kept *",
        ]
    )
    second = _ids(pytester)
    assert second["cache"] == first["cache"] and second["web"] != first["web"]
    assert [c["Id"] for c in docker_client.api.containers(all=True, filters={"id": first["web"]})] == []
    # and the next run attaches to the stack as it is now
    pytester.runpytest("-p", "no:cacheprovider", "--dockapp-reuse").stdout.fnmatch_lines(["reuse: attached *"])
    assert _ids(pytester) == second
    _down(pytester)


def test_under_xdist_each_worker_reuses_its_own_stack(
    app: App, pytester: pytest.Pytester, redis_base: str, docker_client: Any, dev: None
) -> None:
    _web_and_redis(app, pytester, redis_base, "dockapp_compose_scope = worker\n")
    pytester.makepyfile(
        test_ids="""
        import json, os, pytest

        @pytest.mark.parametrize("n", range(4))
        def test_ids(dockapp_services, n):
            worker = os.environ["PYTEST_XDIST_WORKER"]
            with open(f"ids-{worker}.json", "w") as fh:
                json.dump({name: a.container.id for name, a in dockapp_services.items()}, fh)
        """
    )
    pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--dockapp-reuse").assert_outcomes(passed=4)
    first = {p.name: p.read_text() for p in pytester.path.glob("ids-*.json")}
    assert len(first) == 2 and len(set(first.values())) == 2  # a stack per worker
    result = pytester.runpytest("-p", "no:cacheprovider", "-n", "2", "--dockapp-reuse")
    result.assert_outcomes(passed=4)
    assert {p.name: p.read_text() for p in pytester.path.glob("ids-*.json")} == first
    assert len(_reusable(docker_client, pytester.path)) == 4


def test_a_slot_lock_keeps_a_second_holder_out_until_released_or_its_process_dies(tmp_path: Path) -> None:
    from pytest_dockapp.core.locks import FileLock, LockTimeout

    path = tmp_path / "slot.lock"
    with FileLock(path, timeout=0), pytest.raises(LockTimeout):
        FileLock(path, timeout=0.1).acquire()
    FileLock(path, timeout=0).acquire().release()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pytest_dockapp.core.locks import FileLock; "
            "FileLock(sys.argv[1]).acquire(); print(1, flush=True); input()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"1"
    with pytest.raises(LockTimeout):
        FileLock(path, timeout=0).acquire()
    holder.kill()
    holder.wait()
    assert FileLock(path, timeout=5).acquire().held
