"""Unit tests: the Dockerfile parser (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dockapp.builds.dockerfile import Dockerfile, copy_sources, expand, mount_specs
from pytest_dockapp.core.errors import DockerfileError

TUTORIAL = """\
# syntax=docker/dockerfile:1
ARG BASE_IMAGE=node:20
FROM ${BASE_IMAGE} AS base
WORKDIR /app
COPY package.json /app
RUN npm install \\
    --no-audit \\
# a comment inside a continuation
    --no-fund
COPY . /app

FROM base
EXPOSE 80 9229/udp
CMD ["node", "server.js"]
"""


def test_lines_stages_and_continuations() -> None:
    df = Dockerfile.parse(TUTORIAL)
    assert [(i.keyword, i.line) for i in df.instructions] == [
        ("ARG", 2),
        ("FROM", 3),
        ("WORKDIR", 4),
        ("COPY", 5),
        ("RUN", 6),
        ("COPY", 10),
        ("FROM", 12),
        ("EXPOSE", 13),
        ("CMD", 14),
    ]
    run = df.instructions[4]
    assert run.text == "RUN npm install --no-audit --no-fund"
    assert run.end_line == 9
    assert [s.label for s in df.stages] == ["base", "stage-1"]
    assert df.meta_args == {"BASE_IMAGE": "node:20"}
    assert df.exposed_ports() == ["80/tcp", "9229/udp"]
    assert df.stage_dependencies(df.stages[1]) == {0, 1}


def test_escape_directive_and_heredoc() -> None:
    df = Dockerfile.parse(
        "# escape=`\nFROM scratch\nRUN echo a `\n  b\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-END /x\n\thi\n\tEND\n"
    )
    assert df.escape == "`"
    assert df.instructions[1].text == "RUN echo a b"
    assert df.instructions[2].heredocs == ("echo one\necho two",)
    assert df.instructions[2].line == 5 and df.instructions[2].end_line == 8
    assert df.instructions[3].line == 9
    assert copy_sources(df.instructions[3]) == []


def test_flags_sources_and_mounts() -> None:
    df = Dockerfile.parse(
        'FROM scratch AS a\nFROM scratch\nCOPY --from=a /x /y\nCOPY --chown=1:1 ["src/*.js", "b c", "/app/"]\n'
        "RUN --mount=type=bind,source=req.txt,target=/r --mount=type=cache,target=/c pip install\n"
    )
    copy_from, copy_json, run = df.instructions[2:]
    assert copy_from.flags == {"from": "a"}
    assert copy_sources(copy_from) == []
    assert copy_json.flags == {"chown": "1:1"}
    assert copy_sources(copy_json) == ["src/*.js", "b c"]
    assert mount_specs(run) == [
        {"type": "bind", "source": "req.txt", "target": "/r"},
        {"type": "cache", "target": "/c"},
    ]
    assert df.stage_dependencies(df.stages[1]) == {0, 1}


def test_variables_expand_as_the_builder_expands_them() -> None:
    v = {"A": "1", "E": ""}
    assert expand("$A ${A} ${B:-two} ${A:+set} ${E:-empty} ${B}", v) == "1 1 two set empty "


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no FROM instruction (it is empty)"),
        ("# only a comment\n", "has no FROM instruction"),
        ("FROM scratch\nRUNN echo\n", "Dockerfile:2: unknown instruction 'RUNN'"),
        ("RUN echo\nFROM scratch\n", "Dockerfile:1: RUN comes before the first FROM"),
    ],
)
def test_a_malformed_dockerfile_is_a_located_error(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Dockerfile.parse(text)


def test_unknown_stage_lists_stages() -> None:
    df = Dockerfile.parse("FROM scratch AS build\nFROM scratch\n")
    with pytest.raises(DockerfileError, match="the stages are: build, stage-1"):
        df.stage("nope")


def test_base_images_skip_stages_and_scratch() -> None:
    df = Dockerfile.parse("ARG B=busy:1\nFROM ${B} AS one\nFROM one\nFROM scratch\n")
    assert [img for _, img in df.base_images({"B": "local:2"})] == ["local:2"]


def test_a_dockerfile_that_is_not_utf8_is_read_as_docker_reads_it(tmp_path: Path) -> None:
    # Trust III, 8: `docker build` takes a Latin-1 comment on both builders.
    path = tmp_path / "Dockerfile"
    path.write_bytes(b"# caf\xe9\nFROM scratch\nCOPY a /a\n")
    df = Dockerfile.read(path)
    assert [i.keyword for i in df.instructions] == ["FROM", "COPY"]


def test_a_byte_order_mark_before_from_is_ignored(tmp_path: Path) -> None:
    # Cache marker II, 1: 2 of 24 real repositories start with one; both builders accept it.
    path = tmp_path / "Dockerfile"
    path.write_bytes("\ufeffFROM scratch\nCOPY a /a\n".encode())
    assert [(i.keyword, i.line) for i in Dockerfile.read(path).instructions] == [("FROM", 1), ("COPY", 2)]


def test_a_bare_from_says_it_names_no_image() -> None:
    # Trust III, 10: it said "`FROM ` names no image:  has no default and no value".
    with pytest.raises(DockerfileError) as info:
        Dockerfile.parse("FROM\nRUN true\n")
    assert info.value.what == "Dockerfile:1: FROM names no image"
    assert info.value.hint == "write FROM <image> (or FROM scratch)"
