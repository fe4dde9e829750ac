"""Budgets: an image's size, layers and wasted bytes, its app's time to ready and its build
time, each held to a limit, and a failure that says where the figure comes from.

Time budgets are the median of what the session measured (every start of that image), and
are skipped on a remote engine unless asked for: a network in between is not the app.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_dockapp.budgets.layers import LayerWalk, human, walk_image
from pytest_dockapp.core.errors import ConfigurationError

if TYPE_CHECKING:
    import docker

    from pytest_dockapp.builds.dockerfile import Instruction
    from pytest_dockapp.builds.record import BuildRecord

KINDS = ("size", "layers", "wasted", "ready", "build")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


def parse_size(value: str | int | float) -> int:
    """``80MB`` (decimal, as ``docker images`` says it), ``64MiB``, or bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", str(value).lower())
    if m is None:
        raise ConfigurationError(f"{value!r} is not a size", hint="e.g. 80MB, 1.5GB, 64MiB or a number of bytes")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or ""])


def parse_layers(value: str | int) -> int:
    """A whole number of layers, 1 or more (the engine allows 127)."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= 1000:
        raise ConfigurationError(f"{value!r} is not a number of layers", hint="a whole number from 1, e.g. 12")
    return int(text)


def parse_share(value: str) -> float:
    """``5%``: a share of the image's size, from 0 to 100 %."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", value)
    if m is None or float(m.group(1)) > 100:
        raise ConfigurationError(f"{value!r} is not a share of the image", hint="from 0% to 100%, e.g. 5%")
    return float(m.group(1)) / 100


def parse_seconds(value: str | int | float) -> float:
    """``2s``, ``500ms``, ``1m`` or seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", str(value).lower())
    if m is None:
        raise ConfigurationError(f"{value!r} is not a duration", hint="e.g. 2s, 500ms, 1m or a number of seconds")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2) or "s"]


@dataclass(frozen=True)
class Budget:
    """Limits; None means unchecked. ``wasted`` is bytes, or with ``wasted_share`` a fraction
    of the image's size."""

    size: int | None = None
    layers: int | None = None
    wasted: int | None = None
    wasted_share: float | None = None
    ready: float | None = None
    build: float | None = None
    time_on_remote: bool = False

    @classmethod
    def parse(cls, given: Mapping[str, Any]) -> Budget:
        """From marker keywords or settings (``size="80MB"``, ``wasted="5%"``, ``ready="2s"``)."""
        unknown = sorted(set(given) - {*KINDS, "time_on_remote"})
        if unknown:
            raise ConfigurationError(
                f"unknown budget {unknown[0]!r}", hint=f"budgets: {', '.join(KINDS)} (and time_on_remote=True)"
            )
        wasted = given.get("wasted")
        share = None
        if isinstance(wasted, str) and wasted.strip().endswith("%"):
            share, wasted = parse_share(wasted), None
        return cls(
            size=parse_size(given["size"]) if given.get("size") is not None else None,
            layers=parse_layers(given["layers"]) if given.get("layers") is not None else None,
            wasted=parse_size(wasted) if wasted is not None else None,
            wasted_share=share,
            ready=parse_seconds(given["ready"]) if given.get("ready") is not None else None,
            build=parse_seconds(given["build"]) if given.get("build") is not None else None,
            time_on_remote=bool(given.get("time_on_remote", False)),
        )

    @property
    def needs_walk(self) -> bool:
        return self.wasted is not None or self.wasted_share is not None


@dataclass
class Figures:
    """What was measured of one image (and its app); None where not measured."""

    name: str
    size: int
    layers: int
    wasted: int | None = None
    ready: float | None = None  # the median of the session's starts
    ready_samples: int = 0
    build: float | None = None
    build_note: str = ""  # why there is no build time (reused, prebuilt)
    built_here: bool = False  # whether the image came from a build record (ran, or reused)
    walk: LayerWalk | None = None
    contributors: list[tuple[int, str]] = field(default_factory=list)  # (bytes, what made the layer)

    def set_ready(self, samples: Sequence[float]) -> None:
        """The time to ready as the median of these starts (kept as it was when there are none)."""
        if samples:
            self.ready, self.ready_samples = statistics.median(samples), len(samples)

    def properties(self) -> list[tuple[str, str]]:
        """JUnit properties, named the same in every run."""
        out = [("size_bytes", str(self.size)), ("layers", str(self.layers))]
        if self.wasted is not None:
            out.append(("wasted_bytes", str(self.wasted)))
        if self.built_here:  # named in every run, numbers only (charted): 0 and reused 1 when no build ran
            out.append(("build_seconds", f"{self.build:.3f}" if self.build is not None else "0"))
            out.append(("build_reused", "0" if self.build is not None else "1"))
        return out

    def line(self) -> str:
        wasted = f", {human(self.wasted)} wasted" if self.wasted is not None else ""
        layers = f"{self.layers} layer" + ("s" if self.layers != 1 else "")
        return f"image {self.name}: {human(self.size)} in {layers}{wasted}"


@dataclass
class BudgetReport:
    figures: Figures
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def explain(self) -> str:
        return "\n".join(self.failures + [f"(not checked: {s})" for s in self.skipped])


def measure(
    client: docker.DockerClient,
    image_id: str,
    name: str,
    *,
    record: BuildRecord | None = None,
    ready_samples: Sequence[float] = (),
    walk: bool = False,
    prebuilt: bool = False,
) -> Figures:
    """The image's figures; ``walk`` adds the wasted bytes (the image is streamed out once)."""
    attrs = client.api.inspect_image(image_id)
    history = list(reversed(client.api.history(image_id)))  # oldest first
    figures = Figures(name, int(attrs.get("Size") or 0), len((attrs.get("RootFS") or {}).get("Layers") or []))
    figures.contributors = sorted(
        ((int(h.get("Size") or 0), str(h.get("CreatedBy") or "")) for h in history if h.get("Size")), reverse=True
    )
    figures.set_ready(ready_samples)
    figures.built_here = record is not None
    if record is not None and not record.reused:
        figures.build = record.seconds
    else:
        figures.build_note = (
            "a prebuilt image: no build ran"
            if prebuilt
            else "the build was reused (nothing it reads changed): no build ran this session; --dockapp-rebuild builds"
        )
    if walk:
        figures.walk = walk_image(client, image_id)
        figures.wasted = figures.walk.wasted
    return figures


def check(budget: Budget, figures: Figures, *, remote: bool = False, record: BuildRecord | None = None) -> BudgetReport:
    """Each budget against its figure; a failure names the biggest contributors and their lines."""
    report = BudgetReport(figures)
    lines = _line_labels(record)
    if budget.size is not None and figures.size > budget.size:
        report.failures.append(
            f"image {figures.name} is {human(figures.size)} > budget {human(budget.size)}; "
            f"largest layers: {_largest(figures, lines)}" + _cache_fix(figures, lines)
        )
    if budget.layers is not None and figures.layers > budget.layers:
        report.failures.append(f"image {figures.name} has {figures.layers} layers > budget {budget.layers}")
    limit = budget.wasted
    if budget.wasted_share is not None:
        limit = int(figures.size * budget.wasted_share)
    if limit is not None and figures.wasted is not None and figures.wasted > limit:
        shown = (
            f"{budget.wasted_share:.0%} of {human(figures.size)} = {human(limit)}"
            if budget.wasted_share
            else human(limit)
        )
        report.failures.append(
            f"image {figures.name} wastes {human(figures.wasted)} > budget {shown}: bytes a later layer deletes "
            f"or overwrites, still shipped in the layer that wrote them; {_wasters(figures, lines)}"
        )
    for kind, limit_s, value in (("ready", budget.ready, figures.ready), ("build", budget.build, figures.build)):
        if limit_s is None:
            continue
        if remote and not budget.time_on_remote:
            report.skipped.append(f"the {kind} budget on a remote engine (time_on_remote=True checks it)")
        elif value is None:
            report.skipped.append(f"the {kind} budget: {figures.build_note if kind == 'build' else 'no app started'}")
        elif value > limit_s:
            how = (
                f"the median of {figures.ready_samples} start(s) this session, from container start to ready"
                if kind == "ready"
                else "this session's build"
            )
            report.failures.append(f"{figures.name}: {kind} took {value:.2f}s > budget {limit_s:g}s ({how})")
    return report


def _line_labels(record: BuildRecord | None) -> list[Instruction]:
    """The instructions of the final stage (and of the stages it is FROM), for naming layers."""
    if record is None:
        return []
    from pytest_dockapp.budgets.lint import carried_stages
    from pytest_dockapp.builds.dockerfile import Dockerfile

    try:
        stages = carried_stages(Dockerfile.read(record.dockerfile), record.target)
    except Exception:  # a Dockerfile that changed or vanished since: name layers by their history
        return []
    return [i for s in stages for i in s.instructions if i.keyword in ("RUN", "COPY", "ADD")]


def label(created_by: str, instructions: Sequence[Instruction]) -> str:
    """``line 7 RUN apt-get install …`` for the history entry of a layer, or what made it."""
    text = re.sub(r"\s*# buildkit$", "", created_by.strip())
    text = re.sub(r"^\|\d+ (?:\S+=\S* )*", "", text)  # classic: the build args a RUN saw
    text = " ".join(re.sub(r"^(RUN )?/bin/sh -c (#\(nop\) )?", "", text).split())
    if not text:  # an imported base (docker import) records no command: it matches no line
        return "base image layer"
    for ins in reversed(instructions):
        body = " ".join(ins.text.split(" ", 1)[1:])  # continuations joined, whitespace folded
        if ins.keyword == "RUN" and body and (body in text or text in body):
            return f"line {ins.line} {_short(ins.text)}"
        if (
            ins.keyword in ("COPY", "ADD")
            and text.startswith(ins.keyword)
            and text.split()[-1] == ins.value.split()[-1]
        ):
            return f"line {ins.line} {_short(ins.text)}"
    return f"base image: {_short(text)}" if text else "base image layer"


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _largest(figures: Figures, lines: Sequence[Instruction], count: int = 3) -> str:
    parts = []
    for size, created_by in figures.contributors[:count]:
        part = f"{label(created_by, lines)} {human(size)}"
        if figures.walk is not None:
            caches = [
                (prefix, n) for layer in figures.walk.layers if layer.created_by == created_by
                for prefix, n in layer.caches.items()
            ]  # fmt: skip
            if caches:
                part += " (of which " + ", ".join(f"{human(n)} /{p}" for p, n in caches) + ", removed nowhere)"
        parts.append(part)
    return ", ".join(parts)


#: The fix for a package cache left in the layer that filled it, by the folder that holds it, and
#: what in a RUN line shows the fix is there already.
_FIXES = {
    "var/lib/apt/lists": ("add `&& rm -rf /var/lib/apt/lists/*` to the same RUN", "rm -rf /var/lib/apt/lists"),
    "var/cache/apt/archives": ("add `&& apt-get clean` to the same RUN (it empties /var/cache/apt/archives)", "clean"),
    "root/.cache/pip": ("add --no-cache-dir to its pip install", "--no-cache-dir"),
    "root/.npm": (
        "add `&& npm cache clean --force` to the same RUN (or RUN --mount=type=cache,target=/root/.npm)",
        "npm cache clean",
    ),
    "usr/local/share/.cache/yarn": ("add `&& yarn cache clean` to the same RUN", "yarn cache clean"),
}


def _cache_fix(figures: Figures, lines: Sequence[Instruction]) -> str:
    """The one fix that is certain: a package cache left in the layer of a RUN line that filled it,
    where the line does not already do what the fix says (then the cache comes from elsewhere)."""
    if figures.walk is None:
        return ""
    for layer in sorted(figures.walk.layers, key=lambda x: -sum(x.caches.values())):
        for prefix, size in sorted(layer.caches.items(), key=lambda item: -item[1]):
            fix, done = _FIXES.get(prefix, ("", ""))
            made_by = _instruction(layer.created_by, lines)
            if size < 1_000_000 or not fix or made_by is None or made_by.keyword != "RUN" or done in made_by.text:
                continue
            return f"\nfix: {label(layer.created_by, lines)}: {fix} ({human(size)} in /{prefix})"
    return ""


def _instruction(created_by: str, lines: Sequence[Instruction]) -> Instruction | None:
    """The line whose layer has this history entry, if one of ``lines`` made it."""
    named = label(created_by, lines)
    found = re.match(r"line (\d+) ", named)
    return next((i for i in lines if found and i.line == int(found.group(1))), None)


def _wasters(figures: Figures, lines: Sequence[Instruction]) -> str:
    assert figures.walk is not None
    top = sorted((x for x in figures.walk.layers if x.wasted), key=lambda x: -x.wasted)[:3]
    return "written by: " + ", ".join(f"{label(x.created_by, lines)} {human(x.wasted)}" for x in top)
