"""Unit tests: what decides whether an unchanged build may be reused (no engine needed)."""

from __future__ import annotations

from pathlib import Path

from pytest_dockapp.build_reuse import BuildCache, Entry, _files_read, _image_refs
from pytest_dockapp.dockerfile import Dockerfile


def test_base_and_from_images_count_stages_do_not() -> None:
    df = Dockerfile.parse(
        "ARG BASE=node:20\nFROM ${BASE} AS deps\nRUN true\nFROM deps\n"
        "COPY --from=tools:1 /bin/x /x\nCOPY --from=deps /a /a\nRUN --mount=from=cache-img,target=/c true\n"
    )
    assert _image_refs(df, {"BASE": "local/node:1"}) == {"local/node:1", "tools:1", "cache-img"}


def test_remote_sources_are_never_reused() -> None:
    assert _image_refs(Dockerfile.parse("FROM scratch\nADD https://example.invalid/a.tgz /\n"), {}) is None
    assert _image_refs(Dockerfile.parse("FROM scratch\nADD git@host:org/repo.git /src\n"), {}) is None
    assert _image_refs(Dockerfile.parse("FROM scratch\nADD local.tgz /\n"), {}) == set()


def test_only_files_that_steps_read_count() -> None:
    df = Dockerfile.parse(
        "FROM scratch\nCOPY package.json /app/\nCOPY src/*.js /app/\nRUN --mount=type=bind,source=conf,target=/c x\n"
    )
    files = ["package.json", "src/a.js", "src/a.txt", "conf/x.ini", ".pytest_cache/v/x", "README.md"]
    assert _files_read(df, files) == {"package.json", "src/a.js", "conf/x.ini"}
    assert _files_read(Dockerfile.parse("FROM scratch\nCOPY . /app\n"), files) == set(files)
    assert _files_read(Dockerfile.parse("FROM scratch\nARG SRC=src\nCOPY ${SRC} /app\n"), files) is None


def test_cache_file_round_trip_and_damage(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "builds.json")
    assert cache.lookup("k") is None
    cache.store("k", Entry("fp", "sha256:1", "pytest-dockapp/x:1"))
    assert cache.lookup("k") == Entry("fp", "sha256:1", "pytest-dockapp/x:1")
    (tmp_path / "builds.json").write_text("{not json")
    assert cache.lookup("k") is None
