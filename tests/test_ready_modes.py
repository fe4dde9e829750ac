"""dockapp_ready: what "ready" means, chosen per project (ini, option) or per app (factory)."""

from __future__ import annotations

import pytest

from .helpers import HOME_TEST, App, expect_error

FAILING_HEALTHCHECK = "HEALTHCHECK --interval=30s CMD false"


@pytest.mark.remote
def test_listen_starts_the_test_without_running_the_healthcheck(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra=FAILING_HEALTHCHECK)
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest("--dockapp-ready=listen")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp-*: ready in *s (port accepts), removed in *"])


def test_auto_waits_for_the_healthcheck_and_says_it_fails(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra=FAILING_HEALTHCHECK)
    expect_error(
        pytester,
        "--dockapp-timeout=1.5",
        lines=["*did not become ready within 1.5s*waited for: HEALTHCHECK, port accepts*", "*HEALTHCHECK exited 1*"],
    )


def test_http_gets_the_root_when_no_health_path_is_set(app: App, pytester: pytest.Pytester) -> None:
    app.httpd(extra=FAILING_HEALTHCHECK)
    pytester.makepyfile(HOME_TEST)
    (pytester.path / "pytest.ini").write_text("[pytest]\ndockapp_ready = http\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dockapp-*: ready in *s (GET /), removed in *"])


def test_healthcheck_on_an_image_without_one_is_an_error(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile(
        """
        import pytest
        from pytest_dockapp.core.errors import ConfigurationError

        def test_factory(dockapp_factory):
            with pytest.raises(ConfigurationError, match="healthcheck, but the image of .* has no HEALTHCHECK"):
                dockapp_factory(ready="healthcheck")
            assert dockapp_factory(ready="listen").get("/").text == "hello\\n"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_an_unknown_readiness_names_the_valid_ones(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest("--dockapp-ready=soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*dockapp ready (--dockapp-ready): 'soon' is unknown; valid: auto, listen, http, healthcheck*"]
    )
