"""Features as users combine them: a prebuilt image with a compose file, a fresh stack with the
session's readiness settings, a factory's build args with the command line's."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest

from .helpers import App

STACK = """
services:
  web:
    build: .
    depends_on: [side]
  side:
    image: BUSYBOX
    command: [sleep, "600"]
"""


def _stack_project(app: App, pytester: pytest.Pytester, cmd: str = '["httpd", "-f", "-p", "80", "-h", "/www"]') -> None:
    app.httpd(cmd=cmd)
    (pytester.path / "compose.yaml").write_text(STACK.replace("BUSYBOX", app.busybox))
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")


def test_a_prebuilt_image_runs_as_the_apps_service_and_the_rest_of_the_stack_starts(
    app: App, pytester: pytest.Pytester, docker_client: Any
) -> None:
    """`--dockapp-image myapp:ci` with a compose file dropped the stack: the app alone started."""
    _stack_project(app, pytester)
    tag = f"pytest-dockapp/prebuilt-{uuid.uuid4().hex[:8]}:ci"
    subprocess.run(["docker", "build", "-q", "-t", tag, str(pytester.path)], check=True, capture_output=True)
    image_id = docker_client.images.get(tag).id
    pytester.makepyfile(
        f"""
        def test_stack(dockapp, dockapp_services, dockapp_fresh):
            assert sorted(dockapp_services) == ["side", "web"]
            assert dockapp.container.attrs["Image"] == "{image_id}"
            assert dockapp_fresh.container.attrs["Image"] == "{image_id}"
            assert sorted(dockapp_fresh.services) == ["side", "web"]
            assert dockapp.exec(["ping", "-c", "1", "-W", "2", "side"])[0] == 0
        """
    )
    try:
        result = pytester.runpytest("-p", "no:cacheprovider", f"--dockapp-image={tag}")
    finally:
        docker_client.api.remove_image(tag)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"  service web: image {tag} (--dockapp-image, in place of its build:); ready in *"])
    result.stdout.no_fnmatch_line("*built pytest-dockapp/*")


LATE_HEALTH = (
    '["sh", "-c", "httpd -p 80 -h /www; sleep 2; mkdir /www/health; echo ok > /www/health/index.html; sleep 600"]'
)


def test_a_fresh_stack_is_ready_by_the_sessions_health_path(app: App, pytester: pytest.Pytester) -> None:
    """The session stack said `(GET /health)`, the fresh one `(port accepts)`, and its test got a 503."""
    _stack_project(app, pytester, LATE_HEALTH)
    pytester.makepyfile(
        """
        def test_fresh(dockapp_fresh):
            assert dockapp_fresh.get("/health/").status_code == 200
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-health-path=/health/")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["  service web: built * ready in *s (*GET /health/*)*"])


VARIANTS = """
FROM {BUSYBOX}
ARG VARIANT=none
RUN mkdir -p /www && echo "$VARIANT" > /www/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""


def test_a_factory_calls_build_args_beat_the_command_lines(app: App, pytester: pytest.Pytester) -> None:
    """`dockapp_factory(build_args={"VARIANT": "b"})` with `--dockapp-build-arg VARIANT=a` served a."""
    app.dockerfile(VARIANTS)
    pytester.makepyfile(
        """
        def test_variants(dockapp, dockapp_factory):
            assert dockapp.get("/").text == "a\\n"  # the command line's, over the Dockerfile's
            assert dockapp_factory(build_args={"VARIANT": "b"}).get("/").text == "b\\n"  # the call's, over both
            assert dockapp_factory(".", build_args={"VARIANT": "c"}).get("/").text == "c\\n"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-build-arg=VARIANT=a")
    result.assert_outcomes(passed=1)


def test_worker_summaries_merge_into_one_line_per_image_and_stack() -> None:
    from pytest_dockapp.distributed import merge_summaries

    merged = merge_summaries(
        {
            "gw0": [
                "built pytest-dockapp/app:1 (classic) in 1.0s, 0/2 steps cached",
                "stack dockapp-s-1 (compose.yaml; shared by every pytest-xdist worker):",
                "  service web: image app:1; ready in 0.30s (port accepts)",
                "image pytest-dockapp/app:1: 2.0 MB in 2 layers",
            ],
            "gw1": [
                "reused pytest-dockapp/app:1: built once by another pytest-xdist worker",
                "stack dockapp-s-1 (compose.yaml): shared, started by another pytest-xdist worker",
                "image pytest-dockapp/app:1: 2.0 MB in 2 layers",
            ],
        }
    )
    assert merged == [
        "[gw0] built pytest-dockapp/app:1 (classic) in 1.0s, 0/2 steps cached",
        "[gw0] stack dockapp-s-1 (compose.yaml; shared by every pytest-xdist worker):",
        "  service web: image app:1; ready in 0.30s (port accepts)",
        "[gw0, gw1] image pytest-dockapp/app:1: 2.0 MB in 2 layers",
    ]


def test_under_xdist_the_summary_tells_each_image_once(app: App, pytester: pytest.Pytester) -> None:
    app.httpd()
    pytester.makepyfile("def test_a(dockapp):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--dist", "each", "--junitxml=j.xml")
    result.assert_outcomes(passed=2)
    text = result.stdout.str()
    assert text.count("built pytest-dockapp/") + text.count(": nothing it is built from changed") == 1, text
    assert "built once by another pytest-xdist worker" not in text, text
    result.stdout.fnmatch_lines(["[[]gw?, gw?[]] image pytest-dockapp/*: * in ? layers"])
