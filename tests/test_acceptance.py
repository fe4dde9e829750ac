"""Users' view: a Dockerfile, a conftest, a test file, and a real pytest run."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest

from .helpers import DIAL_HOST, ENDPOINT, HOME_TEST, App


@pytest.mark.remote
def test_a_project_gets_its_app_built_run_and_removed(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            f"dockapp: engine * at {ENDPOINT.describe()}, builder *",
            "*- dockapp -*",
            "built pytest-dockapp/* in *s, */* steps cached",
            "dockapp-*: ready in *s (port accepts), removed in *s",
        ]
    )


@pytest.mark.remote
def test_the_app_object_reaches_the_service_and_its_container(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra="ENV GREETING=hi")
    pytester.makepyfile(
        """
        import requests

        def test_object(dockapp, dockapp_image):
            assert dockapp.url == f"http://DIAL:{dockapp.port}"
            assert dockapp.host == "DIAL"
            assert dockapp.ports == {80: dockapp.port}
            assert isinstance(dockapp.session, requests.Session)
            assert dockapp.session.get("/").text == "hello\\n"
            assert dockapp.head("/").status_code == 200
            assert dockapp.get("/missing").status_code == 404
            assert dockapp.container.status in ("created", "running")
            assert dockapp.image == dockapp_image.ref
            assert any(s.text.startswith("RUN mkdir -p /www") for s in dockapp_image.record.steps)
            assert dockapp.exec("sh -c 'echo $GREETING'") == (0, "hi\\n")
            assert isinstance(dockapp.logs(), str)
            labels = dockapp.container.labels
            assert labels["org.pytest-dockapp.owner"] == "pytest-dockapp"
            assert labels["org.pytest-dockapp.session"]
            binding = dockapp.container.attrs["HostConfig"]["PortBindings"]["80/tcp"][0]
            assert binding["HostIp"] == "PUBLISH"
        """.replace("DIAL", DIAL_HOST).replace("PUBLISH", ENDPOINT.publish_address())
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.remote
def test_healthcheck_healthy_does_not_wait_for_the_engine_interval(app: App, pytester: pytest.Pytester) -> None:
    # The engine's first check would run only after 30 s; the timeout is 15 s, so passing
    # proves the plugin ran the HEALTHCHECK itself.
    app.httpd(extra="HEALTHCHECK --interval=30s CMD wget -q -O /dev/null http://127.0.0.1/ || exit 1")
    pytester.makeini("[pytest]\ndockapp_timeout = 15\n")
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp-*: ready in *s (HEALTHCHECK + port accepts)*"])


@pytest.mark.remote
def test_app_that_listens_late_is_not_reported_ready_early(app: App, pytester: pytest.Pytester) -> None:
    # docker-proxy accepts on the published port from the start; the probe must see through it.
    app.httpd(cmd='["sh", "-c", "sleep 2; exec httpd -f -p 80 -h /www"]')
    pytester.makepyfile(
        """
        import requests

        def test_first_request_succeeds(dockapp):
            # a plain request, no retries: the app must already listen
            assert requests.get(dockapp.url, timeout=5).text == "hello\\n"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.remote
def test_a_health_path_waits_for_a_2xx_answer(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(
        cmd='["sh", "-c", "sleep 1; mkdir -p /www/ok && echo ok > /www/ok/index.html; exec httpd -f -p 80 -h /www"]'
    )
    pytester.makeini("[pytest]\ndockapp_health_path = /ok/\n")
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp-*: ready in *s (GET /ok/)*"])


def test_no_expose_with_user_given_port(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(expose="")
    pytester.makepyfile(HOME_TEST)
    pytester.runpytest("--dockapp-port", "80").assert_outcomes(passed=1)


def test_every_exposed_port_is_published(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(
        expose="EXPOSE 80 8080",
        cmd='["sh", "-c", "httpd -p 8080 -h /www && exec httpd -f -p 80 -h /www"]',
    )
    pytester.makeini("[pytest]\ndockapp_port = 8080\n")
    pytester.makepyfile(
        """
        def test_ports(dockapp):
            assert set(dockapp.ports) == {80, 8080}
            assert dockapp.port == dockapp.ports[8080]
            assert dockapp.get("/").status_code == 200
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_prebuilt_image_is_tested_without_a_build(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd()
    docker_client.images.build(path=str(pytester.path), tag="dockapp-test/prebuilt:ci", rm=True)
    (pytester.path / "Dockerfile").unlink()  # prove nothing is built
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest("--dockapp-image", "dockapp-test/prebuilt:ci")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("built *")


def test_build_args_and_target(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(
        """
        FROM {BUSYBOX} AS base
        ARG WORD=default
        RUN mkdir -p /www && echo "$WORD" > /www/index.html

        FROM base AS web
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]

        FROM base AS broken
        RUN exit 1
        """
    )
    pytester.makeini("[pytest]\ndockapp_target = web\ndockapp_build_args =\n    WORD=from-ini\n")
    pytester.makepyfile(
        """
        def test_word(dockapp):
            assert dockapp.get("/").text == "from-cli\\n"
        """
    )
    pytester.runpytest("--dockapp-build-arg", "WORD=from-cli").assert_outcomes(passed=1)


def test_dockerignored_files_never_reach_the_build(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(
        """
        FROM {BUSYBOX}
        COPY . /www
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
        """
    )
    (pytester.path / "index.html").write_text("hello\n")
    (pytester.path / "secret.txt").write_text("do not ship\n")
    (pytester.path / ".dockerignore").write_text("secret.txt\n*.py\n")
    pytester.makepyfile(
        """
        def test_ignored(dockapp):
            assert dockapp.get("/index.html").status_code == 200
            assert dockapp.get("/secret.txt").status_code == 404
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_factory_with_two_apps(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    other = pytester.mkdir("other")
    app.dockerfile(
        """
        FROM {BUSYBOX}
        RUN mkdir -p /www && echo other > /www/index.html
        EXPOSE 8000
        CMD ["httpd", "-f", "-p", "8000", "-h", "/www"]
        """,
        path=other,
    )
    pytester.makepyfile(
        """
        def test_two(dockapp_factory):
            a = dockapp_factory()
            b = dockapp_factory("other", env={"X": "1"})
            assert a.get("/").text == "hello\\n"
            assert b.get("/").text == "other\\n"
            assert a.port != b.port and a.name != b.name
            assert b.exec("sh -c 'echo $X'")[1] == "1\\n"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.remote
def test_failing_test_gets_container_logs(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(cmd='["sh", "-c", "echo app-log-marker; exec httpd -f -vv -p 80 -h /www"]')
    pytester.makepyfile(
        """
        def test_fails(dockapp):
            dockapp.get("/")
            assert False
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*- dockapp logs: dockapp-* (since this test started) -*", "app-log-marker"])


@pytest.mark.remote
def test_keep_leaves_container_after_failure(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd()
    pytester.makepyfile("def test_fails(dockapp):\n    assert False\n")
    result = pytester.runpytest("--dockapp-keep")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"kept dockapp-* at http://{DIAL_HOST}:*; remove: docker rm -f dockapp-*"])
    name = re.search(r"remove: docker rm -f (\S+)", result.stdout.str()).group(1)  # type: ignore[union-attr]
    container = docker_client.containers.get(name)
    assert container.status == "running"
    container.remove(force=True)


def test_conftest_fixture_overrides_configure_a_subproject(app: App, pytester: pytest.Pytester) -> None:
    sub = pytester.mkdir("service")
    app.dockerfile(
        """
        FROM {BUSYBOX}
        RUN mkdir -p /www/status && echo up > /www/status/index.html && echo sub > /www/index.html
        EXPOSE 80
        CMD ["sh", "-c", "sleep 1; exec httpd -f -p 80 -h /www"]
        """,
        path=sub,
    )
    (sub / "conftest.py").write_text(
        textwrap.dedent(
            """
            import os
            import pytest

            @pytest.fixture(scope="session")
            def dockapp_context():
                return os.path.dirname(__file__)

            @pytest.fixture(scope="session")
            def dockapp_health_path():
                return "/status/"
            """
        )
    )
    (sub / "test_sub.py").write_text("def test_sub(dockapp):\n    assert dockapp.get('/').text == 'sub\\n'\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ready in *s (GET /status/)*"])


@pytest.mark.remote
def test_interrupt_leaves_nothing_running(app: App, pytester: pytest.Pytester, docker_client: Any) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        import os, signal

        def test_interrupted(dockapp, dockapp_factory):
            dockapp_factory()
            with open("pid", "w") as fh:
                fh.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the test
        """
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    pid = (pytester.path / "pid").read_text()
    left = docker_client.containers.list(all=True, filters={"label": f"org.pytest-dockapp.pid={pid}"})
    assert left == []


def test_plugin_adds_no_header_when_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("dockapp:*")


@pytest.mark.remote
def test_dockerfile_outside_the_context(app: App, pytester: pytest.Pytester, builder_args: list[str]) -> None:
    ctx = pytester.mkdir("ctx")
    (ctx / "index.html").write_text("hello\n")
    df = app.dockerfile(
        """
        FROM {BUSYBOX}
        COPY index.html /www/
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
        """,
        name="web.Dockerfile",
        path=pytester.mkdir("docker"),
    )
    pytester.makepyfile(HOME_TEST)
    pytester.runpytest(f"--dockapp-context={ctx}", f"--dockapp-dockerfile={df}", *builder_args).assert_outcomes(
        passed=1
    )


def test_an_unchanged_build_is_reused_and_any_change_rebuilds(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra="COPY page.txt /www/page.txt")
    pytester.path.joinpath("page.txt").write_text("one\n")
    pytester.makepyfile(
        """
        def test_page(dockapp):
            assert dockapp.get("/page.txt").text == open("page.txt").read()
        """
    )
    built = "built pytest-dockapp/* in *s, */* steps cached"
    reused = "reused pytest-dockapp/*: nothing it is built from changed since its last build (checked in *s; *"
    pytester.runpytest().stdout.fnmatch_lines([built])
    second = pytester.runpytest()
    second.assert_outcomes(passed=1)
    second.stdout.fnmatch_lines([reused])
    pytester.path.joinpath("page.txt").write_text("two\n")  # a file the build sends
    changed = pytester.runpytest()
    changed.assert_outcomes(passed=1)
    changed.stdout.fnmatch_lines([built])
    pytester.runpytest("--dockapp-build-arg", "UNUSED=1").stdout.fnmatch_lines([built])  # build args count
    pytester.runpytest("--dockapp-rebuild").stdout.fnmatch_lines([built])
    pytester.runpytest().stdout.fnmatch_lines([reused])


def test_junit_xml_carries_each_apps_image_build_and_time_to_ready(app: App, pytester: pytest.Pytester) -> None:
    import xml.etree.ElementTree as ET

    app.httpd()
    pytester.makepyfile(HOME_TEST)
    pytester.runpytest("--junitxml=out.xml").assert_outcomes(passed=1)
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "out.xml").iter("property")}
    image = next(v for k, v in props.items() if k.endswith(".image"))
    assert image.startswith("sha256:")
    assert re.fullmatch(r"\d+/\d+ steps cached", next(v for k, v in props.items() if k.endswith(".build")))
    assert float(next(v for k, v in props.items() if k.endswith(".ready_seconds"))) > 0


def test_other_plugins_hear_of_builds_and_ready_apps_through_hooks(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makeconftest(
        """
        def pytest_dockapp_build_finished(config, record):
            open("heard", "a").write(f"built {record.builder} {len(record.steps)} reused={record.reused}\\n")

        def pytest_dockapp_app_ready(config, app):
            open("heard", "a").write(f"ready {app.get('/').text.strip()}\\n")
        """
    )
    pytester.makepyfile(HOME_TEST)
    pytester.runpytest("--dockapp-builder=classic").assert_outcomes(passed=1)
    assert (pytester.path / "heard").read_text().splitlines() == ["built classic 4 reused=False", "ready hello"]


def test_a_failing_app_ready_hook_fails_the_fixture_and_removes_the_app(app: App, pytester: pytest.Pytester) -> None:
    """The app fixture's no_leaks check proves the removal."""
    app.httpd()
    pytester.makeconftest("def pytest_dockapp_app_ready(app):\n    raise RuntimeError('seed data refused')\n")
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: seed data refused*"])
