"""Unit tests: what decides whether an unchanged build may be reused (no engine needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_dockapp.builds.context import walk
from pytest_dockapp.builds.dockerfile import Dockerfile, normalize_source, parse_triggers
from pytest_dockapp.builds.reuse import BuildCache, Entry, _files_read, _image_refs, _Unknown


def test_base_and_from_images_count_stages_do_not() -> None:
    df = Dockerfile.parse(
        "ARG BASE=node:20\nFROM ${BASE} AS deps\nRUN true\nFROM deps\n"
        "COPY --from=tools:1 /bin/x /x\nCOPY --from=deps /a /a\nRUN --mount=from=cache-img,target=/c true\n"
    )
    assert _image_refs(df, {"BASE": "local/node:1"}, "classic") == ({"local/node:1"}, {"tools:1", "cache-img"})


def test_the_syntax_frontend_counts_on_buildkit() -> None:
    df = Dockerfile.parse("# syntax=local/frontend:1\nFROM scratch\n")
    assert _image_refs(df, {}, "buildkit") == (set(), {"local/frontend:1"})
    assert _image_refs(df, {}, "classic") == (set(), set())


def test_remote_sources_are_never_reused() -> None:
    with pytest.raises(_Unknown):
        _image_refs(Dockerfile.parse("FROM scratch\nADD https://example.invalid/a.tgz /\n"), {}, "classic")
    with pytest.raises(_Unknown):
        _image_refs(Dockerfile.parse("FROM scratch\nADD git@host:org/repo.git /src\n"), {}, "classic")
    assert _image_refs(Dockerfile.parse("FROM scratch\nADD local.tgz /\n"), {}, "classic") == (set(), set())


def _sent(root: Path, files: dict[str, str]) -> dict[str, os.DirEntry[str]]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if text.startswith("->"):
            path.symlink_to(text[2:])
        else:
            path.write_text(text)
    return {rel: e for rel, e in walk(root, "Dockerfile") if not e.is_dir(follow_symlinks=False)}


def test_only_files_that_steps_read_count(tmp_path: Path) -> None:
    files = {"package.json": "", "src/a.js": "", "src/a.txt": "", "conf/x.ini": "", ".cache/x": "", "README.md": ""}
    sent = _sent(tmp_path, files)
    df = Dockerfile.parse(
        "FROM scratch\nCOPY package.json /app/\nCOPY src/*.js /app/\nRUN --mount=type=bind,source=conf,target=/c x\n"
    )
    assert _files_read(df.instructions, sent, tmp_path) == {"package.json", "src/a.js", "conf/x.ini"}
    everything = Dockerfile.parse("FROM scratch\nCOPY . /app\n").instructions
    assert _files_read(everything, sent, tmp_path) == set(sent)


def test_a_variable_source_means_build(tmp_path: Path) -> None:
    sent = _sent(tmp_path, {"src/a": ""})
    with pytest.raises(_Unknown):
        _files_read(Dockerfile.parse("FROM scratch\nARG SRC=src\nCOPY ${SRC} /app\n").instructions, sent, tmp_path)


def test_dotdot_sources_are_normalised() -> None:
    assert normalize_source("src/../index.html") == "index.html"
    assert normalize_source("./a/./b/") == "a/b"
    assert normalize_source("/") == "."
    assert normalize_source("../outside") is None
    assert normalize_source("a/../../outside") is None


def test_symlinked_sources_bring_their_targets(tmp_path: Path) -> None:
    sent = _sent(tmp_path, {"real/page.html": "", "real/other.html": "", "index.html": "->real/page.html"})
    read = _files_read(Dockerfile.parse("FROM scratch\nCOPY index.html /www/\n").instructions, sent, tmp_path)
    assert read == {"index.html", "real/page.html"}


def test_links_out_of_the_context_and_linked_folders_mean_build(tmp_path: Path) -> None:
    sent = _sent(tmp_path, {"a/x": "", "out": "->../../etc/passwd", "linked": "->a"})
    with pytest.raises(_Unknown):
        _files_read(Dockerfile.parse("FROM scratch\nCOPY out /o\n").instructions, sent, tmp_path)
    with pytest.raises(_Unknown):
        _files_read(Dockerfile.parse("FROM scratch\nCOPY linked/x /o\n").instructions, sent, tmp_path)


def test_onbuild_triggers_read_like_steps(tmp_path: Path) -> None:
    sent = _sent(tmp_path, {"index.html": "", "other": ""})
    triggers = parse_triggers(["COPY index.html /www/", "RUN true"])
    assert [t.keyword for t in triggers] == ["COPY", "RUN"]
    assert _files_read(triggers, sent, tmp_path) == {"index.html"}


def test_cache_file_round_trip_and_damage(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "builds.json")
    assert cache.lookup("k") is None
    cache.store("k", Entry("fp", "sha256:1", "pytest-dockapp/x:1", {"steps": []}))
    assert cache.lookup("k") == Entry("fp", "sha256:1", "pytest-dockapp/x:1", {"steps": []})
    (tmp_path / "builds.json").write_text("{not json")
    assert cache.lookup("k") is None
