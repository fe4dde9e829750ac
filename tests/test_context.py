"""Unit tests: the build context tarball (no engine needed)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pytest_dockapp.builds.context import TarStream, context_files
from pytest_dockapp.core.errors import ConfigurationError


def read(stream: TarStream) -> tarfile.TarFile:
    data = b"".join(stream.chunks())
    stream.close()
    assert stream.error is None
    return tarfile.open(fileobj=io.BytesIO(data))


def test_tarball_honours_dockerignore_and_keeps_links(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app.js").write_text("x")
    (tmp_path / "node_modules" / "a").mkdir(parents=True)
    (tmp_path / "node_modules" / "a" / "i.js").write_text("x")
    (tmp_path / ".dockerignore").write_text("node_modules\nDockerfile\n")
    os.symlink("/etc/hostname", tmp_path / "link")
    stream = TarStream(tmp_path, tmp_path / "Dockerfile")
    tar = read(stream)
    names = sorted(tar.getnames())
    assert names == [".dockerignore", "Dockerfile", "app.js", "link"]  # the Dockerfile is always sent
    link = tar.getmember("link")
    assert link.issym() and link.linkname == "/etc/hostname"
    assert {(m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, "", "")}
    assert stream.dockerfile_name == "Dockerfile"
    assert context_files(tmp_path, tmp_path / "Dockerfile") == [".dockerignore", "Dockerfile", "app.js", "link"]


def test_dockerfile_outside_the_context_is_added(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a")
    outside = tmp_path / "build.Dockerfile"
    outside.write_text("FROM scratch\nCOPY a.txt /\n")
    stream = TarStream(ctx, outside)
    tar = read(stream)
    assert stream.dockerfile_name.startswith(".dockerfile.")
    member = tar.extractfile(stream.dockerfile_name)
    assert member is not None and member.read() == outside.read_bytes()


def test_closing_early_ends_the_writer(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "big.bin").write_bytes(os.urandom(1 << 20))  # more than a pipe holds
    stream = TarStream(tmp_path, tmp_path / "Dockerfile")
    next(stream.chunks())
    stream.close()  # must not hang


def test_own_tar_writer_round_trips_through_tarfile(tmp_path: Path) -> None:
    deep = "d" * 60 + "/" + "e" * 60  # longer than ustar's 100-byte name field
    files = {"a.txt": b"hello", "empty": b"", f"{deep}/f.bin": os.urandom(5000), "naïve.txt": b"utf-8 name"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    os.symlink("x" * 150, tmp_path / "long-link")
    tar = read(TarStream(tmp_path, tmp_path / "Dockerfile"))
    for rel, data in files.items():
        member = tar.extractfile(rel)
        assert member is not None and member.read() == data
    assert tar.getmember("run.sh").mode == 0o755
    assert tar.getmember(deep).isdir()
    assert tar.getmember("long-link").linkname == "x" * 150
    assert {(m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, "", "")}


def test_a_bad_dockerignore_pattern_fails_before_anything_is_sent(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / ".dockerignore").write_text("logs/[\n")
    with pytest.raises(ConfigurationError, match=r"\.dockerignore: pattern 'logs/\[' is not valid"):
        TarStream(tmp_path, tmp_path / "Dockerfile")
