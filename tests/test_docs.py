"""The README's examples run, and its CI recipes are the files in examples/ci (parsed here)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import ROOT, App

README = (ROOT / "README.md").read_text()


def block(first_line: str, lang: str = "python") -> str:
    """The README's fenced ``lang`` block whose first line is ``first_line``."""
    for body in re.findall(rf"```{lang}\n(.*?)```", README, re.DOTALL):
        if body.splitlines()[0].strip() == first_line:
            return str(body)
    raise AssertionError(f"no {lang} block starting with {first_line!r} in the README")


HEALTHY_HTTPD = """
FROM {BUSYBOX}
RUN mkdir -p /www/health && echo hello > /www/index.html && echo ok > /www/health/index.html
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
"""


def test_the_first_example_passes_as_written(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(HEALTHY_HTTPD)
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_app.py").write_text(
        block("# tests/test_app.py, next to your Dockerfile at the repository root")
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_hooks_example_runs_as_a_conftest(app: App, pytester: pytest.Pytester) -> None:
    app.dockerfile(HEALTHY_HTTPD)
    pytester.makeconftest(block("def pytest_dockapp_build_finished(config, record):"))
    pytester.makepyfile("def test_home(dockapp):\n    assert dockapp.get('/').text == 'hello\\n'\n")
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_subproject_conftest_example_configures_its_app(app: App, pytester: pytest.Pytester) -> None:
    api = pytester.path / "services" / "api"
    app.dockerfile(HEALTHY_HTTPD, path=api)
    (pytester.path / "conftest.py").write_text(block("# conftest.py of a subproject"))
    pytester.makepyfile("def test_health(dockapp):\n    assert dockapp.get('/health/').text == 'ok\\n'\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*ready in *s (GET /health)*"])


def test_the_library_example_runs_without_pytest(app: App, pytester: pytest.Pytester) -> None:
    """As written but for the base image: node:20 cannot be pulled here, so a local one stands in."""
    app.dockerfile(
        """
        ARG BASE_IMAGE
        FROM ${BASE_IMAGE}
        RUN mkdir -p /www/health && echo from-the-library > /www/index.html && echo ok > /www/health/index.html
        EXPOSE 80
        CMD ["httpd", "-f", "-p", "80", "-h", "/www"]
        """,
        path=pytester.path / "my-app",
    )
    code = block("from pytest_dockapp import AppManager, AppOptions, BuildSpec").replace('"node:20"', repr(app.busybox))
    result = pytester.run(sys.executable, "-c", code)
    assert result.ret == 0, result.stderr.str()
    assert result.stdout.str().strip() == "from-the-library"


@pytest.mark.parametrize(
    "name", ["github-actions.yml", "gitlab-ci.yml", "github-actions-registry-cache.yml", "gitlab-ci-registry-cache.yml"]
)
def test_the_readme_ci_recipes_are_the_example_files(name: str) -> None:
    text = (ROOT / "examples" / "ci" / name).read_text()
    assert block(text.splitlines()[0], "yaml") == text
    yaml.safe_load(text)


def test_the_github_recipe_builds_then_tests_the_cached_build() -> None:
    steps = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())["jobs"]["integration"][
        "steps"
    ]
    runs = [s.get("run", "") for s in steps]
    build = next(i for i, r in enumerate(runs) if "docker build " in r)
    test = next(i for i, r in enumerate(runs) if r.startswith("pytest "))
    assert build < test and "--dockapp-expect-cached" in runs[test] and "--dockapp-strict" in runs[test]
    # One builder in both stages (trust III, 14): they keep separate caches.
    assert runs[build].startswith("DOCKER_BUILDKIT=1 docker build ") and "--dockapp-builder=buildkit" in runs[test]


def test_the_registry_cache_recipes_push_once_and_expect_every_runner_cached() -> None:
    """One job pushes to cache_to; the others, on fresh runners, expect every step from the
    cache_from refs, which the CI environment gives to every job."""
    github = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions-registry-cache.yml").read_text())
    gitlab = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci-registry-cache.yml").read_text())
    refs = [
        s.get("run", "") for job in github["jobs"].values() for s in job["steps"] if "Cache refs" in s.get("name", "")
    ]
    assert len(refs) == 2 and all("DOCKAPP_CACHE_FROM=" in r for r in refs)
    assert "DOCKAPP_CACHE_FROM" in gitlab[".dockapp"]["variables"]
    build = [s.get("run", "") for s in github["jobs"]["build"]["steps"]][-1]
    shard = [s.get("run", "") for s in github["jobs"]["shards"]["steps"]][-1]
    assert '--dockapp-cache-to="$CACHE_TO"' in build and "--dockapp-expect-cached" not in build
    assert "--dockapp-expect-cached" in shard and github["jobs"]["shards"]["needs"] == "build"
    # One builder in every job (they keep separate caches).
    assert "--dockapp-builder=buildkit" in build and "--dockapp-builder=buildkit" in shard
    assert "--dockapp-cache-to=" in gitlab["build"]["script"][0]
    assert "--dockapp-expect-cached" in gitlab["test"]["script"][0] and gitlab["test"]["needs"] == ["build"]
    # The credentials go where the plugin (the docker SDK) reads them.
    assert any("~/.docker/config.json" in line for line in gitlab[".dockapp"]["before_script"])


@pytest.mark.parametrize("branch", ["main", "42/merge", "feature/x", "Fix: ünïcode & spaces"])
def test_the_github_recipe_makes_a_valid_cache_ref_of_any_branch_name(tmp_path: Path, branch: str) -> None:
    """`cache-${{ github.ref_name }}` was `cache-42/merge` on a pull request: no valid tag."""
    from pytest_dockapp.builds.registry import check_reference

    jobs = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions-registry-cache.yml").read_text())["jobs"]
    for job in jobs.values():
        step = next(s["run"] for s in job["steps"] if s.get("name", "").startswith("Cache refs"))
        script = step.replace("${{ vars.CACHE_REPO }}", "127.0.0.1:5000/org/myapp")
        env_file = tmp_path / "github_env"
        env_file.write_text("")
        env = {**os.environ, "GITHUB_REF_NAME": branch, "GITHUB_ENV": str(env_file)}
        subprocess.run(["bash", "-eo", "pipefail", "-c", script], env=env, check=True)
        values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        for ref in [values["CACHE_TO"], *values["DOCKAPP_CACHE_FROM"].split()]:
            assert check_reference(ref) == ref
        assert values["DOCKAPP_CACHE_FROM"].split()[0] == values["CACHE_TO"]


SHARDED = """
import pytest

@pytest.mark.parametrize("n", range(7))
def test_n(n):
    pass

def test_other():
    pass
"""


def _collected(pytester: pytest.Pytester, args: list[str]) -> set[str]:
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "no:randomly", *args)
    return {line for line in result.stdout.lines if "::" in line}


def test_the_sharded_recipes_split_the_tests_once_across_their_jobs(pytester: pytest.Pytester) -> None:
    """The GitLab recipe ran the whole suite in each of its `parallel: 2` jobs, and the GitHub one
    named folders a project does not have: each job's command, as written, runs its share."""
    pytester.makepyfile(SHARDED)
    every = _collected(pytester, [])
    gitlab = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci-registry-cache.yml").read_text())["test"]
    github = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions-registry-cache.yml").read_text())["jobs"]
    shards = github["shards"]["strategy"]["matrix"]["shard"]
    commands = {
        "gitlab": [
            gitlab["script"][0].replace("$CI_NODE_TOTAL", str(gitlab["parallel"])).replace("$CI_NODE_INDEX", str(i))
            for i in range(1, gitlab["parallel"] + 1)
        ],
        "github": [github["shards"]["steps"][-1]["run"].replace("${{ matrix.shard }}", str(i)) for i in shards],
    }
    for name, jobs in commands.items():
        shares = []
        for command in jobs:
            words = shlex.split(command)
            split = [
                w
                for i, w in enumerate(words)
                if w in ("--splits", "--group") or words[i - 1] in ("--splits", "--group")
            ]
            shares.append(_collected(pytester, split))
        assert all(shares), (name, shares)
        assert set().union(*shares) == every and sum(map(len, shares)) == len(every), (name, shares)


def test_the_gitlab_recipe_reaches_the_dind_service_where_ports_are_published() -> None:
    from pytest_dockapp.engine.endpoint import resolve_endpoint

    job = yaml.safe_load((ROOT / "examples" / "ci" / "gitlab-ci.yml").read_text())["integration"]
    assert {"name": "docker:dind", "alias": "docker"} in job["services"]
    endpoint = resolve_endpoint({"DOCKER_HOST": job["variables"]["DOCKER_HOST"]})
    assert (endpoint.is_local, endpoint.connect_host()) == (False, "docker")
    assert any(line.startswith("pytest --dockapp-strict") for line in job["script"])


def test_this_repositorys_workflow_runs_the_ci_entry_point() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    runs = [s.get("run", "") for s in workflow["jobs"]["suite"]["steps"]]
    assert any(r.endswith("bash .ci/run") for r in runs)
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    assert workflow["jobs"]["suite"]["timeout-minutes"] == 90


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    quickstart = block("pip install -e '.[test]'", "sh").splitlines()
    assert quickstart == ["pip install -e '.[test]'", "pytest --dockapp-strict"]
    assert re.search(r"^pytest --dockapp-strict$", (ROOT / ".ci" / "run").read_text(), re.M)
