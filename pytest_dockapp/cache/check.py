"""The cache check: copy the build context (minus ``.dockerignore``d files) to a temporary
folder, build it, apply a change, rebuild with the same builder and settings, and compare
step by step against :mod:`.expectations`; a failing check's fix is verified by a build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dockapp.builds.context import context_files, copy_context
from pytest_dockapp.builds.dockerfile import Dockerfile, Instruction
from pytest_dockapp.builds.image import BuildSpec, build_image, read_dockerfile, resolve_paths, spec_digest
from pytest_dockapp.builds.record import BuildRecord, BuildStep
from pytest_dockapp.cache.advice import Advice, advise
from pytest_dockapp.cache.expectations import CachedPattern, ChangeSpec, Expectation, expected_misses, match_pattern
from pytest_dockapp.core.errors import CacheMarkerUsageError, CacheRegressionError, ConfigurationError
from pytest_dockapp.engine import cleanup
from pytest_dockapp.engine.client import Builder, is_podman

if TYPE_CHECKING:
    import docker


_BUILD_ARG_CHANGE = re.compile(r"^--build-arg\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


# -- context files ------------------------------------------------------------------------------


def harmless_token() -> bytes:
    """Trailing whitespace that no earlier check wrote: a change the layer cache has never seen.

    A fixed edit (say, one more newline) would be cached after the first check, and every
    later rebuild would then hit the cache and hide a regression. The random bits are spelled
    in spaces and tabs, which source files, JSON and manifests tolerate at their end.
    """
    bits = secrets.randbits(48)
    return b"\n" + bytes(0x20 if bits >> i & 1 else 0x09 for i in range(48)) + b"\n"


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            out[rel] = "link:" + os.readlink(full) if full.is_symlink() else hashlib.sha1(full.read_bytes()).hexdigest()
    return out


# -- the check ----------------------------------------------------------------------------------


@dataclass
class CacheReport:
    """The outcome of one cache check: both builds, the change, and the verdict."""

    warm: BuildRecord
    rebuild: BuildRecord
    changed_files: list[str]
    changed_args: dict[str, str]
    expectation: Expectation
    required: dict[tuple[int, int], CachedPattern]  # instruction key -> the cached= pattern that selected it
    dockerfile: Dockerfile
    strict: bool = False
    #: For a failing check: the fix for its first unexpected miss (verified by a build when it
    #: reorders the Dockerfile; see :class:`~pytest_dockapp.cache.advice.Advice`).
    advice: Advice | None = None

    @property
    def steps(self) -> list[BuildStep]:
        return self.rebuild.steps

    @property
    def hits(self) -> list[BuildStep]:
        return self.rebuild.hits

    @property
    def misses(self) -> list[BuildStep]:
        return self.rebuild.misses

    def _required(self, step: BuildStep) -> bool:
        return step.instruction is not None and step.instruction.key in self.required

    @property
    def allowed(self) -> list[BuildStep]:
        """Steps the change lets miss: the first that reads it, and all that follow it."""
        return [s for s in self.steps if self.expectation.allows(s.instruction)]

    @property
    def demanded(self) -> list[BuildStep]:
        """Misses the Dockerfile explains, of steps that a ``cached=`` pattern requires to hit."""
        return [s for s in self.misses if self._required(s) and self.expectation.allows(s.instruction)]

    @property
    def unexplained(self) -> list[BuildStep]:
        """Misses that nothing in the change reaches."""
        return [s for s in self.misses if not self.expectation.allows(s.instruction)]

    @property
    def unexpected(self) -> list[BuildStep]:
        """Every miss that fails the check: demanded hits that missed, and unexplained misses."""
        return [s for s in self.misses if s in self.demanded or s in self.unexplained]

    @property
    def unprotected(self) -> list[BuildStep]:
        """Steps the model allows to miss that hit anyway: a regression that makes them miss
        would pass unnoticed unless ``cached=`` names them (or ``strict`` covers them)."""
        return [s for s in self.hits if self.expectation.allows(s.instruction) and not self._required(s)]

    @property
    def ok(self) -> bool:
        return not self.unexpected

    def step(self, pattern: CachedPattern) -> BuildStep:
        """The rebuild's step selected by ``pattern`` (as for ``cached=``)."""
        keys = {i.key for i in match_pattern(self.dockerfile, pattern)}
        for s in self.rebuild.steps:
            if s.instruction is not None and s.instruction.key in keys:
                return s
        raise CacheMarkerUsageError(f"no built step matches {pattern!r}")

    def summary(self) -> str:
        """One line for the terminal summary."""
        parts = []
        if self.demanded:
            parts.append(f"{len(self.demanded)} step(s) that cached= requires missed")
        if self.unexplained:
            parts.append(f"{len(self.unexplained)} unexplained miss(es)")
        verdict = "; ".join(parts) if parts else "ok"
        if self.unprotected:
            verdict += (
                f" ({len(self.unprotected)} step(s) allowed to miss hit anyway, unprotected: "
                + ", ".join(f"line {s.line}" for s in self.unprotected)
                + ")"
            )
        return verdict

    def first_unexpected(self) -> tuple[BuildStep, Instruction | None, Instruction | None, Instruction | None]:
        """The first unexpected miss: its step and instruction, the first miss of its stage, and
        the step the change reached first (the culprit)."""
        first = self.unexpected[0]
        key = first.instruction.key if first.instruction is not None else None
        origin = self.expectation.origin.get(key) if key else None
        culprit = self.expectation.culprit.get(key) if key else None
        return first, first.instruction, origin, culprit

    def explain(self) -> str:
        """The failure message: what missed, the table, who invalidated it and how to fix it."""
        bad = self.unexpected
        if not bad:
            return "every step was cached as expected"
        first, ins, origin, culprit = self.first_unexpected()
        where = f"{self.dockerfile.path}:{first.line}" if first.line else str(self.dockerfile.path)
        change = ", ".join(self.changed_files + [f"--build-arg {k}" for k in self.changed_args]) or "nothing"
        if ins is not None and ins.key in self.required:
            head = (
                f"cache regression: step {first.index} `{first.text}` ({where}) missed the cache, "
                f"but cached={self.required[ins.key]!r} requires a hit"
            )
        else:
            head = f"unexpected cache miss: step {first.index} `{first.text}` ({where}) after changing {change}"
        lines = [head]
        key = ins.key if ins is not None else None
        if culprit is not None and culprit.key != key:
            reason = self.expectation.may_miss.get(culprit.key, "")
            lines.append(
                f"invalidated by {culprit.where} `{culprit.text}`"
                + (f": {reason}" if reason else "")
                + (
                    "; every later step of the stage rebuilds"
                    if origin is culprit
                    else f"; that rebuilt stage {self.dockerfile.stages[culprit.stage].label}, and with it "
                    f"stage {self.dockerfile.stages[ins.stage].label} (from {origin.where if origin else '?'})"
                    if ins is not None
                    else ""
                )
            )
            if self.advice is not None:
                lines.append(self.advice.render())
        elif culprit is not None:
            lines.append(f"it {self.expectation.may_miss[culprit.key]}")
        else:
            lines.append(
                "nothing in the change reaches this step: the builder did not reuse its cache "
                "(was the cache pruned, a base image re-pulled, or the step made non-deterministic?)"
            )
        marks: dict[int, str] = {}
        for s in self.rebuild.steps:
            if s in bad:
                marks[s.index] = "<-- must be cached" if self._required(s) else "<-- unexpected miss"
            elif culprit is not None and s.instruction is not None and s.instruction.key == culprit.key:
                marks[s.index] = "<-- invalidated here"
            elif s in self.unprotected:
                marks[s.index] = "<-- allowed to miss, but hit (unprotected)"
        lines.append("")
        lines.append(self.rebuild.table(marks))
        return "\n".join(lines)


def parse_change(change: ChangeSpec) -> tuple[list[str], dict[str, str], Callable[[Path], Any] | None]:
    """Split a ``change=`` value into file paths, build-arg changes and a callable."""
    if change is None:
        return [], {}, None
    if callable(change):
        return [], {}, change
    if isinstance(change, (str, os.PathLike)):
        change = [change]
    paths: list[str] = []
    args: dict[str, str] = {}
    for item in change:
        text = os.fspath(item)
        m = _BUILD_ARG_CHANGE.match(text)
        if m:
            args[m.group(1)] = m.group(2)
        else:
            paths.append(text)
    return paths, args, None


def warm_tag(context: Path, dockerfile: Path, target: str | None, build_args: Mapping[str, str], builder: str) -> str:
    """The stable tag of a cache check's warm build: one per whole build spec, as for apps."""
    return f"{cleanup.WARM_REPO}:{spec_digest(context, dockerfile, target, build_args, builder)[:16]}"


def _warm_build(
    client: docker.DockerClient, spec: BuildSpec, builder: Builder, tag: str, cache_from: Sequence[str]
) -> BuildRecord:
    """The check's first build: from the local cache, and from ``cache_from`` when given (pulled
    first on the classic builder; its hits from there are counted, as for the session build)."""
    from pytest_dockapp.builds.registry import CacheImport

    with CacheImport.prepare(client, cache_from, builder.name) as imports:
        warm = build_image(client, spec, builder=builder, tag=tag, cache_from=imports.refs)
        imports.attach(warm)
    return warm


def check_cache(
    client: docker.DockerClient,
    spec: BuildSpec,
    *,
    builder: Builder,
    change: ChangeSpec = None,
    cached: Sequence[CachedPattern] = (),
    strict: bool = False,
    owner: cleanup.Owner | None = None,
    workdir: str | os.PathLike[str] | None = None,
    verify_advice: bool = True,
    cache_from: Sequence[str] = (),
) -> CacheReport:
    """Build a copy of the context, change it, rebuild, and compare the two builds' cache use.

    The user's tree is never touched. Raises :class:`CacheMarkerUsageError` for a
    change path that is not in the context or a ``cached`` pattern that matches no step.
    When the check fails, its fix is worked out and, when it reorders the Dockerfile and
    ``verify_advice`` holds, verified by building that order in another copy with the same
    change (two builds that reuse the layer cache). ``cache_from`` (registry refs) lets the
    warm build of a cold runner take its layers from there.
    """
    if is_podman(client):
        raise ConfigurationError(
            "the dockapp_cache marker cannot give a true verdict on podman",
            evidence="measured with podman 4.3.1: a step that echoes 'Using cache' counted as a hit, and "
            "multi-stage and ONBUILD rebuilds were misattributed; a wrong verdict is worse than none",
            hint="run cache checks against a Docker engine (classic or BuildKit); apps run on podman as usual",
        )
    ctx, df_path = resolve_paths(spec.context, spec.dockerfile)
    base_args, target = dict(spec.build_args), spec.target
    df = read_dockerfile(client, df_path, base_args)
    paths, arg_changes, edit = parse_change(change)
    required = _validate(df, df_path, ctx, paths, cached)
    owner = owner or cleanup.Owner()
    tmp = Path(tempfile.mkdtemp(prefix="dockapp-cache-", dir=workdir))
    tags: list[str] = []
    try:
        copy = tmp / "context"
        copy.mkdir()
        sent = set(copy_context(ctx, copy, df_path, builder.name))
        try:
            build_df = copy / df_path.relative_to(ctx)
        except ValueError:
            build_df = df_path
        # The warm build is the user's own layer cache: it keeps a stable tag and stays, since
        # removing it would drop its last layer and make the next check's warm build miss there.
        # The rebuild holds the changed, never-again-useful layers: those are removed below.
        # The copies build as the user's spec does: its build args, target, secrets and ssh.
        warm = _warm_build(
            client,
            dataclasses.replace(spec, context=copy, dockerfile=build_df),
            builder,
            warm_tag(ctx, df_path, target, base_args, builder.name),
            cache_from,
        )
        changed = _apply_change(copy, build_df, builder.name, sent, paths, edit)
        rebuild_tag = owner.scratch_tag(1)
        tags.append(rebuild_tag)
        rebuilt = dataclasses.replace(spec, context=copy, dockerfile=build_df, build_args={**base_args, **arg_changes})
        rebuild = build_image(client, rebuilt, builder=builder, tag=rebuild_tag)
        expectation = expected_misses(df, changed, arg_changes, strict=strict, build_args={**base_args, **arg_changes})
        report = CacheReport(warm, rebuild, changed, arg_changes, expectation, required, df, strict)
        if not report.ok:
            _, victim, _, culprit = report.first_unexpected()
            if culprit is not None and victim is not None and culprit.key != victim.key:
                report.advice = advise(
                    df,
                    culprit,
                    victim,
                    files=sent,
                    read=lambda rel: _read_text(ctx / rel),
                    build_args=base_args,
                )
            if verify_advice and report.advice is not None and report.advice.dockerfile is not None:
                fix = Fix(client, ctx, df_path, builder, spec, arg_changes, owner)
                fix.verify(report.advice, tmp / "fix", paths, edit, tags)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_tags(client, tags)
    return report


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


@dataclass
class Fix:
    """Builds a proposed Dockerfile as the check built the user's: same builder and settings."""

    client: docker.DockerClient
    context: Path
    dockerfile: Path
    builder: Builder
    spec: BuildSpec  # the user's: its build args, target, secrets and ssh
    arg_changes: dict[str, str]
    owner: cleanup.Owner

    def verify(
        self, advice: Advice, folder: Path, paths: Sequence[str], edit: Callable[[Path], Any] | None, tags: list[str]
    ) -> None:
        """Build ``advice.dockerfile``, make the same change, rebuild: ``advice.keep`` must hit."""
        from pytest_dockapp.core.errors import DockappError

        assert advice.dockerfile is not None
        folder.mkdir()
        sent = set(copy_context(self.context, folder, self.dockerfile, self.builder.name))
        try:
            build_df = folder / self.dockerfile.relative_to(self.context)
        except ValueError:
            build_df = folder.parent / "fix.Dockerfile"  # the Dockerfile lives outside the context
        build_df.write_text(advice.dockerfile)
        try:
            base = dict(self.spec.build_args)
            for n, args in ((2, base), (3, {**base, **self.arg_changes})):
                tags.append(self.owner.scratch_tag(n))
                spec = dataclasses.replace(self.spec, context=folder, dockerfile=build_df, build_args=args)
                record = build_image(self.client, spec, builder=self.builder, tag=tags[-1])
                if n == 2:
                    _apply_change(folder, build_df, self.builder.name, sent, paths, edit)
        except DockappError as exc:
            advice.verified = False
            advice.verify_note = f"a build of this order failed: {exc.what.splitlines()[0]}"
            return
        hits = {s.line for s in record.steps if s.cached}
        missed = [line for line in advice.keep if line not in hits]
        advice.verified = not missed
        if missed:
            advice.verify_note = "a build of this order still missed line(s) " + ", ".join(map(str, missed))


def _validate(
    df: Dockerfile, df_path: Path, ctx: Path, paths: Sequence[str], cached: Sequence[CachedPattern]
) -> dict[tuple[int, int], CachedPattern]:
    """The steps ``cached`` requires to hit; usage errors for patterns and paths that name nothing."""
    if isinstance(cached, (str, int)):
        cached = [cached]  # a (stage, text) pair must come inside the list: cached=[("build", "RUN make")]
    required: dict[tuple[int, int], CachedPattern] = {}
    for pattern in cached:
        matched = match_pattern(df, pattern)
        if not matched:
            raise CacheMarkerUsageError(
                f"cached pattern {pattern!r} matches no step of {df_path}",
                hint="use an instruction's text (prefix or glob, e.g. 'RUN npm install'), its line number, "
                "or (stage, text)",
            )
        for ins in matched:
            required[ins.key] = pattern
    for p in paths:
        full = (ctx / p).resolve()
        if not full.is_relative_to(ctx):
            raise CacheMarkerUsageError(
                f"change path {p!r} is outside the build context {ctx}",
                hint="give paths relative to the context",
            )
        if not full.exists():
            raise CacheMarkerUsageError(
                f"change path {p!r} does not exist in the build context {ctx}",
                hint="name a file that exists, relative to the context",
            )
    return required


def _apply_change(
    copy: Path,
    build_df: Path,
    builder: str,
    sent: set[str],
    paths: Sequence[str],
    edit: Callable[[Path], Any] | None,
) -> list[str]:
    """Change the copied context; return the changed files that the build sends."""
    before = _snapshot(copy)
    token = harmless_token()
    for p in paths:
        target_file = copy / p
        if target_file.is_dir():
            (target_file / ".dockapp-cache-change").write_bytes(token)
        elif target_file.exists():
            with open(target_file, "ab") as fh:
                fh.write(token)
        else:  # dockerignored: not in the copy, so it cannot reach the build
            target_file.parent.mkdir(parents=True, exist_ok=True)
            target_file.write_bytes(token)
    if edit is not None:
        edit(copy)
    after = _snapshot(copy)
    # Only files the build sends can reach it: .dockerignored changes must not miss anything.
    sent_after = set(context_files(copy, build_df, builder))
    return sorted(
        k for k in set(before) | set(after) if before.get(k) != after.get(k) and (k in sent or k in sent_after)
    )


def _remove_tags(client: docker.DockerClient, tags: Iterable[str]) -> None:
    """Remove the rebuild's image and the parents only it uses (the changed layers); parents
    shared with the warm build have other children and stay."""
    import docker.errors

    for tag in tags:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_image(tag)


def assert_cache(report: CacheReport) -> None:
    """Raise :class:`CacheRegressionError` with the full explanation when ``report`` is not ok."""
    if not report.ok:
        raise CacheRegressionError(report.explain())
