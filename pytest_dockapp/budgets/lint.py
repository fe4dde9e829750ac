"""The size rules the lint can be certain of without a build: a package cache that a RUN leaves
in its own layer. Only stages the final image carries count: a builder stage that the final
stage only copies from ships none of its layers."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_dockapp.builds.dockerfile import Dockerfile, Instruction, Stage, mount_specs


@dataclass(frozen=True)
class SizeFinding:
    step: Instruction
    what: str
    fix: str
    path: str = "Dockerfile"

    def __str__(self) -> str:
        return f"{self.path}:{self.step.line}: `{self.step.text}` {self.what}\n  fix: {self.fix}"


def carried_stages(df: Dockerfile, target: str | None = None) -> list[Stage]:
    """The final stage and the stages it is built FROM: the ones whose layers the image ships."""
    chain = [df.target_stage(target)]
    while True:
        parent = next((s for s in df.stages[: chain[-1].index] if s.is_named(chain[-1].base)), None)
        if parent is None:
            return list(reversed(chain))
        chain.append(parent)


def _cached(ins: Instruction, target: str) -> bool:
    """Whether a cache mount keeps ``target`` out of the layer."""
    return any(m.get("type") == "cache" and m.get("target", "").rstrip("/") == target for m in mount_specs(ins))


def _rules(ins: Instruction, env: dict[str, str]) -> list[tuple[str, str]]:
    """What this RUN leaves in its layer, and the fix: ``(what, fix)`` per cache."""
    body = " ".join([ins.args, *ins.heredocs])
    out = []
    apt = re.search(r"\bapt(-get)? +(-\S+ +)*install\b", body)
    if apt and "/var/lib/apt/lists" not in body and not _cached(ins, "/var/lib/apt/lists"):
        recommends = "--no-install-recommends" not in body
        out.append((
            "leaves apt's package lists (/var/lib/apt/lists, tens of MB) in its layer"
            + (" and pulls recommended packages too" if recommends else ""),
            "end the same RUN with `&& rm -rf /var/lib/apt/lists/*`"
            + (", and install with --no-install-recommends" if recommends else ""),
        ))  # fmt: skip
    pip = re.search(r"\bpip3? +install\b", body)
    if (
        pip
        and "--no-cache-dir" not in body
        and not env.get("PIP_NO_CACHE_DIR")
        and not _cached(ins, "/root/.cache/pip")
    ):
        out.append((
            "leaves pip's download cache (/root/.cache/pip) in its layer",
            "add --no-cache-dir to pip install (or set ENV PIP_NO_CACHE_DIR=1)",
        ))  # fmt: skip
    npm = re.search(r"\bnpm +(ci|install|i)\b", body)
    if npm and "npm cache clean" not in body and not _cached(ins, "/root/.npm"):
        out.append((
            "leaves npm's cache (/root/.npm) in its layer",
            "end the same RUN with `&& npm cache clean --force`, or use RUN --mount=type=cache,target=/root/.npm",
        ))  # fmt: skip
    return out


def size_lint(df: Dockerfile, target: str | None = None) -> list[SizeFinding]:
    """Package caches a RUN of a carried stage leaves in its own layer."""
    path = str(df.path) if df.path else "Dockerfile"
    scopes = df.scopes()
    found = []
    for stage in carried_stages(df, target):
        for ins in (i for i in stage.instructions if i.keyword == "RUN"):
            env = dict(scopes[ins.key].env) if ins.key in scopes else {}
            found += [SizeFinding(ins, what, fix, path) for what, fix in _rules(ins, env)]
    return found
