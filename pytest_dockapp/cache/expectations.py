"""Which steps may miss after a change: from the Dockerfile alone, the first step that reads a
changed file (or uses a changed build arg) and every later step of its stage and of the
stages built on it; and which steps a ``cached=`` pattern names.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from pytest_dockapp.builds.dockerfile import (
    Dockerfile,
    Instruction,
    consumed_files,
    mount_specs,
    normalize,
    split_words,
)
from pytest_dockapp.core.errors import CacheMarkerUsageError

Change = Union[str, os.PathLike[str]]
ChangeSpec = Union[Sequence[Change], Callable[[Path], Any], None]
CachedPattern = Union[str, int, tuple[str, str]]


@dataclass
class Expectation:
    """Which steps may miss after a change, why each may, and which step started it.

    Keyed by :attr:`Instruction.key` (first line, trigger position): unique, and stable across
    re-parses of the same file.
    """

    may_miss: dict[tuple[int, int], str] = field(default_factory=dict)  # key -> reason
    origin: dict[tuple[int, int], Instruction] = field(default_factory=dict)  # key -> first miss of its stage
    culprit: dict[tuple[int, int], Instruction] = field(default_factory=dict)  # key -> the step the change reached

    def allows(self, ins: Instruction | None) -> bool:
        return ins is not None and ins.key in self.may_miss


def expected_misses(
    df: Dockerfile,
    changed_files: Iterable[str],
    changed_args: Iterable[str] = (),
    *,
    strict: bool = False,
    build_args: Mapping[str, str] | None = None,
) -> Expectation:
    """Compute the steps a rebuild may miss after ``changed_files`` and ``changed_args`` change.

    The first step of a stage that reads a changed file (COPY/ADD sources, ``RUN --mount=type=bind``,
    ONBUILD triggers of its base) or uses a changed build arg may miss, and so may every later
    step of that stage and of the stages built FROM it. A ``COPY --from`` (or ``RUN --mount``
    ``from=``) of a rebuilt stage may miss too, since what it copies may have changed; with
    ``strict`` it must hit: the files it copies must come out byte-identical (the cargo-chef
    and lock-file patterns), so a regression behind it is caught.
    """
    files = sorted(set(changed_files))
    args = set(changed_args)
    scopes = df.scopes(build_args)  # `COPY ${JAR_FILE} app.jar` reads what the ARG names
    exp = Expectation()
    dirty: dict[int, Instruction] = {}  # rebuilt stage -> the step the change reached first
    meta_changed = args & set(df.meta_args)
    for stage in df.stages:
        first: tuple[Instruction, str, Instruction] | None = None
        from_ins = stage.instructions[0]
        base = next((i for i in df.direct_stage_refs(stage) if df.stages[i].is_named(stage.base)), None)
        if base is not None and base in dirty:
            first = (from_ins, f"its base stage {df.stages[base].label} was rebuilt", dirty[base])
        elif any(re.search(rf"\$\{{?{re.escape(a)}\b", stage.base) for a in meta_changed):
            first = (from_ins, "its FROM uses a changed build arg", from_ins)
        declared: set[str] = set()
        for ins in stage.instructions[1:]:
            if first is not None:
                break
            if ins.keyword == "ARG":
                declared |= {w.partition("=")[0] for w in split_words(ins.args)} & args
                continue
            hit = consumed_files(ins, files, scopes[ins.key].variables)
            if hit:
                first = (ins, f"copies {_names(hit)}, which changed", ins)
                continue
            ref = ins.flags.get("from") or next((m.get("from", "") for m in mount_specs(ins) if "from" in m), "")
            source = next((i for i in dirty if df.stages[i].is_named(ref)), None) if ref else None
            if source is not None and not strict:
                first = (ins, f"copies from stage {ref}, which was rebuilt", dirty[source])
                continue
            used = {a for a in declared if ins.keyword == "RUN" or re.search(rf"\$\{{?{re.escape(a)}\b", ins.value)}
            if used:
                first = (ins, "build arg " + ", ".join(sorted(used)) + " changed", ins)
        if first is None:
            continue
        origin, reason, culprit = first
        dirty[stage.index] = culprit
        started = False
        for ins in stage.instructions:
            if ins is origin:
                started = True
                exp.may_miss[ins.key] = reason
            elif started:
                exp.may_miss[ins.key] = f"follows {origin.where} ({_short(origin)}), which missed"
            if started:
                exp.origin[ins.key] = origin
                exp.culprit[ins.key] = culprit
    return exp


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _short(ins: Instruction) -> str:
    text = ins.text
    return text if len(text) <= 40 else text[:37] + "..."


# -- cached= patterns ---------------------------------------------------------------------------


def match_pattern(df: Dockerfile, pattern: CachedPattern) -> list[Instruction]:
    """Instructions a ``cached=`` pattern selects: text prefix or glob, line, or (stage, text)."""
    if isinstance(pattern, bool):
        raise CacheMarkerUsageError(f"cached pattern {pattern!r} is not a text, a line number or (stage, text)")
    if isinstance(pattern, int):
        return [i for i in df.steps() if i.line <= pattern <= i.end_line and not i.trigger]
    stage_ref: str | None = None
    text: Any = pattern
    if isinstance(pattern, tuple) and len(pattern) == 2:
        stage_ref, text = pattern
    if not isinstance(text, str):
        raise CacheMarkerUsageError(
            f"cached pattern {pattern!r} is not a text, a line number or (stage, text)",
            hint='e.g. cached=["RUN npm install", 12, ("build", "RUN go mod download")]',
        )
    want = normalize(text).lower()
    out = []
    for ins in df.steps():
        if stage_ref is not None:
            st = df.stages[ins.stage]
            if not (st.label.lower() == str(stage_ref).lower() or str(ins.stage) == str(stage_ref)):
                continue
        have = ins.text.lower()
        if (any(ch in want for ch in "*?[") and fnmatch.fnmatchcase(have, want)) or have.startswith(want):
            out.append(ins)
    return out
