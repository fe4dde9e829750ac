"""The classic builder's (and podman's) JSON build stream, folded into steps."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from pytest_dockapp.builds.dockerfile import Dockerfile, Instruction, normalize
from pytest_dockapp.builds.mapper import StepMapper
from pytest_dockapp.builds.record import BuildEvent, BuildStep, ProgressCallback
from pytest_dockapp.engine.cleanup import PREFIX as LABEL_PREFIX

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
