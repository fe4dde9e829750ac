"""The static check for cache-hostile layer order: a broad COPY before a step that only needs
dependency manifests makes every source edit rerun it. What a step reads is :mod:`.tools`;
how to fix an order is :mod:`.advice`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from pytest_dockapp.builds.dockerfile import (
    Dockerfile,
    Instruction,
    Scope,
    Stage,
    copy_sources,
    parse_triggers,
    split_words,
)
from pytest_dockapp.cache.advice import advise
from pytest_dockapp.cache.tools import TOOLS, run_reads


@dataclass(frozen=True)
class Finding:
    """One cache-hostile pair: a broad copy and the step it makes rerun on every source edit."""

    copy: Instruction
    victim: Instruction
    tool: str
    path: str = "Dockerfile"
    fix: str = ""

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.victim.line}: `{self.victim.text}` comes after `{self.copy.text}` "
            f"({self.path}:{self.copy.line}): any source edit reruns the {self.tool} dependency install"
            + (f"\n  fix: {self.fix}" if self.fix else "")
        )


def _broad(source: str) -> bool:
    src = source.strip().lstrip("/")
    while src.startswith("./"):
        src = src[2:]
    return src in ("", ".", "*", "**")  # "*.csproj" names manifests: not broad


def _chains(df: Dockerfile) -> list[tuple[list[Instruction], bool]]:
    """Each stage's steps preceded by the steps of the stages it is built FROM (a broad COPY
    in a base stage reaches installs in its children); ONBUILD blocks count as their own chain,
    whose WORKDIRs are not known (False)."""

    def chain(stage: Stage) -> list[Instruction]:
        parent = next((o for o in df.stages[: stage.index] if o.is_named(stage.base)), None)
        return (chain(parent) if parent else []) + stage.instructions

    out = [(chain(st), True) for st in df.stages]
    onbuild = [i for i in df.instructions if i.keyword == "ONBUILD" and not i.trigger]
    if onbuild:
        parsed = parse_triggers(i.args for i in onbuild)
        steps = [
            Instruction(p.keyword, p.value, o.line, o.end_line, o.stage, p.flags, p.args, p.heredocs)
            for p, o in zip(parsed, onbuild)
        ]
        out.append((steps, False))
    return out


def lint(df: Dockerfile) -> list[Finding]:
    """Steps that rerun on every source edit although they only need dependency manifests.

    A COPY is broad for a step when it copies a whole folder (``.``, ``app/``) to the step's
    WORKDIR or above it; an install counts as done for its tool in its own WORKDIR only (a
    second ``npm install`` in /app/frontend is another install)."""
    path = str(df.path) if df.path else "Dockerfile"
    scopes = df.scopes()
    found: dict[tuple[int, int], Finding] = {}
    for steps, placed in _chains(df):
        broad: list[tuple[Instruction, str]] = []  # wide copies so far, with the folder they fill
        installed: set[tuple[str, str]] = set()  # (tool, WORKDIR) of earlier installs
        for ins in steps:
            scope = scopes.get(ins.key) or Scope({}, {}, "/", "")
            reads = run_reads(ins)
            workdir = scope.workdir
            # An ONBUILD block runs in its child's WORKDIR, unknown here: a broad copy reaches it.
            culprit = next(
                (c for c, dest in broad if not placed or (workdir + "/").startswith(dest.rstrip("/") + "/")), None
            )
            if culprit is not None:
                tools = [t for t in reads.installs if (t.name, workdir) not in installed]
                # A build that fetches its dependencies itself (go build, cargo build, mvn package)
                # downloads them again on every source edit when no earlier step did.
                tools += [t for t in reads.builds if (t.name, workdir) not in installed and t.name in _IMPLICIT]
                if tools and ins.key not in found:
                    known = ins.key in scopes and culprit.key in scopes
                    advice = advise(df, culprit, ins, scopes=scopes) if known else None
                    found[ins.key] = Finding(culprit, ins, tools[0].name, path, advice.text if advice else "")
            installed |= {(t.name, workdir) for t in reads.installs}
            dest = _wide_destination(ins, scope)
            if dest is not None:
                broad.append((ins, dest))
    return sorted(found.values(), key=lambda f: f.victim.line)


def _wide_destination(ins: Instruction, scope: Scope) -> str | None:
    """The folder in the image that a COPY/ADD of a whole context folder fills, else None."""
    sources = copy_sources(ins)
    words = split_words(ins.args)
    if not sources or len(words) < 2 or not any(_broad(s) or _folder(s) for s in sources):
        return None
    return posixpath.normpath(posixpath.join(scope.workdir, words[-1]))


#: Files without an extension that a COPY names often: not folders.
_PLAIN_FILES = {m for t in TOOLS for m in t.manifests if "." not in m} | {
    "Dockerfile",
    "Makefile",
    "Pipfile",
    "Procfile",
    "LICENSE",
    "VERSION",
}


def _folder(source: str) -> bool:
    """A source that names a folder: ``app/``, or ``app`` (no extension, no glob, no known file)."""
    name = source.rstrip("/").rsplit("/", 1)[-1]
    if source.endswith("/"):
        return True
    return not (any(c in source for c in "*?[") or "." in name or name in _PLAIN_FILES)


#: Build tools that download missing dependencies themselves.
_IMPLICIT = {"go", "cargo", "maven", "gradle", "dotnet"}
