"""Building images with either builder, and the per-step build record.

The classic builder is driven through the engine API (docker SDK); BuildKit
through the docker CLI, whose ``--progress=plain`` or ``--progress=rawjson``
output is parsed. Both produce the same :class:`BuildRecord`: one
:class:`BuildStep` per instruction the builder ran, mapped to its Dockerfile line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cleanup import PREFIX as LABEL_PREFIX
from .cleanup import build_dir_prefix, sweep_build_dirs
from .dockerfile import VERTEX_INSTRUCTIONS, Dockerfile, Instruction, Stage, normalize, split_flags, split_words
from .engine import BUILD_TIMEOUT, ENGINE_WATCH_EVERY, Builder, is_engine_failure, ping
from .errors import BaseImageUnavailableError, BuildError, ConfigurationError, tail
from .redact import looks_secret, mask_values, redact, secret_values

if TYPE_CHECKING:
    import docker


@dataclass
class BuildStep:
    """One instruction as the builder ran it."""

    index: int
    text: str
    instruction: Instruction | None = None
    stage: str | None = None
    cached: bool | None = None
    seconds: float = 0.0
    output: list[str] = field(default_factory=list)
    failed: bool = False

    def __repr__(self) -> str:
        # Short: pytest -vv prints reprs of assertion operands, in the terminal and JUnit XML.
        return f"BuildStep(index={self.index}, line={self.line}, cached={self.cached}, text={self.text[:60]!r})"

    @property
    def line(self) -> int | None:
        """The Dockerfile line the instruction starts on."""
        return self.instruction.line if self.instruction else None

    @property
    def keyword(self) -> str:
        return self.text.split(" ", 1)[0].upper()

    @property
    def cacheable(self) -> bool:
        """Whether a cache hit or miss means anything for this step (FROM has no cache)."""
        return self.keyword != "FROM" and not (
            self.keyword == "ARG" and self.instruction is not None and self.instruction.stage < 0
        )


@dataclass
class BuildRecord:
    """What one build did, step by step."""

    image_id: str
    tag: str | None
    builder: str
    steps: list[BuildStep]
    seconds: float
    context: Path
    dockerfile: Path
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    log: list[str] = field(default_factory=list)
    reused: bool = False  # not rebuilt: nothing it is built from changed since its last build
    built_at: float = field(default_factory=time.time)  # when the build that made the image ran
    reuse_seconds: float | None = None  # when reused: how long the check that nothing changed took
    #: The command that builds as this build did, for a CI stage to run first (secret-looking
    #: build args by name only: the CLI then takes their values from the environment).
    command: str = ""

    def __repr__(self) -> str:
        return (
            f"BuildRecord(tag={self.tag!r}, builder={self.builder!r}, steps={len(self.steps)}, "
            f"cached={len(self.hits)}/{len(self.cacheable_steps)}, reused={self.reused})"
        )

    @property
    def cacheable_steps(self) -> list[BuildStep]:
        return [s for s in self.steps if s.cacheable and s.cached is not None]

    @property
    def hits(self) -> list[BuildStep]:
        return [s for s in self.cacheable_steps if s.cached]

    @property
    def misses(self) -> list[BuildStep]:
        return [s for s in self.cacheable_steps if not s.cached]

    @property
    def fully_cached(self) -> bool:
        return not self.misses

    def assert_fully_cached(self) -> None:
        """:class:`CacheRegressionError` listing the missed steps, unless every step hit (or the
        image was reused: nothing was rebuilt). What ``--dockapp-expect-cached`` checks."""
        if self.reused or not self.misses:
            return
        from .errors import CacheRegressionError

        marks = {s.index: "<-- MISS" for s in self.misses}
        raise CacheRegressionError(
            f"--dockapp-expect-cached: the session build of {self.dockerfile} missed the layer cache at "
            f"{len(self.misses)} step(s); the image was expected to come from an earlier build "
            f"(a CI build stage) with the same context, Dockerfile and build args\n\n{self.table(marks)}",
            hint=f"this session built with the {self.builder} builder; build the image in the earlier stage with "
            f"exactly that builder and these settings: {self.command or 'docker build'} (or drop "
            "--dockapp-expect-cached)",
        )

    def summary(self) -> str:
        """``"3.21s, 4/6 steps cached"``: of the build that made the image."""
        return f"{self.seconds:.2f}s, {len(self.hits)}/{len(self.cacheable_steps)} steps cached"

    def to_json(self) -> dict[str, Any]:
        """What a later session needs to show this build's record when it reuses the image."""
        return {
            "image_id": self.image_id,
            "tag": self.tag,
            "builder": self.builder,
            "seconds": self.seconds,
            "built_at": self.built_at,
            "target": self.target,
            "build_args": self.build_args,  # already masked
            "command": self.command,  # secret values never in it
            "steps": [
                {
                    "index": s.index,
                    "text": s.text,
                    "line": s.line,
                    "trigger": s.instruction.trigger if s.instruction else 0,
                    "stage": s.stage,
                    "cached": s.cached,
                    "seconds": s.seconds,
                }
                for s in self.steps
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], context: Path, dockerfile: Dockerfile) -> BuildRecord:
        """The record of an earlier build of ``dockerfile`` (unchanged since: its bytes are part of
        the reuse fingerprint), marked as reused. Raises KeyError or TypeError when damaged."""
        by_key = {ins.key: ins for ins in dockerfile.steps()}
        steps = [
            BuildStep(
                index=int(s["index"]),
                text=str(s["text"]),
                instruction=by_key.get((s["line"], s.get("trigger", 0))) if s["line"] is not None else None,
                stage=s["stage"],
                cached=s["cached"],
                seconds=float(s["seconds"]),
            )
            for s in data["steps"]
        ]
        assert dockerfile.path is not None
        return cls(
            image_id=str(data["image_id"]),
            tag=data["tag"],
            builder=str(data["builder"]),
            steps=steps,
            seconds=float(data["seconds"]),
            context=context,
            dockerfile=dockerfile.path,
            build_args=dict(data["build_args"]),
            target=data["target"],
            reused=True,
            built_at=float(data["built_at"]),
            command=str(data.get("command", "")),
        )

    def table(self, mark: Mapping[int, str] | None = None) -> str:
        """The steps as a fixed-width table; ``mark`` adds a note per step index."""
        rows = [("#", "stage", "line", "instruction", "cache", "secs", "")]
        for s in self.steps:
            cache = {True: "HIT", False: "MISS", None: "(dedup)"}[s.cached] if s.cacheable else "-"
            text = s.text if len(s.text) <= 60 else s.text[:57] + "..."
            rows.append(
                (
                    str(s.index),
                    s.stage or "",
                    str(s.line or "?"),
                    text,
                    cache,
                    f"{s.seconds:.2f}",
                    (mark or {}).get(s.index, ""),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        return "\n".join(
            "  ".join(cell.ljust(widths[i]) if i < 6 else cell for i, cell in enumerate(r)).rstrip() for r in rows
        )


@dataclass(frozen=True)
class BuildEvent:
    """For progress display: a step started (``output`` empty), or the running step printed a line."""

    text: str
    position: str
    elapsed: float
    output: str = ""


ProgressCallback = Callable[[BuildEvent], None]


# -- step mapping -------------------------------------------------------------------------------


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


# -- classic builder and podman (engine API stream) ---------------------------------------------

_CLASSIC_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$", re.DOTALL)
_CLASSIC_CACHE = " ---> Using cache"
_CLASSIC_META = re.compile(r"^ ---> (?:Running in [0-9a-f]+|[0-9a-f]{12})$|^Removing intermediate container")
_CLASSIC_TRIGGERS = re.compile(r"^# Executing (\d+) build triggers?")
# Podman (buildah) through the Docker-compatible API: "[1/2] STEP 3/5: RUN make", then
# "--> Using cache <id>" for a hit, and "--> <id>" when a layer is committed.
_PODMAN_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\] )?STEP (\d+)/(\d+): (.*)$", re.DOTALL)
_PODMAN_CACHE = re.compile(r"^--> Using cache [0-9a-f]+$")
_PODMAN_META = re.compile(r"^--> [0-9a-f]+$|^(?:\[\d+/\d+\] )?COMMIT\b|^Successfully tagged |^[0-9a-f]{64}$")


class ClassicParser:
    """Folds the classic builder's JSON stream (or podman's, through the same API) into steps.

    A hit is the builder's own ``---> Using cache`` line, matched exactly: a step's
    output can say "Using cache" too (pip prints "Using cached ...").
    """

    def __init__(
        self,
        dockerfile: Dockerfile,
        target: str | None = None,
        on_event: ProgressCallback | None = None,
        hidden_steps: int = 0,
    ):
        self.mapper = StepMapper(dockerfile, target)
        self.hidden_steps = hidden_steps  # the LABEL steps the engine appends, one per build label
        self.steps: list[BuildStep] = []
        self.log: list[str] = []
        self.image_id = ""
        self.error: str | None = None
        self._on_event = on_event
        self._started = time.perf_counter()
        self._step_started = self._started
        self._partial = ""
        self._ignore = False
        self._running = False
        self._triggers: list[Instruction] = []  # triggers of the FROM step being run
        self._trigger_hits = 0

    def feed(self, chunk: Mapping[str, Any]) -> None:
        if "error" in chunk or "errorDetail" in chunk:
            detail = chunk.get("errorDetail") or {}
            self.error = str(chunk.get("error") or detail.get("message") or "build failed")
            if self.steps:
                self.steps[-1].failed = True
            self.log.append(self.error)
            return
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            self.image_id = str(aux["ID"])
        stream = chunk.get("stream")
        if not isinstance(stream, str):
            return
        self._partial += stream
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        if not line:
            return
        self.log.append(line)
        now = time.perf_counter()
        m = _CLASSIC_STEP.match(line)
        p = None if m else _PODMAN_STEP.match(line)
        if m or p:
            self._close(now)
            if m:
                number, total, text = int(m.group(1)), m.group(2), m.group(3).strip()
                ins = self.mapper.classic(number, text)
                # "8/9" for the last step of eight, when the ninth is our label: count the user's steps.
                position = f"{number}/{max(number, int(total) - self.hidden_steps)}"
            else:
                assert p is not None
                stage_no = int(p.group(1)) if p.group(1) else None
                number, total, text = int(p.group(3)), p.group(4), p.group(5).strip()
                ins = self.mapper.podman(stage_no, number, text)
                position = (f"[{p.group(1)}/{p.group(2)}] " if p.group(1) else "") + f"{number}/{total}"
            if ins is None and text.startswith("LABEL " + LABEL_PREFIX):
                # The engine API appends one LABEL step per build label: not the user's Dockerfile.
                self._ignore = True
                return
            self._ignore = False
            self._add(BuildStep(index=number, text=normalize(text), instruction=ins), now)
            self._triggers = self.mapper.df.stages[ins.stage].triggers if ins and ins.keyword == "FROM" else []
            if self._on_event:
                self._on_event(BuildEvent(self.steps[-1].text, position, now - self._started))
            return
        if not self.steps or self._ignore:
            return
        step = self.steps[-1]
        if self._triggers and _CLASSIC_TRIGGERS.match(line):
            self._trigger_hits = 0
            return
        if line.startswith((" ---> Running in ", "--> Running in ")):
            self._running = True  # the step executes: whatever it prints cannot be the builder's cache line
        if (line == _CLASSIC_CACHE or _PODMAN_CACHE.match(line)) and not self._running:
            if self._triggers and step.keyword == "FROM":
                self._trigger_hits += 1  # one line per trigger that hit, in order
            else:
                step.cached = True
        elif not (_CLASSIC_META.match(line) or _PODMAN_META.match(line) or line.startswith("Successfully built")):
            step.output.append(line)
            if self._on_event:
                self._on_event(BuildEvent(step.text, "", time.perf_counter() - self._started, output=line))

    def _add(self, step: BuildStep, now: float) -> None:
        ins = step.instruction
        if ins is not None and ins.stage >= 0:
            step.stage = self.mapper.df.stages[ins.stage].label
        # The classic builder reports no outcome for FROM or meta ARGs; a step counts as a
        # miss until the builder says it used the cache.
        step.cached = None if not step.cacheable else False
        self.steps.append(step)
        self._step_started = now
        self._running = False

    def result(self) -> list[BuildStep]:
        for n, step in enumerate(self.steps, 1):
            step.index = n  # triggers run inside the FROM step: number the record's rows anew
        return self.steps

    def _close(self, now: float) -> None:
        if self.steps and not self._ignore:
            self.steps[-1].seconds = now - self._step_started
        if self._triggers:
            # Hits come first and stop at the first miss (a miss changes every later parent).
            owner = self.steps[-1]
            for n, ins in enumerate(self._triggers):
                trig = BuildStep(index=0, text=ins.text, instruction=ins, stage=owner.stage)
                trig.cached = n < self._trigger_hits
                self.steps.append(trig)
            self._triggers, self._trigger_hits = [], 0

    def finish(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self._close(time.perf_counter())


# -- BuildKit (CLI --progress=plain) ------------------------------------------------------------

_PLAIN = re.compile(r"^#(\d+) (.*)$")
# "[build 2/5] RUN make", "[ 2/10] COPY . .", "[child  1/10] RUN x": the position is padded.
_PLAIN_NAME = re.compile(r"^\[\s*(?:(\S+)\s+)?(\d+)/(\d+)\] (.*)$", re.DOTALL)
_PLAIN_DONE = re.compile(r"^DONE (\d+(?:\.\d+)?)s$")
_PLAIN_OUTPUT = re.compile(r"^\d+(?:\.\d+)? (.*)$")


class _VertexFolder:
    """Shared by both BuildKit parsers: vertices folded into steps by name."""

    def __init__(self, dockerfile: Dockerfile, target: str | None = None, on_event: ProgressCallback | None = None):
        self.mapper = StepMapper(dockerfile, target)
        self.by_key: dict[str, BuildStep] = {}
        self.order: list[str] = []
        self.log: list[str] = []
        self.error: str | None = None
        self._on_event = on_event
        self._started = time.perf_counter()

    def vertex(self, key: str, name: str) -> BuildStep | None:
        """The step for vertex ``key`` named ``name`` (None for internal vertices)."""
        if key in self.by_key:
            return self.by_key[key]
        m = _PLAIN_NAME.match(name)
        if not m:
            return None
        stage_label, pos, total, text = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        stage, ins = self.mapper.buildkit(stage_label, pos, text)
        step = BuildStep(index=0, text=normalize(text), instruction=ins, stage=stage.label if stage else stage_label)
        self.by_key[key] = step
        self.order.append(key)
        if self._on_event:
            where = f"{stage_label + ' ' if stage_label else ''}{pos}/{total}"
            self._on_event(BuildEvent(step.text, where, time.perf_counter() - self._started))
        return step

    def printed(self, step: BuildStep, line: str) -> None:
        if self._on_event and line.strip():
            self._on_event(BuildEvent(step.text, "", time.perf_counter() - self._started, output=line))

    def result(self) -> list[BuildStep]:
        """Steps in build order; an instruction BuildKit merged with an identical one (same
        vertex digest, e.g. the same WORKDIR on the same base in two stages) shows cached=None."""
        seen = {step.instruction.key: step for step in self.by_key.values() if step.instruction is not None}
        out: list[BuildStep] = []
        df = self.mapper.df
        built_stages = df.stage_dependencies(df.target_stage(self.mapper.target))
        for stage in df.stages:
            if stage.index not in built_stages:
                continue  # BuildKit skips stages the target does not need
            for ins in self.mapper.vertices(stage):
                step = seen.get(ins.key)
                if step is None:
                    step = BuildStep(index=0, text=ins.text, instruction=ins, stage=stage.label, cached=None)
                out.append(step)
        out += [self.by_key[k] for k in self.order if self.by_key[k].instruction is None]
        for n, step in enumerate(out, 1):
            step.index = n
            if step.keyword == "FROM":
                step.cached = None
        return out


class PlainParser(_VertexFolder):
    """Parses ``docker build --progress=plain`` (``#N [i/n] INSTR``, ``#N CACHED``)."""

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if not line:
            return
        self.log.append(line)
        m = _PLAIN.match(line)
        if not m:
            if line.startswith(("error:", "ERROR:", "failed to solve")):
                self.error = line
            return
        key, rest = m.group(1), m.group(2)
        if key not in self.by_key:
            if rest.startswith("["):
                self.vertex(key, rest)
            return
        step = self.by_key[key]
        if rest == "CACHED":
            step.cached = True
            return
        done = _PLAIN_DONE.match(rest)
        if done:
            step.seconds = float(done.group(1))
            if step.cached is None:
                step.cached = False
            return
        if rest.startswith("ERROR"):
            step.failed = True
            step.cached = False
            step.output.append(rest)
            self.error = rest
            return
        out = _PLAIN_OUTPUT.match(rest)
        if out:
            step.output.append(out.group(1))
            self.printed(step, out.group(1))

    def finish(self) -> None:
        pass


class RawJsonParser(_VertexFolder):
    """Parses ``--progress=rawjson`` (buildx >= 0.12): vertices folded by digest, last wins."""

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            status = json.loads(line)
        except ValueError:
            self.log.append(line)
            if line.startswith(("error:", "ERROR:")):
                self.error = line
            return
        for v in status.get("vertexes") or []:
            step = self.vertex(v.get("digest", ""), v.get("name", ""))
            if step is None:
                continue
            if v.get("cached"):
                step.cached = True
            elif v.get("completed") and step.cached is None:
                step.cached = False
            if v.get("started") and v.get("completed"):
                step.seconds = _rfc3339_delta(v["started"], v["completed"])
            if v.get("error"):
                step.failed, step.cached = True, False
                step.output.append(str(v["error"]))
                self.error = str(v["error"])
        for entry in status.get("logs") or []:
            step = self.by_key.get(entry.get("vertex", ""))
            data = base64.b64decode(entry.get("data", "")).decode("utf-8", "replace")
            self.log.extend(data.splitlines())
            if step is not None:
                step.output.extend(data.splitlines())
                for text in data.splitlines()[-1:]:
                    self.printed(step, text)

    def finish(self) -> None:
        pass


def _rfc3339_delta(start: str, end: str) -> float:
    from datetime import datetime

    def parse(ts: str) -> datetime:
        ts = re.sub(r"(\.\d{6})\d*", r"\1", ts.replace("Z", "+00:00"))
        return datetime.fromisoformat(ts)

    try:
        return max(0.0, (parse(end) - parse(start)).total_seconds())
    except ValueError:
        return 0.0


# -- the build ----------------------------------------------------------------------------------


def spec_digest(
    context: Path, dockerfile: Path, target: str | None, build_args: Mapping[str, str], builder: str
) -> str:
    """A digest of a whole build spec. Build-arg values enter only as their own SHA-256, so a
    secret is never written anywhere in clear, not even inside a short hash input."""
    args = sorted((k, hashlib.sha256(v.encode()).hexdigest()) for k, v in build_args.items())
    raw = json.dumps([str(context), str(dockerfile), target, args, builder])
    return hashlib.sha256(raw.encode()).hexdigest()


def default_tag(
    context: Path, dockerfile: Path, target: str | None, build_args: Mapping[str, str], builder: str
) -> str:
    """A stable tag per build spec (context, Dockerfile, target, build args, builder): reruns of
    the same spec replace it, and no two specs share it. Apps run by image ID all the same."""
    slug = re.sub(r"[^a-z0-9]+", "-", context.name.lower()).strip("-") or "app"
    return f"pytest-dockapp/{slug}:{spec_digest(context, dockerfile, target, build_args, builder)[:16]}"


def resolve_paths(context: str | os.PathLike[str], dockerfile: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    """Absolute context folder and Dockerfile, or a :class:`ConfigurationError` naming the fix."""
    ctx = Path(context).expanduser().resolve()
    if not ctx.is_dir():
        raise ConfigurationError(
            f"build context {ctx} is not a directory" + ("" if ctx.exists() else " (it does not exist)"),
            hint="set dockapp_context (ini, --dockapp-context or a dockapp_context fixture) to your app's folder",
        )
    df = Path(dockerfile) if dockerfile else Path("Dockerfile")
    df = (df if df.is_absolute() else ctx / df).resolve()
    return ctx, df


def build_image(
    client: docker.DockerClient,
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str] | None = None,
    *,
    builder: Builder,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    tag: str | None = None,
    labels: Mapping[str, str] | None = None,
    on_event: ProgressCallback | None = None,
    secrets: Mapping[str, str] | None = None,
) -> BuildRecord:
    """Build an image and return its :class:`BuildRecord`.

    ``secrets`` are BuildKit build secrets, ``{id: source}``: a file path, or the name of an
    environment variable; a step reads one with ``RUN --mount=type=secret,id=<id>``, and it is
    never stored in the image. Raises :class:`BuildError` (or :class:`BaseImageUnavailableError`)
    with the failing step, its Dockerfile line and output tail.
    """
    if secrets and builder.name != "buildkit":
        raise ConfigurationError(
            f"build secrets ({', '.join(sorted(secrets))}) need BuildKit, and the builder in use is classic",
            hint="run with --dockapp-builder buildkit (a docker CLI with buildx, or one older than 23.0)",
        )
    ctx, df_path = resolve_paths(context, dockerfile)
    args = dict(build_args or {})
    df = read_dockerfile(client, df_path, args)
    if target:
        df.stage(target)  # fails early, naming the stages there are
    tag = tag or default_tag(ctx, df_path, target, args, builder.name)
    # Every line the builder prints is masked before anything reads it: progress, the step
    # record (kept in builds.json), errors and reprs all come from the parser (trust III, 4-6).
    known = secret_values(args)
    for sid, source in (secrets or {}).items():
        with contextlib.suppress(ConfigurationError):  # a bad source is reported by the build
            known.add(secret_value(sid, source).strip())

    def mask(text: str) -> str:
        return mask_values(text, known)

    start = time.perf_counter()
    parser: ClassicParser | PlainParser | RawJsonParser
    if builder.name == "classic":
        parser = ClassicParser(df, target, on_event, hidden_steps=len(labels or {}))
        _classic(client, ctx, df_path, args, target, tag, labels or {}, parser, mask)
        image_id = parser.image_id
    else:
        parser = (RawJsonParser if builder.rawjson else PlainParser)(df, target, on_event)
        with EngineWatch(client) as watch:
            image_id = _buildkit(builder, ctx, df_path, args, target, tag, labels or {}, parser, secrets or {}, mask)
        if watch.failure is not None:
            raise watch.failure  # engine_phase names the engine and the phase
    parser.finish()
    steps = parser.result()
    log = parser.log
    if parser.error is not None:
        parser.error = mask(parser.error)
    record = BuildRecord(
        image_id=image_id,
        tag=tag,
        builder=builder.name,
        steps=steps,
        seconds=time.perf_counter() - start,
        context=ctx,
        dockerfile=df_path,
        build_args=redact(args),
        target=target,
        log=log,
        command=reproduce_command(builder, ctx, df_path, args, target),
    )
    if parser.error is not None or not image_id:
        raise _build_failure(client, df, record, parser.error or "the builder reported no image", args, builder)
    if not any(s.instruction is not None for s in steps) and _has_steps(parser.mapper, target, builder):
        raise BuildError(
            f"could not read what the {builder.describe()} builder did: no step of {df_path} was recognised "
            "in its output, so no cache hit or miss can be known",
            evidence=tail(log, 20),
            evidence_title="build output",
            hint="this engine's build output has a form pytest-dockapp does not know; please report it with "
            "this output, and use --dockapp-builder classic or buildkit meanwhile",
        )
    return record


def read_dockerfile(client: docker.DockerClient, path: Path, build_args: Mapping[str, str]) -> Dockerfile:
    """The Dockerfile at ``path`` with the ONBUILD triggers its base images fire (read from the
    engine: ``Config.OnBuild``) inserted as steps of the stages that fire them."""
    import docker.errors

    df = Dockerfile.read(path)
    triggers: dict[str, list[str]] = {}
    for _, image in df.base_images(build_args):
        try:
            triggers[image] = list((client.api.inspect_image(image).get("Config") or {}).get("OnBuild") or [])
        except docker.errors.APIError:
            continue  # not on the engine: the build pulls it or says it is missing
    return df.with_triggers(triggers, build_args)


def _has_steps(mapper: StepMapper, target: str | None, builder: Builder) -> bool:
    """Whether the builder prints at least one step for this Dockerfile (BuildKit prints
    nothing for ``FROM scratch`` and for instructions without a vertex, like CMD)."""
    df = mapper.df
    if builder.name == "classic":
        return bool(df.instructions)
    stages = df.stage_dependencies(df.target_stage(target))
    return any(
        not (i.keyword == "FROM" and df.stages[i.stage].base.lower() == "scratch")
        for st in stages
        for i in mapper.vertices(df.stages[st])
    )


def feature_needs(df: Dockerfile, builder: str) -> list[str]:
    """What in ``df`` the builder in use may not support: one sentence per feature."""
    uses: list[tuple[str, bool]] = []
    steps = df.steps()
    uses.append(("heredocs (`<<EOF`)", any(i.heredocs for i in steps)))
    uses.append(("`COPY --link`", any("link" in i.flags for i in steps)))
    uses.append(("`COPY --chmod`", any("chmod" in i.flags for i in steps)))
    uses.append(("`RUN --mount`", any(i.keyword == "RUN" and "mount" in i.flags for i in steps)))
    platform_args = ("BUILDPLATFORM", "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "BUILDOS", "BUILDARCH")
    uses.append(
        ("automatic platform args (`$BUILDPLATFORM`, ...)", any(a in i.value for i in steps for a in platform_args))
    )
    used = [name for name, on in uses if on]
    if builder == "classic":
        return [
            f"this Dockerfile uses {name}, which needs BuildKit (builder in use: classic): run with "
            "--dockapp-builder buildkit"
            for name in used
        ]
    out = []
    if df.syntax:
        out.append(
            f"the `# syntax={df.syntax}` line makes BuildKit load that frontend image, which must be on "
            "the engine or pullable: load it, or remove the line to use the engine's built-in frontend"
        )
    newer = [n for n in used if n in ("heredocs (`<<EOF`)", "`COPY --link`")]
    out += [
        f"this Dockerfile uses {name}, which needs Dockerfile frontend 1.4+ (builder in use: BuildKit, whose "
        "built-in frontend on engines before 23.0 is older): use a newer engine, or a `# syntax=` frontend "
        "image that is on the engine"
        for name in newer
    ]
    return out


def _classic(
    client: docker.DockerClient,
    ctx: Path,
    df_path: Path,
    args: dict[str, str],
    target: str | None,
    tag: str,
    labels: Mapping[str, str],
    parser: ClassicParser,
    mask: Callable[[str], str],
) -> None:
    import docker.errors

    from .context import TarStream

    archive = TarStream(ctx, df_path)
    try:
        stream: Iterable[Mapping[str, Any]] = client.api.build(
            fileobj=archive.chunks(),
            custom_context=True,
            dockerfile=archive.dockerfile_name,
            buildargs=args,
            target=target,
            tag=tag,
            labels=dict(labels),
            rm=True,
            forcerm=True,
            decode=True,
            timeout=BUILD_TIMEOUT,  # a step may print nothing for longer than an ordinary call may take
        )
        for chunk in stream:
            parser.feed(_masked(chunk, mask))
    except docker.errors.APIError as exc:
        parser.error = str(exc.explanation or exc)
    finally:
        archive.close()
    if archive.error is not None:
        parser.error = f"could not read the build context {ctx}: {archive.error}"


def _buildkit(
    builder: Builder,
    ctx: Path,
    df_path: Path,
    args: dict[str, str],
    target: str | None,
    tag: str,
    labels: Mapping[str, str],
    parser: PlainParser | RawJsonParser,
    secrets: Mapping[str, str],
    mask: Callable[[str], str],
) -> str:
    assert builder.cli is not None
    sweep_build_dirs()  # a killed run's folder, its secret file included
    with tempfile.TemporaryDirectory(prefix=build_dir_prefix()) as tmp:
        iidfile = Path(tmp) / "iid"
        secret_args = []
        for sid, source in secrets.items():
            # The 20.10 CLI reads secrets from files only: an environment variable's value goes
            # to a file only we can read, in a folder removed with the build.
            path = secret_file(sid, source, Path(tmp))
            secret_args += ["--secret", f"id={sid},src={path}"]
        cmd = [
            builder.cli,
            "build",
            "--progress=" + ("rawjson" if builder.rawjson else "plain"),
            "-f",
            str(df_path),
            "-t",
            tag,
            "--iidfile",
            str(iidfile),
        ]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, value in labels.items():
            cmd += ["--label", f"{key}={value}"]
        if target:
            cmd += ["--target", target]
        cmd += secret_args
        if builder.buildx:
            cmd.append("--load")
        cmd.append(str(ctx))
        env = {**(builder.endpoint.cli_env() if builder.endpoint else os.environ), "DOCKER_BUILDKIT": "1"}
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace", bufsize=1
        )
        RUNNING_BUILDS.add(proc)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                parser.feed(mask(line))
        except BaseException:
            _stop(proc)  # interrupted (Ctrl-C, SIGTERM): do not wait for the build to finish
            raise
        finally:
            code = proc.wait()
            RUNNING_BUILDS.discard(proc)
        if code != 0 and parser.error is None:
            parser.error = f"docker build exited with code {code}"
        return iidfile.read_text().strip() if iidfile.exists() else ""


def _masked(chunk: Any, mask: Callable[[str], str]) -> Any:
    """``chunk`` of the engine's JSON build stream with every string in it masked."""
    if isinstance(chunk, str):
        return mask(chunk)
    if isinstance(chunk, Mapping):
        return {key: _masked(value, mask) for key, value in chunk.items()}
    if isinstance(chunk, list):
        return [_masked(value, mask) for value in chunk]
    return chunk


def reproduce_command(builder: Builder, ctx: Path, df_path: Path, args: Mapping[str, str], target: str | None) -> str:
    """The shell command that builds as the plugin does, with the same builder: what a CI stage
    runs before ``--dockapp-expect-cached`` (trust III, 14: a CLI that built classic while the
    plugin built with BuildKit missed every step). Secret-looking build args are passed by name."""
    import shlex

    if builder.name == "classic":
        cmd = ["DOCKER_BUILDKIT=0", builder.cli or "docker", "build"]
    elif builder.buildx:
        cmd = [builder.cli or "docker", "buildx", "build", "--load"]
    else:
        cmd = ["DOCKER_BUILDKIT=1", builder.cli or "docker", "build"]
    cmd += ["-f", str(df_path)]
    for key, value in args.items():
        cmd += ["--build-arg", key if looks_secret(key) else f"{key}={value}"]
    if target:
        cmd += ["--target", target]
    cmd.append(str(ctx))
    return " ".join(c if c.startswith(("DOCKER_BUILDKIT=",)) else shlex.quote(c) for c in cmd)


def _from_variables(base: str) -> list[str]:
    """The variables a FROM's image is spelled with (``${BASE_IMAGE}`` gives ``BASE_IMAGE``)."""
    return [m.group(1) or m.group(2) for m in re.finditer(r"\$\{(\w+)[^}]*\}|\$(\w+)", base)]


class EngineWatch:
    """Pings the engine while a BuildKit CLI build runs: the CLI waits forever on a frozen engine
    (trust III: `still running ... (572s)`). On a failed ping the builds are stopped, and
    :attr:`failure` says why, within ``CALL_TIMEOUT + every`` seconds of the freeze."""

    def __init__(self, client: docker.DockerClient, every: float = ENGINE_WATCH_EVERY):
        self.client = client
        self.every = every
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dockapp-engine-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                ping(self.client)
            except Exception as exc:
                if is_engine_failure(exc) and not self._stop.is_set():
                    self.failure = exc
                    stop_running_builds()
                    return

    def __enter__(self) -> EngineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


#: The BuildKit CLI builds running now, in any thread: a build started in the background (at
#: collection) is stopped by :func:`stop_running_builds` when the session ends early.
RUNNING_BUILDS: set[subprocess.Popen[str]] = set()


#: Seconds a terminated CLI build gets before it is killed: on a frozen engine the CLI ignores
#: SIGTERM (measured: still running 10 s after it), since it waits to cancel the build there.
STOP_GRACE = 5.0


def stop_running_builds() -> None:
    """Terminate every BuildKit CLI build still running (the session is ending, or the engine
    stopped answering), and kill those still running :data:`STOP_GRACE` seconds later."""
    for proc in list(RUNNING_BUILDS):
        _stop(proc)


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        proc.terminate()
    timer = threading.Timer(STOP_GRACE, _kill, args=(proc,))
    timer.daemon = True
    timer.start()


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()


def secret_value(sid: str, source: str) -> str:
    """The value of build secret ``sid``: the file ``source``, else the environment variable."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text()
    if source in os.environ:
        return os.environ[source]
    raise ConfigurationError(
        f"build secret {sid!r}: {source!r} is neither a file nor a set environment variable",
        hint="give a file path or the name of an environment variable, e.g. --dockapp-secret npm_token=NPM_TOKEN",
    )


def secret_file(sid: str, source: str, folder: Path) -> Path:
    """A file holding build secret ``sid`` (``source`` itself when it is a file)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    value = secret_value(sid, source)
    out = folder / f"secret-{hashlib.sha256(sid.encode()).hexdigest()[:12]}"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return out


def _build_failure(
    client: docker.DockerClient,
    df: Dockerfile,
    record: BuildRecord,
    error: str,
    args: Mapping[str, str],
    builder: Builder,
) -> BuildError:
    import docker.errors

    missing = []
    for stage, image in df.base_images(args):
        try:
            client.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            missing.append((stage, image))
        except docker.errors.APIError:
            pass
    failed = next((s for s in record.steps if s.failed), None)
    if missing and (failed is None or failed.keyword == "FROM"):
        stage, image = missing[0]
        passed = [name for name in _from_variables(stage.base) if name in args]
        if passed:
            # The user already chose the base through a build arg: telling them to pass one is no help.
            hint = (
                f"the build arg {passed[0]}={args[passed[0]]} names an image this engine does not have: "
                "build or load it there (docker build / docker load / docker import), or pass another local image"
            )
        else:
            hint = (
                "build or load the base locally (docker build / docker load / docker import), "
                "or make the Dockerfile take `ARG BASE_IMAGE=...` before `FROM ${BASE_IMAGE}` and pass "
                "--dockapp-build-arg BASE_IMAGE=<a local image>"
            )
        return BaseImageUnavailableError(
            f"base image {image!r} (FROM at {df.path}:{stage.line}) is not on the engine and could not be pulled",
            evidence=tail(record.log, 8),
            evidence_title="build output",
            hint=hint,
        )
    step = failed or (record.steps[-1] if record.steps else None)
    if step is not None:
        where = f"{df.path}:{step.line}" if step.line else str(df.path)
        what = f"build failed at step {step.index} ({where}): {step.text}\n{error}"
        evidence = tail(step.output or record.log, 20)
    else:
        what = f"build of {record.context} failed: {error}"
        evidence = tail(record.log, 20)
    needs = feature_needs(df, builder.name)
    return BuildError(
        what,
        evidence=evidence,
        evidence_title="step output",
        hint="; ".join(needs)
        if needs
        else "fix the failing instruction; rerun with -s to see the whole build log live",
    )
