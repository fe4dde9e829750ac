"""Features as users combine them: a prebuilt image with a compose file, a fresh stack with the
session's readiness settings, a factory's build args with the command line's."""

from __future__ import annotations

import json
import os
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


# -- pairwise: every pair of choices users combine, in few cases ------------------------------------

DIMENSIONS = {
    "source": ["dockerfile", "image", "compose"],
    "fixture": ["dockapp", "dockapp_factory", "dockapp_fresh"],
    "xdist": ["off", "n2"],
    "readiness": ["auto", "health_path", "healthcheck"],
    "registry": ["off", "cache"],
}


def pairwise(dimensions: dict[str, list[str]]) -> list[dict[str, str]]:
    """Cases that hold every pair of values of two dimensions at least once (greedy: each new
    case takes, value by value, the one that covers the most pairs not yet covered)."""
    import itertools

    names = list(dimensions)
    todo = {
        ((a, va), (b, vb)) for a, b in itertools.combinations(names, 2) for va in dimensions[a] for vb in dimensions[b]
    }
    cases: list[dict[str, str]] = []
    while todo:
        first = next(iter(sorted(todo)))
        case = dict(first)
        for name in names:
            if name in case:
                continue
            case[name] = max(
                dimensions[name],
                key=lambda v: sum(((n, case[n]), (name, v)) in todo or ((name, v), (n, case[n])) in todo for n in case),
            )
        todo -= {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(names, 2)}
        cases.append(case)
    return cases


CASES = pairwise(DIMENSIONS)

COMBO_DOCKERFILE = """
FROM {BUSYBOX}
RUN mkdir -p /www/health && echo hello > /www/index.html && echo ok > /www/health/index.html
HEALTH
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""

COMBO_TEST = """
import json, os, pytest

@pytest.mark.parametrize("n", range(2))
def test_served(request, dockapp_image, n):
    app = request.getfixturevalue("FIXTURE")
    if "FIXTURE" == "dockapp_factory":
        app = app()
    assert app.get("/").text == "hello\\n"
    seen = {"image": app.container.attrs["Image"], "session_image": dockapp_image.id, "checks": app.readiness.checks}
    seen["services"] = sorted(getattr(app, "services", None) or {})
    with open(f"seen-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{n}.json", "w") as fh:
        json.dump(seen, fh)
"""


def test_pairwise_cases_cover_every_pair() -> None:
    import itertools

    for a, b in itertools.combinations(DIMENSIONS, 2):
        pairs = {(case[a], case[b]) for case in CASES}
        assert pairs == set(itertools.product(DIMENSIONS[a], DIMENSIONS[b])), (a, b)
    assert len(CASES) <= 12  # against 108 in the full product


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c.values()))
def test_combined_features_serve_the_right_image_with_the_right_readiness(
    app: App, pytester: pytest.Pytester, docker_client: Any, case: dict[str, str]
) -> None:
    health = "HEALTHCHECK --interval=1h CMD wget -q -O /dev/null http://127.0.0.1/ || exit 1"
    app.dockerfile(COMBO_DOCKERFILE.replace("HEALTH", health if case["readiness"] == "healthcheck" else ""))
    pytester.makepyfile(COMBO_TEST.replace("FIXTURE", case["fixture"]))
    args = ["-p", "no:cacheprovider"]
    if case["source"] == "compose":
        (pytester.path / "compose.yaml").write_text(STACK.replace("BUSYBOX", app.busybox))
        pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    prebuilt = None
    if case["source"] == "image":
        prebuilt = f"pytest-dockapp/combo-{uuid.uuid4().hex[:8]}:ci"
        subprocess.run(["docker", "build", "-q", "-t", prebuilt, str(pytester.path)], check=True, capture_output=True)
        args.append(f"--dockapp-image={prebuilt}")
    if case["readiness"] == "health_path":
        args.append("--dockapp-health-path=/health/")
    if case["registry"] == "cache":
        registry = os.environ.get("DOCKAPP_TEST_REGISTRY")
        if not registry:
            pytest.skip("no registry: .ci/registry start")
        ref = f"{registry}/dockapp-test/combo-{uuid.uuid4().hex[:12]}:cache"
        args += [f"--dockapp-cache-from={ref}", f"--dockapp-cache-to={ref}", "--dockapp-builder=classic"]
    if case["xdist"] == "n2":
        args += ["-n", "2"]
    try:
        result = pytester.runpytest_subprocess(*args)
        result.assert_outcomes(passed=2)
        expected = docker_client.images.get(prebuilt).id if prebuilt else None
    finally:
        if prebuilt:
            docker_client.api.remove_image(prebuilt, force=True)
    for path in pytester.path.glob("seen-*.json"):
        seen = json.loads(path.read_text())
        assert seen["image"] == (expected or seen["session_image"]), (case, seen)  # the image actually served
        if case["readiness"] == "health_path":
            assert "GET /health/" in seen["checks"], (case, seen)
        if case["readiness"] == "healthcheck":
            assert "HEALTHCHECK" in seen["checks"], (case, seen)
        stack = case["source"] == "compose" and case["fixture"] != "dockapp_factory"
        assert seen["services"] == (["side", "web"] if stack else []), (case, seen)
    assert len(list(pytester.path.glob("seen-*.json"))) == 2
    if case["registry"] == "cache" and case["source"] != "image":
        result.stdout.fnmatch_lines(["*registry: pushed to *"])
    # `app`'s leak check: nothing of the run is left (containers, networks, volumes)
