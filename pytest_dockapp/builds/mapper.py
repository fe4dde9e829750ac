"""Mapping a builder's step names back to the Dockerfile's instructions."""

from __future__ import annotations

import re

from pytest_dockapp.builds.dockerfile import (
    VERTEX_INSTRUCTIONS,
    Dockerfile,
    Instruction,
    Stage,
    normalize,
    split_flags,
    split_words,
)


def _words(text: str) -> str:
    """An instruction's text with JSON-form punctuation dropped: BuildKit prints
    ``COPY ["a", "b"]`` as ``COPY [a b]``."""
    return " ".join(text.replace('"', " ").replace(",", " ").replace("[", " ").replace("]", " ").split())


def _same(ins: Instruction, text: str) -> bool:
    """Whether a builder's step ``text`` is ``ins`` (FROM: the builder prints the resolved
    image reference, so the keyword must do; BuildKit prints build args expanded, so a
    variable in the instruction stands for any text)."""
    keyword, _, rest = text.partition(" ")
    if keyword.upper() != ins.keyword:  # instructions are case-insensitive: `run`, `From`
        return False
    if ins.keyword == "FROM":
        return True
    text = f"{ins.keyword} {rest}"
    if ins.text == text:
        return True
    mine, theirs = _words(ins.text), _words(text)
    if mine == theirs or split_words(ins.args) == split_words(split_flags(rest)[1]):
        return True  # the same words once quotes are parsed: BuildKit prints `WORKDIR '/app'` unquoted
    if "$" not in mine:
        return False
    parts = re.split(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*", mine)
    return re.fullmatch(".*?".join(re.escape(p) for p in parts), theirs, re.DOTALL) is not None


class StepMapper:
    """Maps a builder's step names back to the Dockerfile's instructions.

    It is right by construction: a step must agree on stage, position and normalised text.
    BuildKit numbers the vertices of each stage (``[name i/n]``, ``i`` padded to the width
    of ``n``): FROM, the ONBUILD triggers it fires, then RUN, COPY, ADD and WORKDIR; a stage
    built FROM an earlier stage has no FROM vertex. The classic builder numbers every
    instruction of the file (``Step i/n``) and runs triggers inside the FROM step; podman
    numbers every instruction of each stage (``[s/k] STEP i/n``).
    """

    def __init__(self, dockerfile: Dockerfile, target: str | None):
        self.df = dockerfile
        self.target = target
        self._cursor = 0

    def classic(self, number: int, text: str) -> Instruction | None:
        want = normalize(text)
        instructions = self.df.instructions
        if 0 < number <= len(instructions) and _same(instructions[number - 1], want):
            return instructions[number - 1]
        for n, ins in enumerate(instructions[self._cursor :], self._cursor):
            if _same(ins, want) and ins.keyword != "FROM":
                self._cursor = n + 1
                return ins
        return None

    def podman(self, stage_number: int | None, number: int, text: str) -> Instruction | None:
        want = normalize(text)
        if stage_number is None:
            return self.classic(number, text) if len(self.df.stages) == 1 else None
        built = sorted(self.df.stage_dependencies(self.df.target_stage(self.target)))
        if not 0 < stage_number <= len(built):
            return None
        file_steps = [i for i in self.df.stages[built[stage_number - 1]].instructions if not i.trigger]
        if 0 < number <= len(file_steps) and _same(file_steps[number - 1], want):
            return file_steps[number - 1]
        return None

    def vertices(self, stage: Stage) -> list[Instruction]:
        """The instructions BuildKit shows as numbered vertices of ``stage``, in order."""
        derived = any(o.is_named(stage.base) for o in self.df.stages[: stage.index])
        return [
            i
            for i in stage.instructions
            if i.keyword in VERTEX_INSTRUCTIONS and not (derived and i.keyword == "FROM" and not i.trigger)
        ]

    def buildkit(self, stage_label: str | None, position: int, text: str) -> tuple[Stage | None, Instruction | None]:
        stage = self._stage_for(stage_label)
        if stage is None:
            return None, None
        vertices = self.vertices(stage)
        want = normalize(text)
        if 0 < position <= len(vertices) and _same(vertices[position - 1], want):
            return stage, vertices[position - 1]
        # Same text elsewhere in the stage (the position is off, e.g. unknown base triggers):
        # the nearest one to the position.
        matches = [(abs(n + 1 - position), ins) for n, ins in enumerate(vertices) if _same(ins, want)]
        if matches:
            return stage, min(matches, key=lambda m: m[0])[1]
        return stage, None

    def _stage_for(self, label: str | None) -> Stage | None:
        if label is None:
            return self.df.target_stage(self.target)
        for st in self.df.stages:
            if st.label.lower() == label.lower():
                return st
        return None
