"""What a RUN step reads: the dependency tools it runs, their manifests, and whether it also
builds from the sources. One model serves the lint and the cache marker's fix advice."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_dockapp.builds.dockerfile import Instruction


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
        r"\bpnpm(?:\s+(?:install|i|fetch)\b|\s*(?:$|&&|;|\|\|))",
        ("package.json", "pnpm-lock.yaml"),
        "pnpm install --frozen-lockfile",
        r"\bpnpm (?:run )?(?:build|test)\b|\bpnpm --filter\b",
    ),
    Tool(
        "bun",
        r"\bbun (?:install|i)\b",
        ("package.json", "bun.lockb", "bun.lock"),
        "bun install --frozen-lockfile",
        r"\bbun (?:run )?build\b",
    ),
    Tool(
        "deno",
        r"\bdeno (?:cache|install)\b",
        ("deno.json", "deno.jsonc", "deno.lock"),
        "deno install",
        r"\bdeno (?:compile|bundle|task build)\b",
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
    Tool("mix", r"\bmix deps\.get\b", ("mix.exs", "mix.lock"), "mix deps.get", r"\bmix (?:compile|release)\b"),
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
