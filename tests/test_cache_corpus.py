"""Differential test: on every corpus Dockerfile and both builders, the cache check's observed
per-step hits equal those of the plain docker CLI, and its verdict is the right one.

The CLI's output is read here by a deliberately simple reader that knows nothing of the
plugin's step mapper: classic steps by their ``Step N/M`` number, BuildKit vertices by
stage name and instruction text (unique within a stage in every corpus case).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_dockapp.builds.dockerfile import Dockerfile, expand, normalize
from pytest_dockapp.builds.image import BuildSpec, read_dockerfile
from pytest_dockapp.cache.check import check_cache
from pytest_dockapp.cache.lint import lint
from pytest_dockapp.engine.client import Builder

from .corpus import CASES, ONBUILD_PARENT, ONBUILD_PARENT_DOCKERFILE, TOOLBOX_DOCKERFILE, TOOLBOX_IMAGE, Case

Outcome = dict[tuple[int, int], bool]


def _build_base(tmp: Path, tag: str, dockerfile: str, client: Any) -> None:
    import docker.errors

    try:
        client.api.inspect_image(tag)
        return
    except docker.errors.ImageNotFound:
        pass
    (tmp / "Dockerfile").write_text(textwrap.dedent(dockerfile).lstrip())
    subprocess.run(["docker", "build", "-q", "-t", tag, str(tmp)], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def corpus_bases(busybox: str, docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    _build_base(tmp_path_factory.mktemp("toolbox"), TOOLBOX_IMAGE, TOOLBOX_DOCKERFILE, docker_client)
    _build_base(tmp_path_factory.mktemp("onbuild"), ONBUILD_PARENT, ONBUILD_PARENT_DOCKERFILE, docker_client)


def _write(case: Case, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(case.dockerfile)
    for rel, text in case.files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def cli_outcome(case: Case, ctx: Path, builder: str, cli: str, client: Any) -> Outcome:
    """Change a copy of ``ctx`` as the check does, rebuild it with the plain CLI, and read which
    steps hit: the ground truth."""
    copy = ctx.parent / f"{ctx.name}-cli-{builder}"
    shutil.copytree(ctx, copy, symlinks=True)
    args = [w for k, v in case.build_args.items() for w in ("--build-arg", f"{k}={v}")]
    for item in case.change:
        m = re.match(r"--build-arg (\w+=.*)", item)
        if m:
            args += ["--build-arg", m.group(1) + "-cli"]  # a value the check's rebuild did not build either
        else:
            with open(copy / item, "a") as fh:
                fh.write(f"\n {secrets.token_hex(8)}\n")
    tag = f"dockapp-test/corpus-cli:{secrets.token_hex(6)}"
    env = {**os.environ, "DOCKER_BUILDKIT": "1" if builder == "buildkit" else "0"}
    cmd = [cli, "build", "-t", tag, *args, str(copy)]
    if builder == "buildkit":
        cmd[2:2] = ["--progress=plain"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        arg_values = dict(a.split("=", 1) for a in args[1::2])
        df = read_dockerfile(client, copy / "Dockerfile", arg_values)
        out = proc.stdout + proc.stderr
        return _read_classic(df, out) if builder == "classic" else _read_plain(df, out, arg_values)
    finally:
        client.api.remove_image(tag, force=True)
        shutil.rmtree(copy, ignore_errors=True)


def _read_classic(df: Dockerfile, out: str) -> Outcome:
    outcome: Outcome = {}
    current: Any = None
    running = False
    trigger_hits = 0
    for line in out.splitlines():
        m = re.match(r"^Step (\d+)/\d+ : ", line)
        if m:
            current = df.instructions[int(m.group(1)) - 1]
            running, trigger_hits = False, 0
            if current.keyword != "FROM":
                outcome[current.key] = False
            for trig in df.stages[current.stage].triggers if current.keyword == "FROM" else []:
                outcome[trig.key] = False  # ONBUILD triggers run inside the FROM step
        elif line.startswith(" ---> Running in"):
            running = True
        elif line == " ---> Using cache" and current is not None and not running:
            if current.keyword == "FROM":  # one line per trigger that hit, in order
                trigger_hits += 1
                outcome[df.stages[current.stage].triggers[trigger_hits - 1].key] = True
            else:
                outcome[current.key] = True
    return outcome


def _canon(text: str) -> str:
    """Instruction text as BuildKit may print it: JSON punctuation and quotes dropped, the
    keyword in capitals (instructions are case-insensitive)."""
    words = re.sub(r"[\[\]\",']", " ", text).split()
    return " ".join(words[:1]).upper() + " " + " ".join(words[1:])


def _read_plain(df: Dockerfile, out: str, args: dict[str, str]) -> Outcome:
    """BuildKit names a vertex by its text with build args expanded and JSON punctuation dropped."""
    names: dict[str, Any] = {}
    outcome: Outcome = {}
    for line in out.splitlines():
        m = re.match(r"^#(\d+) (.*)$", line)
        if not m:
            continue
        vid, rest = m.groups()
        name = re.match(r"^\[\s*(?:(\S+)\s+)?\d+/\d+\] (.*)$", rest)
        if name and vid not in names:
            label, text = name.groups()
            stage = next(s for s in df.stages if s.label == label) if label else df.stages[-1]
            defaults = {
                k: v for i in stage.instructions if i.keyword == "ARG" for k, v in [(*i.args.split("=", 1), "")[:2]]
            }
            want = _canon(normalize(text))
            matches = [
                i
                for i in stage.instructions
                if i.keyword != "FROM" and _canon(expand(i.text, {**defaults, **args})) == want
            ]
            names[vid] = matches[0] if len(matches) == 1 else None
            if names[vid] is not None:
                outcome[names[vid].key] = False
        elif rest == "CACHED" and names.get(vid) is not None:
            outcome[names[vid].key] = True
    return outcome


RUNS = [(case, builder) for builder in ("classic", "buildkit") for case in CASES if builder in case.builders]


@pytest.mark.parametrize(("case", "builder"), RUNS, ids=[f"{b}-{c.name}" for c, b in RUNS])
def test_cache_check_agrees_with_the_cli(
    case: Case, builder: str, corpus_bases: None, docker_client: Any, tmp_path: Path, buildkit_cli: str
) -> None:
    # A build-arg value no earlier run built, as for files (the check appends a random token).
    case = replace(case, change=[c.replace("{RANDOM}", secrets.token_hex(6)) for c in case.change])
    ctx = _write(case, tmp_path / "ctx")
    bk = Builder("buildkit", buildkit_cli) if builder == "buildkit" else Builder("classic")
    report = check_cache(
        docker_client,
        BuildSpec(ctx, build_args=case.build_args),
        builder=bk,
        change=case.change,
        cached=case.cached,
        strict=case.strict,
        workdir=tmp_path,
    )
    observed = {
        s.instruction.key: bool(s.cached)
        for s in report.rebuild.steps
        if s.instruction is not None and s.cached is not None
    }
    truth = cli_outcome(case, ctx, builder, buildkit_cli if builder == "buildkit" else "docker", docker_client)
    assert truth, "the CLI built no step: the case is broken"
    assert observed == truth, report.rebuild.table()
    assert report.ok == case.ok[builder], report.explain()
    assert bool(report.unprotected) == case.unprotected, report.rebuild.table()
    findings = lint(Dockerfile.read(ctx / "Dockerfile"))
    assert [f.tool for f in findings][:1] == ([case.lint] if case.lint else [])
    if case.advice:  # the fix copies exactly what the step reads, and a build proved it
        assert report.advice is not None and report.advice.copies == list(case.advice), report.explain()
        assert report.advice.verified, report.explain()
        assert "fix verified: with this order, line" in report.explain()
    print(f"corpus {case.name} {builder}: {len(truth)} steps agree; verdict {'pass' if report.ok else 'fail'}")
