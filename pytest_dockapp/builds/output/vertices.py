"""BuildKit's vertices, folded into steps: what the plain and the raw JSON progress share."""

from __future__ import annotations

import re
import time

from pytest_dockapp.builds.dockerfile import Dockerfile, normalize
from pytest_dockapp.builds.mapper import StepMapper
from pytest_dockapp.builds.record import BuildEvent, BuildStep, ProgressCallback

# "[build 2/5] RUN make", "[ 2/10] COPY . .", "[child  1/10] RUN x": the position is padded.
_PLAIN_NAME = re.compile(r"^\[\s*(?:(\S+)\s+)?(\d+)/(\d+)\] (.*)$", re.DOTALL)


class VertexFolder:
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
