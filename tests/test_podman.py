"""podman's Docker-compatible API: what works, and one clear sentence for what does not."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import HOME_TEST, SUITE_RUN_LABEL, App, expect_error, leftover_names


def test_podman_builds_runs_and_cleans_up(app: App, pytester: pytest.Pytester, on_podman: Any) -> None:
    app.httpd(extra="HEALTHCHECK --interval=30s CMD wget -q -O /dev/null http://127.0.0.1/ || exit 1")
    pytester.makepyfile(HOME_TEST)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "dockapp: engine podman * at unix://* (DOCKER_HOST), builder classic (engine API); "
            "podman builds through the classic API",
            "dockapp-*: ready in *s (HEALTHCHECK + port accepts), removed in *",
        ]
    )
    assert leftover_names(on_podman, SUITE_RUN_LABEL) == []


def test_podman_refuses_buildkit_in_one_sentence(app: App, pytester: pytest.Pytester, on_podman: Any) -> None:
    app.httpd()
    expect_error(
        pytester,
        "--dockapp-builder=buildkit",
        lines=["*BuildKit was asked for, but the engine is podman, which builds only through the classic API*"],
    )


def test_podman_cache_checks_say_why_they_cannot_judge(app: App, pytester: pytest.Pytester, on_podman: Any) -> None:
    app.httpd()
    pytester.makepyfile(
        "import pytest\n\n@pytest.mark.dockapp_cache(change=['Dockerfile'])\ndef test_cache():\n    pass\n"
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the dockapp_cache marker cannot give a true verdict on podman*"])
