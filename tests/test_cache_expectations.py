"""Unit tests: expected-miss computation, COPY source matching, patterns, lint (no engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.builds.dockerfile import Dockerfile, source_covers
from pytest_dockapp.cache.advice import advise
from pytest_dockapp.cache.check import harmless_token, parse_change
from pytest_dockapp.cache.expectations import Expectation, expected_misses, match_pattern
from pytest_dockapp.cache.lint import lint
from pytest_dockapp.core.errors import CacheMarkerUsageError


def lines(exp: Expectation) -> list[int]:
    return sorted(line for line, _ in exp.may_miss)


BAD_TEXT = 'FROM node\nWORKDIR /app\nCOPY package.json /app\nCOPY . /app\nRUN npm install\nEXPOSE 80\nCMD ["node"]\n'
BAD = Dockerfile.parse(BAD_TEXT)
GOOD = Dockerfile.parse(
    'FROM node\nWORKDIR /app\nCOPY package.json /app\nRUN npm install\nCOPY . /app\nEXPOSE 80\nCMD ["node"]\n'
)


@pytest.mark.parametrize(
    ("source", "path", "covered"),
    [
        (".", "src/a.js", True),
        ("./", "a", True),
        ("src", "src/a.js", True),
        ("src/", "srcx/a.js", False),
        ("*.json", "package.json", True),
        ("*.json", "sub/package.json", False),
        ("sr?/*.js", "src/a.js", True),
        ("/package.json", "package.json", True),
        ("[ab].txt", "a.txt", True),
        ("[^ab].txt", "a.txt", False),
    ],
)
def test_a_copy_source_covers_the_paths_it_copies(source: str, path: str, covered: bool) -> None:
    assert source_covers(source, path) is covered


def test_tutorial_order_lets_install_miss() -> None:
    exp = expected_misses(BAD, ["server.js"])
    assert lines(exp) == [4, 5, 6, 7]
    assert exp.may_miss[(4, 0)] == "copies server.js, which changed"
    assert exp.origin[(5, 0)].line == 4


def test_right_order_keeps_install_out() -> None:
    assert lines(expected_misses(GOOD, ["server.js"])) == [5, 6, 7]
    assert lines(expected_misses(GOOD, ["package.json"])) == [3, 4, 5, 6, 7]


def test_dependent_and_independent_stages() -> None:
    df = Dockerfile.parse(
        "FROM b AS deps\nCOPY req.txt .\nRUN pip install -r req.txt\n"
        "FROM b AS docs\nCOPY docs /docs\n"
        "FROM deps AS app\nCOPY src /src\n"
        "FROM b\nCOPY --from=deps /x /x\nRUN true\n"
    )
    assert lines(expected_misses(df, ["req.txt"])) == [2, 3, 6, 7, 9, 10]
    assert lines(expected_misses(df, ["docs/a.md"])) == [5]
    assert lines(expected_misses(df, ["src/main.py"])) == [7]


def test_a_changed_build_arg_misses_from_its_first_use_on() -> None:
    df = Dockerfile.parse("ARG BASE=a\nFROM $BASE\nRUN one\nARG V=1\nENV X=1\nRUN two\nRUN three\nFROM b\nRUN four\n")
    assert lines(expected_misses(df, [], ["V"])) == [6, 7]
    assert lines(expected_misses(df, [], ["BASE"])) == [2, 3, 4, 5, 6, 7]


def test_run_bind_mount_consumes_context() -> None:
    df = Dockerfile.parse("FROM b\nRUN --mount=type=bind,source=req.txt,target=/r pip install -r /r\nRUN x\n")
    assert lines(expected_misses(df, ["req.txt"])) == [2, 3]
    assert expected_misses(df, ["other.txt"]).may_miss == {}


def test_cached_patterns_match_instructions_by_text_line_or_stage() -> None:
    assert [i.line for i in match_pattern(BAD, "RUN npm install")] == [5]
    assert [i.line for i in match_pattern(BAD, "run   NPM install")] == [5]
    assert [i.line for i in match_pattern(BAD, "COPY *")] == [3, 4]
    assert [i.line for i in match_pattern(BAD, 5)] == [5]
    assert [i.line for i in match_pattern(BAD, ("stage-0", "EXPOSE"))] == [6]
    assert match_pattern(BAD, ("other", "EXPOSE")) == []
    with pytest.raises(CacheMarkerUsageError):
        match_pattern(BAD, 3.5)  # type: ignore[arg-type]


def test_a_change_spec_splits_paths_and_build_args() -> None:
    assert parse_change(["a.js", "--build-arg V=2"]) == (["a.js"], {"V": "2"}, None)
    assert parse_change("a.js") == (["a.js"], {}, None)


def test_harmless_token_is_whitespace_and_unique() -> None:
    a, b = harmless_token(), harmless_token()
    assert a != b and a.strip() == b""


def test_lint_agrees_with_expectations() -> None:
    findings = lint(BAD)
    assert [(f.copy.line, f.victim.line, f.tool) for f in findings] == [(4, 5, "npm")]
    # package.json is copied at line 3 already: only the lock file is proposed (cache marker II, 8)
    assert "fix: `RUN npm install` reads package-lock.json, which `COPY . /app` copies" in str(findings[0])
    assert "Add above line 4:\n    COPY package-lock.json /app/\n    RUN npm install\n  and remove line 5" in str(
        findings[0]
    )
    assert lint(GOOD) == []
    # the marker's computed set says the same thing: the install may miss after a source edit only in BAD
    assert (5, 0) in expected_misses(BAD, ["server.js"]).may_miss
    assert (4, 0) not in expected_misses(GOOD, ["server.js"]).may_miss


@pytest.mark.parametrize(
    ("run", "tool"),
    [
        ("pip install -r requirements.txt", "pip"),
        ("poetry install --no-root", "poetry"),
        ("yarn install --frozen-lockfile", "yarn"),
        ("go mod download", "go"),
        ("bundle install", "bundler"),
        ("cargo fetch", "cargo"),
        ("composer install", "composer"),
        ("mvn -B dependency:go-offline", "maven"),
        ("uv sync --frozen", "uv"),
        # Cache marker II, 11.
        ("deno cache src/deps.ts", "deno"),
        ("deno install", "deno"),
        ("bun install --frozen-lockfile", "bun"),
        ("mix deps.get", "mix"),
        ("pnpm install --frozen-lockfile", "pnpm"),
        ("pnpm", "pnpm"),
    ],
)
def test_lint_knows_installers(run: str, tool: str) -> None:
    df = Dockerfile.parse(f"FROM x\nCOPY . .\nRUN {run}\n")
    assert [f.tool for f in lint(df)] == [tool]


CHEF = Dockerfile.parse(
    "FROM rust AS planner\nWORKDIR /app\nCOPY . .\nRUN cargo chef prepare --recipe-path recipe.json\n"
    "FROM rust AS builder\nWORKDIR /app\nCOPY --from=planner /app/recipe.json recipe.json\n"
    "RUN cargo chef cook --release --recipe-path recipe.json\nCOPY . .\nRUN cargo build --release\n"
)


def test_copy_from_a_rebuilt_stage_may_miss_unless_strict() -> None:
    assert lines(expected_misses(CHEF, ["src/main.rs"])) == [3, 4, 7, 8, 9, 10]
    # strict: what COPY --from copies must come out byte-identical, so the cook must hit
    assert lines(expected_misses(CHEF, ["src/main.rs"], strict=True)) == [3, 4, 9, 10]


def test_a_derived_stage_names_the_copy_that_invalidated_its_base_as_culprit() -> None:
    df = Dockerfile.parse("FROM x AS base\nCOPY . /app\nRUN true\nFROM base\nRUN npm install\n")
    exp = expected_misses(df, ["server.js"])
    assert exp.origin[(5, 0)].line == 4  # the child's own first miss is its FROM
    assert exp.culprit[(5, 0)].line == 2  # but what the change reached is the COPY in the base stage


def test_onbuild_triggers_of_the_base_read_the_changed_file() -> None:
    df = Dockerfile.parse("FROM parent\nWORKDIR /w\nRUN echo\n").with_triggers({"parent": ["COPY . /app"]})
    exp = expected_misses(df, ["server.js"])
    assert sorted(exp.may_miss) == [(1, 1), (2, 0), (3, 0)]
    assert exp.may_miss[(1, 1)] == "copies server.js, which changed"


@pytest.mark.parametrize(
    "dockerfile",
    [
        # false positives: builds after a broad copy, installs that earlier steps already made
        "FROM x\nCOPY package.json yarn.lock ./\nRUN yarn install\nCOPY . .\nRUN yarn build\n",
        "FROM x\nCOPY Cargo.toml Cargo.lock ./\nRUN cargo fetch\nCOPY . .\nRUN cargo build --release\n",
        "FROM x\nCOPY pyproject.toml uv.lock ./\nRUN uv sync --frozen --no-install-project\n"
        "COPY . .\nRUN uv sync --frozen\n",
        "FROM x\nCOPY . .\nRUN make\n",
        "FROM x\nCOPY . .\nRUN bundle exec rake assets:precompile\n",
    ],
)
def test_lint_leaves_correct_orders_alone(dockerfile: str) -> None:
    assert lint(Dockerfile.parse(dockerfile)) == []


@pytest.mark.parametrize(
    ("dockerfile", "tool", "line"),
    [
        # a broad COPY in a base stage reaches installs in its children
        ("FROM x AS base\nWORKDIR /app\nCOPY . .\nFROM base AS deps\nRUN pnpm install\n", "pnpm", 5),
        ("FROM x\nCOPY . .\nRUN dotnet restore\n", "dotnet", 3),
        ("FROM x\nONBUILD COPY . /app\nONBUILD RUN npm install\n", "npm", 3),
        # go build downloads the modules itself when nothing did before
        ("FROM x\nCOPY . .\nRUN go build -o /app ./...\n", "go", 3),
        ("FROM x\nCOPY . .\nRUN uv sync --frozen\n", "uv", 3),
    ],
)
def test_lint_finds_hidden_installs(dockerfile: str, tool: str, line: int) -> None:
    findings = lint(Dockerfile.parse(dockerfile))
    assert [(f.tool, f.victim.line) for f in findings] == [(tool, line)]


def test_lint_locations_are_editor_links() -> None:
    df = Dockerfile.parse(BAD_TEXT, Path("/src/app/Dockerfile"))
    assert str(lint(df)[0]).startswith("/src/app/Dockerfile:5: `RUN npm install` comes after `COPY . /app`")


def test_fix_advice_never_moves_a_copy_below_the_step_that_needs_it() -> None:
    df = Dockerfile.parse("FROM golang\nWORKDIR /src\nCOPY . .\nRUN go build -o /app .\n")
    copy, build = df.stages[0].instructions[2], df.stages[0].instructions[3]
    advice = _advice(df, copy, build)
    assert "reads the sources, so it must rerun" in advice
    assert "add above line 3 (`COPY . .`):\n    COPY go.mod go.sum /src/\n    RUN go mod download" in advice
    assert "move `COPY . .`" not in advice


def test_fix_advice_splits_a_step_that_installs_and_builds() -> None:
    df = Dockerfile.parse("FROM node\nCOPY . .\nRUN npm ci && npm run build\n")
    advice = _advice(df, df.stages[0].instructions[1], df.stages[0].instructions[2])
    assert advice.startswith("`RUN npm ci && npm run build` installs dependencies and reads the sources: split it")


@pytest.mark.parametrize(
    ("copy", "run", "first"),
    [
        ("COPY . /app", "RUN sleep 8 && sh /app/install-deps.sh", "COPY install-deps.sh /app/"),
        ("COPY scripts/ /opt/", "RUN /opt/setup.sh --quick", "COPY scripts/setup.sh /opt/"),
        ("COPY . .", "RUN sh ./install-deps.sh", "COPY install-deps.sh /app/"),
    ],
)
def test_fix_advice_copies_the_files_a_step_names_instead_of_moving_it_above_their_copy(
    copy: str, run: str, first: str
) -> None:
    """Trust III, 17: it proposed moving `RUN ... sh /app/install-deps.sh` above the `COPY . /app`
    that brings the script in."""
    df = Dockerfile.parse(f"FROM scratch\nWORKDIR /app\n{copy}\n{run}\n")
    advice = _advice(df, df.instructions[2], df.instructions[3])
    assert f"\n    {first}\n    {run}\n" in advice, advice
    assert "move it above" not in advice, advice


def _advice(df: Dockerfile, culprit: Any, victim: Any) -> str:
    found = advise(df, culprit, victim)
    assert found is not None
    return found.text


def test_lint_judges_each_install_in_its_own_workdir() -> None:
    """Cache marker II, 10: a second `npm install` in another WORKDIR after `COPY . .` was not
    reported, because an install in /app was seen before."""
    df = Dockerfile.parse(
        "FROM node\nWORKDIR /app\nCOPY package.json package-lock.json ./\nRUN npm ci\nCOPY . .\n"
        "WORKDIR /app/frontend\nRUN npm install\n"
    )
    assert [(f.copy.line, f.victim.line, f.tool) for f in lint(df)] == [(5, 7, "npm")]


def test_lint_sees_a_folder_copied_whole_before_its_install() -> None:
    df = Dockerfile.parse("FROM python\nWORKDIR /app\nCOPY app/ /app\nRUN pip install -r requirements.txt\n")
    assert [(f.copy.line, f.tool) for f in lint(df)] == [(3, "pip")]
    files = Dockerfile.parse("FROM ruby\nWORKDIR /app\nCOPY Gemfile Gemfile.lock ./\nRUN bundle install\n")
    assert lint(files) == []  # files without an extension are not folders


def test_fix_advice_never_expands_a_secret_looking_variable() -> None:
    df = Dockerfile.parse(
        "FROM scratch\nWORKDIR /app\nARG API_TOKEN=leaked.value\nCOPY . /app\nRUN sh /app/run.sh ${API_TOKEN}\n"
    )
    found = advise(df, df.instructions[3], df.instructions[4], build_args={"API_TOKEN": "leaked.value"})
    assert found is not None and "leaked.value" not in found.text and found.copies == ["run.sh"]
