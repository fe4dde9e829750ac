"""Static check for cache-hostile layer order: a broad COPY before a dependency install.

It agrees with what the ``dockapp_cache`` marker measures: when ``COPY . /app``
comes before ``RUN npm install`` in one stage, editing any source file makes the
install rerun, and the marker reports exactly that step as invalidated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .dockerfile import Dockerfile, Instruction, copy_sources, split_words

#: Dependency installers and the manifests they read: shared by the lint and the fix advice.
INSTALLERS: list[tuple[str, str, tuple[str, ...]]] = [
    (r"\bnpm (?:install|ci|i)\b", "npm", ("package.json", "package-lock.json")),
    (r"\byarn(?: install)?\b", "yarn", ("package.json", "yarn.lock")),
    (r"\bpnpm (?:install|i)\b", "pnpm", ("package.json", "pnpm-lock.yaml")),
    (r"\bpip3? install\b.*-r\s+\S+|\bpip3? install\b", "pip", ("requirements.txt",)),
    (r"\bpoetry install\b", "poetry", ("pyproject.toml", "poetry.lock")),
    (r"\buv (?:sync|pip install)\b", "uv", ("pyproject.toml", "uv.lock")),
    (r"\bbundle(?: install)?\b", "bundler", ("Gemfile", "Gemfile.lock")),
    (r"\bgo mod (?:download|tidy)\b", "go", ("go.mod", "go.sum")),
    (r"\bcargo (?:build|fetch)\b", "cargo", ("Cargo.toml", "Cargo.lock")),
    (r"\bcomposer install\b", "composer", ("composer.json", "composer.lock")),
    (r"\bmvn\b.*\b(?:dependency:|install|package)", "maven", ("pom.xml",)),
    (r"\bgradle\w*\b", "gradle", ("build.gradle", "settings.gradle")),
]


def installer_of(ins: Instruction) -> tuple[str, tuple[str, ...]] | None:
    """``(tool, manifests)`` if ``ins`` is a RUN that installs dependencies."""
    if ins.keyword != "RUN":
        return None
    for pattern, tool, manifests in INSTALLERS:
        if re.search(pattern, ins.args):
            return tool, manifests
    return None


@dataclass(frozen=True)
class Finding:
    """One cache-hostile pair: a broad copy and the install step it invalidates."""

    copy: Instruction
    install: Instruction
    tool: str
    manifests: tuple[str, ...]

    def __str__(self) -> str:
        return (
            f"line {self.copy.line}: `{self.copy.text}` comes before `{self.install.text}` (line "
            f"{self.install.line}): any source edit reruns the {self.tool} install\n"
            f"  fix: {fix_advice(self.copy, self.install)}"
        )


def _broad(source: str) -> bool:
    src = source.strip().lstrip("/")
    while src.startswith("./"):
        src = src[2:]
    return src in ("", ".", "*", "./*") or src.startswith("*")


def lint(df: Dockerfile) -> list[Finding]:
    """Findings for every stage where a broad COPY/ADD precedes a dependency-install RUN."""
    findings = []
    for stage in df.stages:
        broad: Instruction | None = None
        for ins in stage.instructions:
            if broad is None and any(_broad(s) for s in copy_sources(ins)):
                broad = ins
            elif broad is not None:
                found = installer_of(ins)
                if found:
                    findings.append(Finding(broad, ins, found[0], found[1]))
    return findings


def fix_advice(origin: Instruction, victim: Instruction | None) -> str:
    """How to reorder so ``victim`` no longer follows the broad copy ``origin``."""
    if origin.keyword not in ("COPY", "ADD") or victim is None:
        return ""
    inst = installer_of(victim)
    dest = split_words(origin.args)[-1] if split_words(origin.args) else "."
    manifests = " ".join(inst[1]) if inst else "the files it needs"
    return (
        f"copy only what `{victim.text}` needs first (`COPY {manifests} {dest}`), run it, and move "
        f"`{origin.text}` (line {origin.line}) below it (line {victim.line}), so source edits no longer invalidate it"
    )
