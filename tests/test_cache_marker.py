"""The dockapp_cache marker on the real engine, with both builders."""

from __future__ import annotations

import os
import subprocess
import textwrap
import uuid
from typing import Any

import pytest

from .helpers import App

# A stand-in for `npm`: the install step reads only package.json, as the real one does.
FAKE_NPM = "RUN printf '#!/bin/sh\\ncp package.json installed.json\\n' > /bin/npm && chmod +x /bin/npm"

TUTORIAL_BAD = f"""
FROM {{BUSYBOX}}
{FAKE_NPM}
WORKDIR /app
COPY package.json /app
COPY . /app
RUN npm install
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/app"]
"""

TUTORIAL_GOOD = f"""
FROM {{BUSYBOX}}
{FAKE_NPM}
WORKDIR /app
COPY package.json /app
RUN npm install
COPY . /app
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/app"]
"""

SERVER_CHANGE_TEST = """
import pytest

@pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN npm install"])
def test_source_edit_keeps_install_cached():
    pass
"""


def project(app: App, dockerfile: str, **files: str) -> None:
    app.dockerfile(dockerfile)
    files.setdefault("package.json", '{"name": "demo"}\n')
    files.setdefault("server.js", "console.log('hi')\n")
    for name, content in files.items():
        path = app.pytester.path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def run(app: App, test: str, *args: str) -> pytest.RunResult:
    app.pytester.makepyfile(test_cache=textwrap.dedent(test))
    return app.pytester.runpytest("-p", "no:cacheprovider", *args)


@pytest.mark.remote
def test_tutorial_order_fails_with_explanation(app: App, builder_args: list[str]) -> None:
    project(app, TUTORIAL_BAD)
    result = run(app, SERVER_CHANGE_TEST, *builder_args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*cache regression: step * `RUN npm install` (*Dockerfile:6) missed the cache, "
            "but cached='RUN npm install' requires a hit",
            "invalidated by line 5 `COPY . /app`: copies server.js, which changed; "
            "every later step of the stage rebuilds",
            # package.json is copied at line 4 already; the proposed order was built to check it
            "fix verified: with this order, line 5 stays cached after the change. `RUN npm install` reads only "
            "files copied before `COPY . /app`: run it before that copy, so edits to other files no longer "
            "invalidate it. Add above line 5:",
            "    RUN npm install",
            "  and remove line 6",
            "#*stage*line*instruction*cache*secs*",
            "*4*COPY package.json /app*HIT*",
            "*5*COPY . /app*MISS*<-- invalidated here",
            "*6*RUN npm install*MISS*<-- must be cached",
        ]
    )
    assert "copies server.js" in result.stdout.str()


def test_tutorial_order_fixed_passes(app: App, builder_args: list[str]) -> None:
    project(app, TUTORIAL_GOOD)
    result = run(app, SERVER_CHANGE_TEST, *builder_args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["cache check test_cache.py::*: warm build *s, rebuild *s, */* steps cached: ok"])


@pytest.mark.remote
def test_no_change_rebuild_is_fully_cached(app: App, builder_args: list[str]) -> None:
    project(app, TUTORIAL_BAD)
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache
        def test_rebuild(dockapp_cache_report):
            assert dockapp_cache_report.misses == []
            assert len(dockapp_cache_report.hits) >= 5
        """,
        *builder_args,
    )
    result.assert_outcomes(passed=1)


def test_build_arg_change_invalidates_later_runs(app: App, builder_args: list[str]) -> None:
    project(
        app,
        """
        FROM {BUSYBOX}
        RUN echo before > /before
        ARG VERSION=1
        RUN echo "$VERSION" > /version
        RUN echo after > /after
        """,
    )
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["--build-arg VERSION=NEW"], cached=["RUN echo before"])
        def test_arg(dockapp_cache_report):
            r = dockapp_cache_report
            assert r.step("RUN echo before").cached is True
            assert r.step('RUN echo "$VERSION"').cached is False
            assert r.step("RUN echo after").cached is False
            assert r.changed_args == {"VERSION": "NEW"}
        """.replace("NEW", uuid.uuid4().hex),  # a value no earlier run built: it cannot be cached
        *builder_args,
    )
    result.assert_outcomes(passed=1)


def test_multi_stage_with_a_stage_the_target_does_not_need(app: App, builder_args: list[str]) -> None:
    project(
        app,
        f"""
        FROM {{BUSYBOX}} AS deps
        {FAKE_NPM}
        WORKDIR /app
        COPY package.json /app
        RUN npm install

        FROM {{BUSYBOX}} AS docs
        COPY . /docs
        RUN ls /docs > /docs/index.txt

        FROM deps AS final
        COPY server.js /app/
        CMD ["cat", "/app/server.js"]
        """,
    )
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN npm install"], target="final")
        def test_final(dockapp_cache_report):
            assert dockapp_cache_report.step("COPY server.js").cached is False
        """,
        *builder_args,
    )
    result.assert_outcomes(passed=1)


def test_dockerignored_change_misses_nothing(app: App, builder_args: list[str]) -> None:
    project(app, TUTORIAL_BAD, **{"notes.txt": "draft\n", ".dockerignore": "notes.txt\n"})
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["notes.txt"])
        def test_ignored(dockapp_cache_report):
            assert dockapp_cache_report.changed_files == []
            assert dockapp_cache_report.misses == []
        """,
        *builder_args,
    )
    result.assert_outcomes(passed=1)


def test_a_wildcard_copy_misses_only_for_files_it_matches(app: App, builder_args: list[str]) -> None:
    project(
        app,
        f"""
        FROM {{BUSYBOX}}
        {FAKE_NPM}
        WORKDIR /app
        COPY *.json /app/
        RUN npm install
        COPY . /app
        """,
    )
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN npm install", "COPY *.json*"])
        def test_source(dockapp_cache_report):
            assert dockapp_cache_report.step("COPY . /app").cached is False

        @pytest.mark.dockapp_cache(change=["package.json"])
        def test_manifest(dockapp_cache_report):
            assert dockapp_cache_report.step("COPY *.json").cached is False
            assert dockapp_cache_report.step("RUN npm install").cached is False
        """,
        *builder_args,
    )
    result.assert_outcomes(passed=2)


def test_step_printing_using_cached_is_not_a_hit(app: App, builder_args: list[str]) -> None:
    project(
        app,
        """
        FROM {BUSYBOX}
        COPY package.json /p.json
        RUN echo "Using cached requests-2.31.whl" && echo " ---> Using cache" && cat /p.json
        """,
    )
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["package.json"])
        def test_pip_like_output(dockapp_cache_report):
            assert dockapp_cache_report.step("RUN echo").cached is False
        """,
        *builder_args,
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('cached=["RUN yarn install"]', "*cached pattern 'RUN yarn install' matches no step of *Dockerfile*"),
        ('change=["../outside.txt"]', "*change path '../outside.txt' is outside the build context*"),
        ('change=["nope.js"]', "*change path 'nope.js' does not exist in the build context*"),
        ('chnage=["server.js"]', "*unknown keyword(s) chnage; valid keywords: change, cached, context, *"),
    ],
)
def test_marker_misuse_is_an_error(app: App, marker: str, message: str) -> None:
    project(app, TUTORIAL_GOOD)
    result = run(app, f"import pytest\n\n@pytest.mark.dockapp_cache({marker})\ndef test_x():\n    pass\n")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


def test_expect_cached_ci_stage(app: App, pytester: pytest.Pytester) -> None:
    project(app, TUTORIAL_GOOD, **{".dockerignore": "*.py\n.pytest_cache\n__pycache__\n"})
    pytester.makepyfile(test_app="def test_up(dockapp_image):\n    assert dockapp_image.id\n")
    pytester.runpytest().assert_outcomes(passed=1)  # the "build stage"
    pytester.runpytest("--dockapp-expect-cached").assert_outcomes(passed=1)
    (pytester.path / "server.js").write_text(f"console.log('{uuid.uuid4().hex}')\n")  # never built before
    result = pytester.runpytest("--dockapp-expect-cached")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*--dockapp-expect-cached: the session build of *Dockerfile missed the layer cache at * step(s)*",
            "*COPY . /app*MISS*<-- MISS",
        ]
    )


def test_the_expect_cached_hint_gives_the_command_that_builds_as_the_plugin_does(
    app: App, pytester: pytest.Pytester, builder_args: list[str]
) -> None:
    """Trust III, 14: a CI stage built classic while the plugin built with BuildKit, every step
    missed, and the hint named neither the builder nor the command. Run the hint's command as a
    CI build stage would, on a Dockerfile no earlier run built: the test stage is then cached."""
    import re
    import shlex

    def dockerfile() -> None:
        app.httpd(extra=f"RUN echo {uuid.uuid4().hex} > /www/nonce")

    dockerfile()
    pytester.makepyfile(test_app="def test_up(dockapp_image):\n    assert dockapp_image.id\n")
    first = pytester.runpytest(*builder_args, "--dockapp-expect-cached")
    first.assert_outcomes(errors=1)
    builder = "classic" if "classic" in builder_args[-1] else "buildkit"
    hint = next(line for line in first.stdout.lines if "hint: this session built with the" in line)
    assert f"the {builder} builder" in hint, hint
    command = re.search(r"these settings: (.*) \(or drop --dockapp-expect-cached\)", hint)
    assert command is not None, hint
    dockerfile()  # a new step: only the hint's command can have built it
    words = shlex.split(command.group(1))
    env = dict(w.split("=", 1) for w in words if w.startswith("DOCKER_BUILDKIT="))
    subprocess.run(
        [w for w in words if not w.startswith("DOCKER_BUILDKIT=")],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    pytester.runpytest(*builder_args, "--dockapp-expect-cached").assert_outcomes(passed=1)


def test_lint_flags_tutorial_order_and_agrees_with_the_marker(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("Dockerfile").write_text(TUTORIAL_BAD.replace("{BUSYBOX}", "scratch").lstrip())
    good = pytester.mkdir("good")
    # good for the layer cache, and (for the size rules) without npm's cache in the layer
    good_text = TUTORIAL_GOOD.replace("RUN npm install", "RUN npm install && npm cache clean --force")
    good.joinpath("Dockerfile").write_text(good_text.replace("{BUSYBOX}", "scratch").lstrip())
    result = pytester.runpytest("--dockapp-lint", ".", "good")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*/Dockerfile:6: `RUN npm install` comes after `COPY . /app` (*/Dockerfile:5): any source edit reruns "
            "the npm dependency install",
            "  fix: `RUN npm install` reads package-lock.json, which `COPY . /app` copies: copy only those first*",
        ]
    )


def test_example_app_cache_check_is_in_its_tests() -> None:
    from .helpers import ROOT

    text = (ROOT / "example-app" / "tests" / "test_cache.py").read_text()
    assert 'change=["server.js"]' in text and 'cached=["RUN npm install"]' in text


def test_summary_tells_a_demanded_hit_from_an_unexplained_miss(app: App) -> None:
    project(app, TUTORIAL_BAD)
    result = run(app, SERVER_CHANGE_TEST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["cache check test_cache.py::*: 1 step(s) that cached= requires missed"])
    result.stdout.no_fnmatch_line("*unexplained miss*")


CHEF_LIKE = """
FROM {BUSYBOX} AS planner
WORKDIR /app
COPY . .
RUN echo fixed > /recipe.json
FROM {BUSYBOX}
COPY --from=planner /recipe.json /recipe.json
RUN cat /recipe.json > /cooked
COPY . /app
"""


def test_steps_allowed_to_miss_that_hit_are_reported_as_unprotected(app: App) -> None:
    project(app, CHEF_LIKE)
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["server.js"])
        def test_loose(dockapp_cache_report):
            assert [s.line for s in dockapp_cache_report.unprotected] == [6, 7]

        @pytest.mark.dockapp_cache(change=["server.js"], strict=True)
        def test_strict(dockapp_cache_report):
            assert dockapp_cache_report.unprotected == []
            assert dockapp_cache_report.step("RUN cat /recipe.json*").cached is True
        """,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["cache check *test_loose: * ok (2 step(s) allowed to miss hit anyway, unprotected: line 6, line 7)"]
    )


def test_classic_build_of_buildkit_syntax_says_so(app: App) -> None:
    app.dockerfile(
        """
        FROM {BUSYBOX}
        RUN <<EOF
        echo hi > /hi
        EOF
        EXPOSE 80
        """
    )
    app.pytester.makepyfile(test_home="def test_home(dockapp_image):\n    pass\n")
    result = app.pytester.runpytest("--dockapp-builder", "classic")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*this Dockerfile uses heredocs (`<<EOF`), which needs BuildKit (builder in use: classic)*"]
    )


def test_onbuild_parent_edit_is_explained_by_its_trigger(app: App, docker_client: Any) -> None:
    parent = f"dockapp-test/onbuild-parent:{uuid.uuid4().hex[:8]}"
    pdir = app.pytester.path.parent / f"{app.pytester.path.name}-parent"
    pdir.mkdir()
    (pdir / "Dockerfile").write_text(f"FROM {app.busybox}\nWORKDIR /app\nONBUILD COPY . /app/\n")
    subprocess.run(["docker", "build", "-q", "-t", parent, str(pdir)], check=True, capture_output=True)
    try:
        project(app, f"FROM {parent}\nRUN echo child > /child\n")
        result = run(
            app,
            """
            import pytest

            @pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN echo child*"])
            def test_child(dockapp_cache_report):
                pass
            """,
        )
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                "*cache regression: step * `RUN echo child > /child` *",
                "invalidated by line 1 (ONBUILD trigger 1 of its base) `COPY . /app/`: copies server.js*",
            ]
        )
        result.stdout.no_fnmatch_line("*was the cache pruned*")
    finally:
        docker_client.api.remove_image(parent, force=True)


def test_lint_only_checks_dockerfiles_and_runs_no_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.path.joinpath("Dockerfile").write_text(TUTORIAL_BAD.replace("{BUSYBOX}", "scratch").lstrip())
    pytester.makepyfile("def test_needs_the_app(dockapp):\n    raise AssertionError('must not run')\n")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # lint-only needs no engine
    result = pytester.runpytest_subprocess("--dockapp-lint-only", "--dockapp-strict")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*Dockerfile:6: `RUN npm install` comes after `COPY . /app`*"])
    result.stdout.no_fnmatch_line("dockapp: engine*")


def test_lint_finds_dockerfiles_by_any_common_name(pytester: pytest.Pytester) -> None:
    """Cache marker II, 12: `local/app.dockerfile` was linted only when named by the setting; a
    byte-order mark (cache marker II, 1) gave a traceback."""
    bad = TUTORIAL_BAD.replace("{BUSYBOX}", "scratch").lstrip()
    for name in ("local/app.dockerfile", "ci/Dockerfile.ci", "web.Dockerfile"):
        pytester.path.joinpath(name).parent.mkdir(parents=True, exist_ok=True)
        pytester.path.joinpath(name).write_text(("\ufeff" if name.startswith("local") else "") + bad)
    pytester.path.joinpath("Dockerfile.dockerignore").write_text("*.md\n")  # an ignore file, not a Dockerfile
    result = pytester.runpytest("--dockapp-lint-only")
    result.assert_outcomes(failed=3)
    for name in ("app.dockerfile", "Dockerfile.ci", "web.Dockerfile"):
        result.stdout.fnmatch_lines([f"*{name}:6: `RUN npm install` comes after `COPY . /app`*"])


def test_other_plugins_hear_of_every_cache_check(app: App, pytester: pytest.Pytester) -> None:
    """Cache marker II, 13: a public hook carries the whole check, so a dashboard needs no internals."""
    project(app, TUTORIAL_GOOD)
    pytester.makeconftest(
        """
        import json

        def pytest_dockapp_cache_checked(config, item, report):
            open("heard.json", "w").write(json.dumps({
                "item": item.name,
                "ok": report.ok,
                "steps": [[s.index, s.stage, s.line, s.text, s.cached, s.cacheable] for s in report.steps],
                "allowed": [s.line for s in report.allowed],
                "demanded": [s.line for s in report.demanded],
                "warm": report.warm.tag,
                "advice": report.advice is not None,
            }))
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN npm install"])
        def test_cached():
            pass
        """
    )
    pytester.runpytest("--dockapp-builder=classic").assert_outcomes(passed=1)
    import json

    heard = json.loads((pytester.path / "heard.json").read_text())
    assert heard["item"] == "test_cached" and heard["ok"] is True and heard["demanded"] == []
    assert heard["warm"].startswith("pytest-dockapp/cache-warm:") and heard["advice"] is False
    assert any(text.startswith("RUN npm install") and cached for _, _, _, text, cached, _ in heard["steps"])
    assert heard["allowed"] and all(isinstance(line, int) for line in heard["allowed"])


def test_the_cache_check_builds_with_the_sessions_build_secrets(
    app: App, buildkit_cli: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that needs a build secret builds in the marker's copies as in the session."""
    project(
        app,
        f"""
        FROM {{BUSYBOX}}
        RUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo {uuid.uuid4().hex} > /tok-seen
        COPY server.js /app/
        """,
    )
    monkeypatch.setenv("MY_TOKEN", "s3cret-value")
    result = run(
        app,
        """
        import pytest

        @pytest.mark.dockapp_cache(change=["server.js"], cached=["RUN *"])
        def test_cached(dockapp_cache_report):
            assert [step.text for step in dockapp_cache_report.misses] == ["COPY server.js /app/"]
        """,
        "--dockapp-builder=buildkit",
        f"--dockapp-docker-cli={buildkit_cli}",
        "--dockapp-secret=tok=MY_TOKEN",
    )
    result.assert_outcomes(passed=1)
    assert "s3cret-value" not in result.stdout.str()
