"""A fresh app per test, from warm spares: never shared, never leaked."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from .helpers import App, leftover_names, pytest_cmd

FRESH_TESTS = """
import os, pytest

@pytest.mark.parametrize("n", range(5))
def test_fresh(dockapp_fresh, n):
    with open(f"seen-{n}", "w") as fh:
        fh.write(dockapp_fresh.container.id)
    assert dockapp_fresh.get("/").text == "hello\\n"
    dockapp_fresh.exec(["sh", "-c", "echo dirty > /www/index.html"])  # what one test leaves, the next never sees
"""


def test_each_test_gets_its_own_app_and_unused_spares_are_removed(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(FRESH_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    seen = [p.read_text() for p in pytester.path.glob("seen-*")]
    assert len(seen) == len(set(seen)) == 5  # never shared
    result.stdout.fnmatch_lines(
        [
            "? apps of pytest-dockapp/*: ready in *s median (*-*s) (port accepts), removed in *s median (*-*s)",
            "warm spares: * started, 4 taken by tests, * never used (removed*",
        ]
    )
    # `app`'s leak check: the unused spare is gone with the session


def test_spares_off(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(FRESH_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-spares", "0")
    result.assert_outcomes(passed=5)
    result.stdout.no_fnmatch_line("warm spares*")


def hold_fresh(pytester: pytest.Pytester) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """A session whose one test holds a fresh app (or stack) until it is killed; the filter for its resources."""
    pytester.makepyfile(
        test_hold="""
        import time, pytest

        @pytest.mark.parametrize("n", range(2))  # more tests ask for dockapp_fresh: its spare starts at once
        def test_hold(dockapp_fresh, n):
            open("ready", "w").write("")
            while True:
                time.sleep(0.1)
        """
    )
    proc = subprocess.Popen(pytest_cmd("test_hold.py"), cwd=pytester.path, stdout=subprocess.PIPE, text=True)
    return proc, {"label": f"org.pytest-dockapp.pid={proc.pid}"}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_session_killed_with_spares_alive_leaves_nothing_after_the_next_run(
    app: App, pytester: pytest.Pytester, docker_client: Any, how: signal.Signals
) -> None:
    app.httpd()
    proc, flt = hold_fresh(pytester)
    deadline = time.monotonic() + 120
    # the test's app, and its spare (running, not only created)
    while not (pytester.path / "ready").exists() or len(docker_client.api.containers(filters={**flt, "label": [
        f"org.pytest-dockapp.pid={proc.pid}", "org.pytest-dockapp.kind=container"]})) < 2:  # fmt: skip
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(how)
    proc.communicate(timeout=60)
    if how == signal.SIGTERM:
        assert docker_client.api.containers(all=True, filters=flt) == []
        return
    assert docker_client.api.containers(all=True, filters=flt)  # SIGKILL: no teardown ran
    pytester.makepyfile(test_next="def test_next(dockapp_image):\n    pass\n")
    result = pytester.runpytest_subprocess("test_next.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["swept leftovers of killed sessions: 2 containers, *"])
    assert docker_client.api.containers(all=True, filters=flt) == []


FRESH_STACK_TESTS = """
import time, pytest

@pytest.mark.parametrize("n", range(4))
def test_fresh_stack(dockapp_fresh, docker_created, n):
    side = dockapp_fresh.services["side"]
    open(f"seen-{n}", "w").write(side.container.id)
    if n in (1, 2):  # was it made while the test before this one ran?
        open(f"early-{n}", "w").write(str(docker_created(side) < float(open(f"end-{n - 1}").read())))
    assert dockapp_fresh.get("/").text == "hello\\n"
    side.exec(["sh", "-c", "echo dirty > /tmp/state"])
    assert side.exec(["cat", "/tmp/seen-by-others"])[0] != 0
    side.exec(["touch", "/tmp/seen-by-others"])
    if n < 2:
        time.sleep(1)  # a test body: the next stack starts meanwhile
    open(f"end-{n}", "w").write(str(time.time()))
"""

CREATED_AT = """
import datetime, pytest

@pytest.fixture
def docker_created():
    def created(app):
        stamp = app.container.attrs["Created"][:26].rstrip("Z")
        return datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc).timestamp()
    return created
"""


def test_a_fresh_stack_per_test_comes_from_a_warm_spare_and_the_unused_one_is_removed(
    app: App, pytester: pytest.Pytester
) -> None:
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        "services:\n  web: {build: ., depends_on: [side]}\n"
        f"  side: {{image: {app.busybox}, command: [sleep, '600']}}\n"
        "volumes:\n  scratch:\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makeconftest(CREATED_AT)
    pytester.makepyfile(FRESH_STACK_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    seen = [p.read_text() for p in pytester.path.glob("seen-*")]
    assert len(seen) == len(set(seen)) == 4  # a stack per test, never shared
    # the second and third tests got a stack made while the test before them ran
    assert [(pytester.path / f"early-{n}").read_text() for n in (1, 2)] == ["True", "True"]
    result.stdout.fnmatch_lines(
        [
            "stack dockapp-* (compose.yaml):",
            "1 more stack of compose.yaml (as above):",
            "  service side: ready in *s median (*), removed in *s median (*)",
            "  service web: ready in *s median (*), removed in *s median (*)",
            "warm spares: * started, 3 taken by tests, * never used (removed*",
        ]
    )
    # `app`'s leak check: the unused spare stack (its containers, network and volume) is gone


def test_a_session_ended_by_sigterm_with_a_spare_stack_alive_leaves_nothing(
    app: App, pytester: pytest.Pytester, docker_client: Any
) -> None:
    app.httpd()
    (pytester.path / "compose.yaml").write_text(
        "services:\n  web: {build: ., depends_on: [side]}\n"
        f"  side: {{image: {app.busybox}, command: [sleep, '600'], volumes: [scratch:/scratch]}}\n"
        "volumes:\n  scratch:\n"
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    proc, flt = hold_fresh(pytester)

    deadline = time.monotonic() + 120
    # the test's stack and the spare: two services running in each, and their two networks
    while not (pytester.path / "ready").exists() or len(docker_client.api.containers(filters=flt)) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    assert len(docker_client.api.networks(filters=flt)) == 2
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert leftover_names(docker_client, flt["label"]) == []


def test_spares_deepen_only_for_settings_whose_test_had_to_wait() -> None:
    from pytest_dockapp.run.spares import Spares

    gate = threading.Event()
    made: list[str] = []

    def start(key: str, slow: bool) -> Any:
        def run() -> str:
            if slow:
                gate.wait(10)
            made.append(key)
            return key

        return run

    spares = Spares(count=2)
    try:
        spares.refill("once", start("once", False))  # settings one test used: one spare
        spares.refill("quick", start("quick", True))
        threading.Timer(1, gate.set).start()  # the take below waits for this spare
        assert spares.take("quick", str) == "quick"
        spares.refill("quick", start("quick", False))  # so now two are kept ready
        spares.refill("quick", start("quick", False))  # (never more than `count`)
    finally:
        spares.close()
    assert sorted(made) == ["once", "quick", "quick", "quick"]
    assert spares.started == 4 and spares.used == 1


def test_a_spare_starts_only_where_a_later_test_is_likely_to_take_it() -> None:
    from pytest_dockapp.run.spares import Spares

    spares = Spares(count=2)
    try:
        for n in range(5):  # settings one test each uses (a factory's env=N): no spare for any
            assert spares.fresh(f"env-{n}", str, lambda n=n: f"own-{n}") == f"own-{n}"
        assert spares.started == 0
        assert spares.fresh("same", str, lambda: "own") == "own"  # the first use: none yet
        assert spares.started == 0
        assert spares.fresh("same", str, lambda: "own") == "own"  # the second: from now on
        assert spares.started == 1
        assert spares.fresh("fresh", str, lambda: "own", likely=True) == "own"  # more tests will ask
        assert spares.started == 2
    finally:
        spares.close()


FACTORY_ENV_TESTS = """
import pytest

@pytest.mark.parametrize("n", range(4))
def test_own_settings(dockapp_factory, n):
    assert dockapp_factory(env={"N": str(n)}).exec(["sh", "-c", "echo $N"])[1] == f"{n}\\n"
"""


def test_settings_each_test_uses_once_start_no_spares(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(FACTORY_ENV_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("warm spares*")  # before: 4 started, 0 taken by tests, 4 never used


DYING_TESTS = """
import time

def test_first(dockapp_fresh):
    assert dockapp_fresh.get("/").status_code == 200
    time.sleep(6)  # the spare started meanwhile exits after 3 s

def test_second(dockapp_fresh):
    assert dockapp_fresh.get("/").status_code == 200
"""


def test_a_spare_that_died_while_it_waited_is_never_handed_out(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["sh", "-c", "httpd -p 80 -h /www; echo spare-bye-marker; sleep 3; exit 7"]')
    pytester.makepyfile(DYING_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "dockapp: a warm spare of dockapp-* exited with code 7 at * before a test took it; started another; "
            "its last log lines: spare-bye-marker",
            "warm spares: * started, 0 taken by tests, * never used *, 1 had exited before a test came for them*",
        ]
    )
