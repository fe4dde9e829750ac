"""Unit tests: .dockerignore matching, checked against the CLI's documented behaviour."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_dockapp.builds.context import walk
from pytest_dockapp.builds.dockerignore import IgnoreRules, for_build, parse, read_patterns
from pytest_dockapp.core.errors import ConfigurationError


def excluded(patterns: list[str], path: str) -> bool:
    """Match ``path`` the way a walk does: each parent first, its results handed down."""
    rules = IgnoreRules(parse(patterns))
    parent: list[bool] | None = None
    parts = path.split("/")
    for depth in range(1, len(parts)):
        _, parent = rules.excluded("/".join(parts[:depth]), parent)
    return rules.excluded(path, parent)[0]


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("*", "fileutils.go", True),
        ("*.go", "fileutils.go", True),
        ("**", "dir/file", True),
        ("**/", "file", True),
        ("dir/**", "dir/dir2/file", True),
        ("abc/**", "abc", False),
        ("**/dir", "dir", True),
        ("**/dir", "dir/file", True),  # a matched directory covers what is under it
        ("**/dir2/*", "dir/dir2/file", True),
        ("**/file*.txt", "dir/dir/file.txt", True),
        ("**/**/*.txt2", "dir/dir/file.txt", False),
        ("**/*.txt", "file.txt", True),
        ("a**/*.txt", "a/dir/dir/file.txt", True),
        ("a/*.txt", "a/dir/file.txt", False),
        ("a[b-d]e", "ace", True),
        ("a[b-d]e", "aae", False),
        ("a[^b-d]e", "aze", True),
        (".*", ".foo", True),
        (".*", "foo", False),
        ("abc.def", "abcZdef", False),
        ("abc?def", "abcZdef", True),
        ("**/foo/bar", "dir/dir2/foo/bar", True),
        ("**/.foo", "bar.foo", False),
        ("a(b)c/def", "a(b)c/def", True),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
        ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "ab", False),
        ("a*/b", "a/c/b", False),
        ("a?b", "a/b", False),
        ("*/temp*", "somedir/temporary.txt", True),  # the examples of the Dockerfile reference
        ("*/*/temp*", "somedir/subdir/temporary.txt", True),
        ("temp?", "tempa", True),
        ("/node_modules", "node_modules/x.js", True),  # leading slash: relative to the context
        ("./build/../dist", "dist/a", True),  # cleaned like Go's filepath.Clean
        ("README.md", "readme.md", False),  # case-sensitive, as the CLI on Linux
    ],
)
def test_ignore_patterns_follow_the_builders_semantics(pattern: str, path: str, hit: bool) -> None:
    assert excluded([pattern], path) is hit


@pytest.mark.parametrize(
    ("patterns", "path", "hit"),
    [
        (["docs", "!docs/README.md"], "docs/README.md", False),
        (["docs/*", "!docs/README.md"], "docs/README.md", False),
        (["*.go", "!fileutils.go"], "fileutils.go", False),
        (["!fileutils.go", "*.go"], "fileutils.go", True),
        (["**", "!util/docker/web"], "util/docker/web/foo", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
        (["# a comment", "", "  spaced  "], "spaced", True),
    ],
)
def test_later_rules_win(patterns: list[str], path: str, hit: bool) -> None:
    assert excluded(patterns, path) is hit


def test_bad_patterns_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="illegal exclusion"):
        IgnoreRules(parse(["!"]))
    with pytest.raises(ConfigurationError, match="not valid"):
        IgnoreRules(parse(["a["]))


def test_dockerfile_and_dockerignore_are_kept_only_when_excluded() -> None:
    rules = for_build(["*"], "build/Dockerfile")
    assert [r.text for r in rules.rules if r.exclusion] == [".dockerignore", "build/Dockerfile"]
    assert not for_build(["node_modules"], "Dockerfile").exclusions


def test_walk_prunes_excluded_directories_unless_an_exception_reaches_in(tmp_path: Path) -> None:
    for rel in ("Dockerfile", "app/a.js", "node_modules/x/i.js", "docs/README.md", "docs/other.md", "keep/.env"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    os.symlink("app", tmp_path / "link-to-app")
    (tmp_path / ".dockerignore").write_text("node_modules\ndocs\n!docs/README.md\n**/.env\n")
    seen = [rel for rel, _ in walk(tmp_path, "Dockerfile")]
    # depth first, names sorted; the link is sent as a link, not walked into
    assert seen == [".dockerignore", "Dockerfile", "app", "app/a.js", "docs/README.md", "keep", "link-to-app"]


def test_a_dockerignore_that_is_not_utf8_is_read_as_docker_reads_it(tmp_path: Path) -> None:
    # Trust III, 9: docker matches its patterns byte for byte; so do we, as os.walk names files.
    (tmp_path / ".dockerignore").write_bytes(b"caf\xe9.txt\n*.log\n")
    patterns = read_patterns(tmp_path)
    assert patterns == [os.fsdecode(b"caf\xe9.txt"), "*.log"]
