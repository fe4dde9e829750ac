"""Unit tests: expected-miss computation, COPY source matching, patterns, lint (no engine)."""

from __future__ import annotations

import pytest

from pytest_dockapp.cache_check import (
    Expectation,
    expected_misses,
    harmless_token,
    match_pattern,
    parse_change,
)
from pytest_dockapp.dockerfile import Dockerfile, source_covers
from pytest_dockapp.errors import CacheMarkerUsageError
from pytest_dockapp.lint import lint


def lines(exp: Expectation) -> list[int]:
    return sorted(line for line, _ in exp.may_miss)


BAD = Dockerfile.parse(
    'FROM node\nWORKDIR /app\nCOPY package.json /app\nCOPY . /app\nRUN npm install\nEXPOSE 80\nCMD ["node"]\n'
)
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
def test_source_covers(source: str, path: str, covered: bool) -> None:
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


def test_build_arg_change() -> None:
    df = Dockerfile.parse("ARG BASE=a\nFROM $BASE\nRUN one\nARG V=1\nENV X=1\nRUN two\nRUN three\nFROM b\nRUN four\n")
    assert lines(expected_misses(df, [], ["V"])) == [6, 7]
    assert lines(expected_misses(df, [], ["BASE"])) == [2, 3, 4, 5, 6, 7]


def test_run_bind_mount_consumes_context() -> None:
    df = Dockerfile.parse("FROM b\nRUN --mount=type=bind,source=req.txt,target=/r pip install -r /r\nRUN x\n")
    assert lines(expected_misses(df, ["req.txt"])) == [2, 3]
    assert expected_misses(df, ["other.txt"]).may_miss == {}


def test_patterns() -> None:
    assert [i.line for i in match_pattern(BAD, "RUN npm install")] == [5]
    assert [i.line for i in match_pattern(BAD, "run   NPM install")] == [5]
    assert [i.line for i in match_pattern(BAD, "COPY *")] == [3, 4]
    assert [i.line for i in match_pattern(BAD, 5)] == [5]
    assert [i.line for i in match_pattern(BAD, ("stage-0", "EXPOSE"))] == [6]
    assert match_pattern(BAD, ("other", "EXPOSE")) == []
    with pytest.raises(CacheMarkerUsageError):
        match_pattern(BAD, 3.5)  # type: ignore[arg-type]


def test_parse_change() -> None:
    assert parse_change(["a.js", "--build-arg V=2"]) == (["a.js"], {"V": "2"}, None)
    assert parse_change("a.js") == (["a.js"], {}, None)


def test_harmless_token_is_whitespace_and_unique() -> None:
    a, b = harmless_token(), harmless_token()
    assert a != b and a.strip() == b""


def test_lint_agrees_with_expectations() -> None:
    findings = lint(BAD)
    assert [(f.copy.line, f.victim.line, f.tool) for f in findings] == [(4, 5, "npm")]
    assert "fix: copy only what `RUN npm install` needs first (`COPY package.json package-lock.json /app`)" in str(
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
    ],
)
def test_lint_knows_installers(run: str, tool: str) -> None:
    df = Dockerfile.parse(f"FROM x\nCOPY . .\nRUN {run}\n")
    assert [f.tool for f in lint(df)] == [tool]
