"""What a RUN step reads, and the static check for cache-hostile layer order built on it.

One model serves the lint and the ``dockapp_cache`` marker's fix advice: a RUN may install
dependencies (it reads only manifests), build (it reads the sources), or both. A broad
``COPY .`` before a step that only needs manifests makes every source edit rerun it; a
step that needs the sources must rerun, and the advice says so instead of proposing an
order that would break the build.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .dockerfile import Dockerfile, Instruction, Stage, copy_sources, parse_triggers, split_words


@dataclass(frozen=True)
class Tool:
    """A dependency tool: how its install step looks, what it reads, how to run it alone."""

    name: str
    install: str  # regex of a step that installs dependencies from the manifests only
    manifests: tuple[str, ...]
    command: str  # the install-only command to propose
    builds: str = ""  # regex of a step that reads the sources (and downloads what is missing)


TOOLS = [
    Tool(
        "npm",
        r"\bnpm (?:ci|install|i)\b(?! -g)",
        ("package.json", "package-lock.json"),
        "npm ci",
        r"\bnpm run (?:build|test)\b",
    ),
    Tool(
        "yarn",
        r"\byarn(?:\s+install)?(?:\s+--[\w-]+(?:=\S+)?)*\s*(?:$|&&|;|\|\|)",
        ("package.json", "yarn.lock"),
        "yarn install --frozen-lockfile",
        r"\byarn (?:run )?(?:build|test)\b",
    ),
    Tool(
        "pnpm",
        r"\bpnpm (?:install|i|fetch)\b",
        ("package.json", "pnpm-lock.yaml"),
        "pnpm install --frozen-lockfile",
        r"\bpnpm (?:run )?(?:build|test)\b|\bpnpm --filter\b",
    ),
    Tool(
        "pip",
        r"\bpip3? install\b",
        ("requirements.txt",),
        "pip install -r requirements.txt",
        r"\bpip3? install\b.*\s(?:\.|-e \.)(?:\s|$)",
    ),
    Tool(
        "poetry",
        r"\bpoetry install\b",
        ("pyproject.toml", "poetry.lock"),
        "poetry install --no-root",
        r"\bpoetry install\b(?!.*--no-root)",
    ),
    Tool(
        "uv",
        r"\buv sync\b|\buv pip install\b.*-r\s",
        ("pyproject.toml", "uv.lock"),
        "uv sync --frozen --no-install-project",
        r"\buv sync\b(?!.*--no-install-project)",
    ),
    Tool("bundler", r"\bbundle(?: install)?(?:\s+--\S+)*\s*(?:$|&&|;)", ("Gemfile", "Gemfile.lock"), "bundle install"),
    Tool("go", r"\bgo mod download\b", ("go.mod", "go.sum"), "go mod download", r"\bgo (?:build|test|install|vet)\b"),
    Tool(
        "cargo",
        r"\bcargo (?:fetch|chef cook)\b",
        ("Cargo.toml", "Cargo.lock"),
        "cargo fetch",
        r"\bcargo (?:build|test|install)\b",
    ),
    Tool(
        "composer",
        r"\bcomposer install\b",
        ("composer.json", "composer.lock"),
        "composer install --no-scripts --no-autoloader",
    ),
    Tool(
        "maven",
        r"\bmvn\b.*\bdependency:(?:go-offline|resolve)",
        ("pom.xml",),
        "mvn dependency:go-offline",
        r"\bmvn\b.*\b(?:package|install|verify|compile)\b",
    ),
    Tool(
        "gradle",
        r"\bgradle\w*\b.*\bdependencies\b",
        ("build.gradle", "settings.gradle"),
        "gradle dependencies",
        r"\bgradle\w*\b.*\b(?:build|assemble|bootJar|installDist)\b",
    ),
    Tool(
        "dotnet",
        r"\bdotnet restore\b|\bnuget restore\b",
        ("*.csproj",),
        "dotnet restore",
        r"\bdotnet (?:build|publish|test)\b",
    ),
]


@dataclass(frozen=True)
class RunReads:
    """What a RUN reads: dependency manifests of ``installs`` tools, and sources when ``builds``."""

    installs: tuple[Tool, ...] = ()
    builds: tuple[Tool, ...] = ()

    @property
    def known(self) -> bool:
        return bool(self.installs or self.builds)


def run_reads(ins: Instruction) -> RunReads:
    """Classify a RUN step (anything else reads nothing this model knows of)."""
    if ins.keyword != "RUN":
        return RunReads()
    text = " ".join([ins.args, *ins.heredocs])
    installs = tuple(t for t in TOOLS if re.search(t.install, text))
    builds = tuple(t for t in TOOLS if t.builds and re.search(t.builds, text))
    return RunReads(installs, builds)


@dataclass(frozen=True)
class Finding:
    """One cache-hostile pair: a broad copy and the step it makes rerun on every source edit."""

    copy: Instruction
    victim: Instruction
    tool: str
    path: str = "Dockerfile"

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.victim.line}: `{self.victim.text}` comes after `{self.copy.text}` "
            f"({self.path}:{self.copy.line}): any source edit reruns the {self.tool} dependency install\n"
            f"  fix: {fix_advice(self.copy, self.victim)}"
        )


def _broad(source: str) -> bool:
    src = source.strip().lstrip("/")
    while src.startswith("./"):
        src = src[2:]
    return src in ("", ".", "*", "**")  # "*.csproj" names manifests: not broad


def _chains(df: Dockerfile) -> list[list[Instruction]]:
    """Each stage's steps preceded by the steps of the stages it is built FROM (a broad COPY
    in a base stage reaches installs in its children); ONBUILD blocks count as their own chain."""

    def chain(stage: Stage) -> list[Instruction]:
        parent = next((o for o in df.stages[: stage.index] if o.is_named(stage.base)), None)
        return (chain(parent) if parent else []) + stage.instructions

    out = [chain(st) for st in df.stages]
    onbuild = [i for i in df.instructions if i.keyword == "ONBUILD" and not i.trigger]
    if onbuild:
        parsed = parse_triggers(i.args for i in onbuild)
        out.append(
            [
                Instruction(p.keyword, p.value, o.line, o.end_line, o.stage, p.flags, p.args, p.heredocs)
                for p, o in zip(parsed, onbuild)
            ]
        )
    return out


def lint(df: Dockerfile) -> list[Finding]:
    """Steps that rerun on every source edit although they only need dependency manifests."""
    path = str(df.path) if df.path else "Dockerfile"
    found: dict[tuple[int, int], Finding] = {}
    for steps in _chains(df):
        broad: Instruction | None = None
        installed: set[str] = set()  # tools whose dependencies an earlier step installed
        for ins in steps:
            reads = run_reads(ins)
            if broad is None:
                if any(_broad(s) for s in copy_sources(ins)):
                    broad = ins
                installed |= {t.name for t in reads.installs}
                continue
            tools = [t for t in reads.installs if t.name not in installed]
            # A build that fetches its dependencies itself (go build, cargo build, mvn package)
            # downloads them again on every source edit when no earlier step did.
            tools += [t for t in reads.builds if t.name not in installed and t.name in _IMPLICIT]
            if tools and ins.key not in found:
                found[ins.key] = Finding(broad, ins, tools[0].name, path)
            installed |= {t.name for t in reads.installs}
    return sorted(found.values(), key=lambda f: f.victim.line)


#: Build tools that download missing dependencies themselves.
_IMPLICIT = {"go", "cargo", "maven", "gradle", "dotnet"}


def fix_advice(culprit: Instruction, victim: Instruction | None) -> str:
    """How to keep ``victim`` cached although ``culprit`` (a COPY/ADD) copies changed files.

    Only orders in which every step still has its inputs are proposed: manifests, install,
    sources, build.
    """
    if culprit.keyword not in ("COPY", "ADD") or victim is None:
        return ""
    words = split_words(culprit.args)
    dest = words[-1] if words else "."
    here = f"above {culprit.where} (`{culprit.text}`)"
    reads = run_reads(victim)
    installs_only = reads.installs and not reads.builds
    if installs_only:
        tool = reads.installs[0]
        return (
            f"copy only what `{victim.text}` needs first (`COPY {' '.join(tool.manifests)} {dest}`), run it, "
            f"and move `{culprit.text}` ({culprit.where}) below it ({victim.where}), so source edits no longer "
            "invalidate it"
        )
    if reads.installs and reads.builds:
        tool = reads.installs[0]
        return (
            f"`{victim.text}` installs dependencies and reads the sources: split it. Install first from the "
            f"manifests alone {here} (`COPY {' '.join(tool.manifests)} {dest}` then `RUN {tool.command}`), and "
            "keep only the build part after the copy"
        )
    if reads.builds:
        tool = reads.builds[0]
        return (
            f"`{victim.text}` reads the sources, so it must rerun when they change: it cannot be cached across "
            f"this change. To keep the {tool.name} dependency download cached, add `COPY "
            f"{' '.join(tool.manifests)} {dest}` and `RUN {tool.command}` {here}"
        )
    named = files_named(culprit, victim)
    if named:
        # Moving the step above the copy would run it without its files (trust III, 17).
        copies = " and ".join(f"`COPY {src} {dst}`" for src, dst in named)
        return (
            f"`{victim.text}` reads {', '.join(src for src, _ in named)}, which `{culprit.text}` copies: add "
            f"{copies} {here}, and move `{victim.text}` ({victim.where}) right after it, so edits to other "
            "files no longer invalidate it"
        )
    return (
        f"if `{victim.text}` does not need the files that `{culprit.text}` copies, move it {here}; if it does, "
        "it must rerun when they change, and cached= should not require it"
    )


def files_named(culprit: Instruction, victim: Instruction) -> list[tuple[str, str]]:
    """The files that ``victim`` (a RUN) names on its command line and ``culprit`` (a one-source
    COPY or ADD from the context) brings in: ``(context path, path in the image)`` each."""
    words = split_words(culprit.args)
    if victim.keyword != "RUN" or len(words) != 2 or "from" in culprit.flags:
        return []
    source, dest = words
    into_workdir = dest in (".", "./")
    base = dest.rstrip("/")
    out: list[tuple[str, str]] = []
    for token in re.split(r"[\s;&|()<>'\"=]+", victim.args):
        if not token or token.startswith("-") or any(c in token for c in "$*:"):
            continue
        if into_workdir and not token.startswith("/"):
            rel, target = token.removeprefix("./"), token
        elif not into_workdir and token.startswith(base + "/"):
            rel, target = token[len(base) + 1 :], token
        else:
            continue
        if not re.fullmatch(r"[\w.-]*[A-Za-z_][\w-]*\.[A-Za-z][A-Za-z0-9]*", rel.rsplit("/", 1)[-1]):
            continue  # a file has a name and an extension; `npm`, `1.5` and `-q` are not files
        src = rel if source in (".", "./") else f"{source.rstrip('/')}/{rel}"
        if (src, target) not in out:
            out.append((src, target))
    return out
