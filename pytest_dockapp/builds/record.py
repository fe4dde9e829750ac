"""What one build did, step by step: the record every builder's output becomes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_dockapp.builds.dockerfile import Dockerfile, Instruction


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
    #: The registry cache refs the build imported from, and how many hits came from there.
    cache_from: list[str] = field(default_factory=list)
    registry_hits: int = 0
    #: ``ref@sha256:...`` the image was pushed to (``dockapp_cache_to``), and the seconds that
    #: pulls and pushes of cache images added to the session.
    pushed_to: str = ""
    registry_seconds: float = 0.0
    #: On a miss with a cache ref: the inputs that differ from the build that made the cache image.
    cache_diff: list[str] = field(default_factory=list)

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
        from pytest_dockapp.core.errors import CacheRegressionError

        marks = {s.index: "<-- MISS" for s in self.misses}
        source = f" or from the registry cache {', '.join(self.cache_from)}" if self.cache_from else ""
        differs = ""
        if self.cache_diff:
            differs = "\n\nwhat differs from the build that made the cache image:\n" + "\n".join(
                f"  {line}" for line in self.cache_diff
            )
        raise CacheRegressionError(
            f"--dockapp-expect-cached: the session build of {self.dockerfile} missed the layer cache at "
            f"{len(self.misses)} step(s); the image was expected to come from an earlier build "
            f"(a CI build stage){source} with the same context, Dockerfile and build args\n\n"
            f"{self.table(marks)}{differs}",
            hint=f"this session built with the {self.builder} builder; build the image in the earlier stage with "
            f"exactly that builder and these settings: {self.command or 'docker build'} (or drop "
            "--dockapp-expect-cached)",
        )

    def summary(self) -> str:
        """``"3.21s, 4/6 steps cached"``: of the build that made the image."""
        return f"{self.seconds:.2f}s, {self.cache_use()}"

    def cache_use(self) -> str:
        """``"4/6 steps cached"``, with ``" (3 from <ref>)"`` when it imported a registry cache."""
        text = f"{len(self.hits)}/{len(self.cacheable_steps)} steps cached"
        if self.cache_from:
            text += f" ({self.registry_hits} from {', '.join(self.cache_from)})"
        return text

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
            "cache_from": self.cache_from,
            "registry_hits": self.registry_hits,
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
            cache_from=list(data.get("cache_from", [])),
            registry_hits=int(data.get("registry_hits", 0)),
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
