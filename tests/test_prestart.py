"""The session image and app start in the background once collection shows a test needs them."""

from __future__ import annotations

import os
from typing import Any

import pytest

from .helpers import HOME_TEST, App

WAIT_THEN_USE = """
import time
from datetime import datetime

def test_first_needs_no_app():
    time.sleep(2)
    open("first-ended", "w").write(str(time.time()))

def test_then_the_app(dockapp):
    created = dockapp.container.attrs["Created"]  # RFC 3339, nanoseconds
    when = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00").timestamp()
    assert when < float(open("first-ended").read()), "the app was created only when its test began"
    assert dockapp.get("/").text == "hello\\n"
"""


@pytest.mark.remote
def test_the_session_app_starts_while_earlier_tests_run(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(WAIT_THEN_USE)
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_a_session_without_app_tests_reaches_no_engine(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.path.joinpath("Dockerfile").write_text("FROM scratch\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("--dockapp-strict")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("dockapp: *")  # no header, no engine error


def test_an_app_run_without_compose_or_reuse_never_imports_the_services_layer(
    app: App, pytester: pytest.Pytester
) -> None:
    """Compose, stacks, reuse and the clean-state kinds are 35-60 ms of imports: W1 went from
    1.05x to 1.20x the floor when the reuse status and the kept-data summary imported them."""
    app.httpd()
    pytester.makeconftest(
        "import sys\n\n"
        "def pytest_unconfigure():\n"
        "    names = sorted(m for m in sys.modules if m.startswith('pytest_dockapp.services'))\n"
        "    open('loaded.txt', 'w').write(' '.join(names))\n"
    )
    pytester.makepyfile(HOME_TEST)
    pytester.runpytest_subprocess().assert_outcomes(passed=1)
    assert pytester.path.joinpath("loaded.txt").read_text() == ""


def test_a_conftest_override_turns_the_early_start_off(app: App, pytester: pytest.Pytester) -> None:
    """The override is known only when its fixture runs: starting the rootdir's image early would
    build (and here fail on) what the test never asked for."""
    app.dockerfile("FROM {BUSYBOX}\nRUN echo root-dockerfile-built && exit 9\n")
    app.httpd(path=pytester.mkdir("service"))
    pytester.makeconftest(
        "import pytest\n\n@pytest.fixture(scope='session')\ndef dockapp_context():\n    return 'service'\n"
    )
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*root-dockerfile-built*")


def test_an_early_build_failure_is_the_error_of_the_test_that_needs_it(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile("FROM {BUSYBOX}\nRUN echo early-failure-marker && exit 7\nEXPOSE 80\n")
    pytester.makepyfile("def test_plain():\n    pass\n\n\ndef test_app(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at setup of test_app*", "*build failed at step 2*", "*early-failure-marker*"])


# Trust III, 1: a session that ends while the early start is still creating the app (here held
# for 2 s inside the create, once the container exists) left it behind in state Created.
SLOW_CREATE = """
import time
from pytest_dockapp.run import app as _app

_create = _app.AppRunner._create

def _slow(self, publish):
    cid = _create(self, publish)
    time.sleep(2)
    return cid

_app.AppRunner._create = _slow
"""

FAIL_ONCE_CREATED = """
import os, time
import docker

def test_a_fails_once_the_app_exists():
    client = docker.from_env()
    flt = {"label": ["org.pytest-dockapp.kind=container", f"org.pytest-dockapp.pid={os.getpid()}"]}
    deadline = time.monotonic() + 60
    while not client.api.containers(all=True, filters=flt) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert False, "fails on purpose"

def test_b(dockapp):
    pass
"""


@pytest.mark.local_engine("the inner test finds its app on this machine's engine socket")
def test_a_session_that_ends_during_the_early_start_leaves_nothing(app: App, pytester: pytest.Pytester) -> None:
    """The app fixture's no_leaks check is the assertion."""
    app.httpd()
    pytester.makeconftest(SLOW_CREATE)
    pytester.makepyfile(FAIL_ONCE_CREATED)
    result = pytester.runpytest_subprocess("-x", "-p", "no:randomly")
    result.assert_outcomes(failed=1)


def test_an_xdist_worker_without_app_tests_starts_no_app(
    app: App, pytester: pytest.Pytester, docker_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker collects every test: with the early start, the one that got only test_one
    created an app too (and removed it, unseen in the summary): the engine's events show it."""
    import time
    import uuid

    run = f"org.pytest-dockapp.test.xdist-run={uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("DOCKAPP_LABELS", f"{os.environ.get('DOCKAPP_LABELS', '')},{run}")
    app.httpd()
    pytester.makepyfile(test_one="def test_plain():\n    pass\n", test_two=HOME_TEST)
    began = int(time.time()) - 1
    pytester.runpytest_subprocess("-n", "2", "--dist", "loadfile").assert_outcomes(passed=2)
    events = docker_client.api.events(
        since=began,
        until=int(time.time()) + 1,
        filters={"event": "create", "label": [run, "org.pytest-dockapp.kind=container"]},
        decode=True,
    )
    assert len(list(events)) == 1
