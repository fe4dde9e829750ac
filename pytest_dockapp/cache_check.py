"""Layer-cache expectations: which steps may miss after a change, and which did.

A cache check copies the build context (minus ``.dockerignore``d files) to a
temporary folder, builds it once, applies a change, rebuilds with the same
builder and settings, and compares step by step. The steps that *may* miss are
computed from the Dockerfile: the first step that consumes a changed file (or a
changed build arg) and every later step of its stage and of the stages built on
it. Every other step must be a cache hit.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from . import cleanup
from .build import BuildRecord, BuildStep, build_image, resolve_paths, spec_digest
from .context import context_files, copy_context
from .dockerfile import Dockerfile, Instruction, consumed_files, mount_specs, normalize, split_words
from .engine import Builder
from .errors import CacheMarkerUsageError, CacheRegressionError
from .lint import fix_advice

if TYPE_CHECKING:
    import docker

Change = Union[str, os.PathLike[str]]
ChangeSpec = Union[Sequence[Change], Callable[[Path], Any], None]
CachedPattern = Union[str, int, tuple[str, str]]
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


# -- expectations -------------------------------------------------------------------------------


@dataclass
class Expectation:
    """Which instructions may miss after a change, and why each may."""

    # Keyed by the instruction's first Dockerfile line: unique, and stable across re-parses.
    may_miss: dict[int, str] = field(default_factory=dict)  # line -> reason
    origin: dict[int, Instruction] = field(default_factory=dict)  # line -> the first step that missed

    def allows(self, ins: Instruction | None) -> bool:
        return ins is not None and ins.line in self.may_miss


def expected_misses(df: Dockerfile, changed_files: Iterable[str], changed_args: Iterable[str] = ()) -> Expectation:
    """Compute the steps a rebuild may miss after ``changed_files`` and ``changed_args`` change."""
    files = sorted(set(changed_files))
    args = set(changed_args)
    exp = Expectation()
    dirty_stages: set[int] = set()
    meta_changed = args & set(df.meta_args)
    for stage in df.stages:
        first: tuple[Instruction, str] | None = None
        base_refs = df.direct_stage_refs(stage)
        from_ins = stage.instructions[0]
        base_stage = next((i for i in base_refs if df.stages[i].is_named(stage.base)), None)
        if base_stage is not None and base_stage in dirty_stages:
            first = (from_ins, f"its base stage {df.stages[base_stage].label} was rebuilt")
        elif any(re.search(rf"\$\{{?{re.escape(a)}\b", stage.base) for a in meta_changed):
            first = (from_ins, "its FROM uses a changed build arg")
        declared: set[str] = set()
        for ins in stage.instructions[1:]:
            if first is not None:
                break
            if ins.keyword == "ARG":
                declared |= {w.partition("=")[0] for w in split_words(ins.args)} & args
                continue
            hit = consumed_files(ins, files)
            if hit:
                first = (ins, f"copies {_names(hit)}, which changed")
                continue
            ref = ins.flags.get("from") or next((m.get("from", "") for m in mount_specs(ins) if "from" in m), "")
            if ref and any(df.stages[i].is_named(ref) for i in dirty_stages):
                first = (ins, f"copies from stage {ref}, which was rebuilt")
                continue
            used = {a for a in declared if ins.keyword == "RUN" or re.search(rf"\$\{{?{re.escape(a)}\b", ins.value)}
            if used:
                first = (ins, "build arg " + ", ".join(sorted(used)) + " changed")
        if first is None:
            continue
        dirty_stages.add(stage.index)
        origin, reason = first
        started = False
        for ins in stage.instructions:
            if ins is origin:
                started = True
                exp.may_miss[ins.line] = reason
            elif started:
                exp.may_miss[ins.line] = f"follows line {origin.line} ({_short(origin)}), which missed"
            if started:
                exp.origin[ins.line] = origin
    return exp


def _names(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _short(ins: Instruction) -> str:
    text = ins.text
    return text if len(text) <= 40 else text[:37] + "..."


# -- cached= patterns ---------------------------------------------------------------------------


def match_pattern(df: Dockerfile, pattern: CachedPattern) -> list[Instruction]:
    """Instructions a ``cached=`` pattern selects: text prefix or glob, line, or (stage, text)."""
    if isinstance(pattern, bool):
        raise CacheMarkerUsageError(f"cached pattern {pattern!r} is not a text, a line number or (stage, text)")
    if isinstance(pattern, int):
        return [i for i in df.instructions if i.line <= pattern <= i.end_line and i.stage >= 0]
    stage_ref: str | None = None
    text: Any = pattern
    if isinstance(pattern, tuple) and len(pattern) == 2:
        stage_ref, text = pattern
    if not isinstance(text, str):
        raise CacheMarkerUsageError(
            f"cached pattern {pattern!r} is not a text, a line number or (stage, text)",
            hint='e.g. cached=["RUN npm install", 12, ("build", "RUN go mod download")]',
        )
    want = normalize(text).lower()
    out = []
    for ins in df.instructions:
        if ins.stage < 0:
            continue
        if stage_ref is not None:
            st = df.stages[ins.stage]
            if not (st.label.lower() == str(stage_ref).lower() or str(ins.stage) == str(stage_ref)):
                continue
        have = ins.text.lower()
        if (any(ch in want for ch in "*?[") and fnmatch.fnmatchcase(have, want)) or have.startswith(want):
            out.append(ins)
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
    required: dict[int, CachedPattern]  # instruction line -> the cached= pattern that selected it
    dockerfile: Dockerfile

    @property
    def steps(self) -> list[BuildStep]:
        return self.rebuild.steps

    @property
    def hits(self) -> list[BuildStep]:
        return self.rebuild.hits

    @property
    def misses(self) -> list[BuildStep]:
        return self.rebuild.misses

    @property
    def unexpected(self) -> list[BuildStep]:
        """Misses outside the computed set, or of steps a ``cached=`` pattern selected."""
        return [
            s
            for s in self.rebuild.misses
            if not self.expectation.allows(s.instruction) or (s.line is not None and s.line in self.required)
        ]

    @property
    def ok(self) -> bool:
        return not self.unexpected

    def step(self, pattern: CachedPattern) -> BuildStep:
        """The rebuild's step selected by ``pattern`` (as for ``cached=``)."""
        lines = {i.line for i in match_pattern(self.dockerfile, pattern)}
        for s in self.rebuild.steps:
            if s.line in lines:
                return s
        raise CacheMarkerUsageError(f"no built step matches {pattern!r}")

    def explain(self) -> str:
        """The failure message: what missed, the table, who invalidated it and how to fix it."""
        bad = self.unexpected
        if not bad:
            return "every step was cached as expected"
        first = bad[0]
        where = f"{self.dockerfile.path}:{first.line}" if first.line else str(self.dockerfile.path)
        change = ", ".join(self.changed_files + [f"--build-arg {k}" for k in self.changed_args]) or "nothing"
        if first.line is not None and first.line in self.required:
            pat = self.required[first.line]
            head = (
                f"cache regression: step {first.index} `{first.text}` ({where}) missed the cache, "
                f"but cached={pat!r} requires a hit"
            )
        else:
            head = f"unexpected cache miss: step {first.index} `{first.text}` ({where}) after changing {change}"
        lines = [head]
        origin = self.expectation.origin.get(first.line) if first.line is not None else None
        if origin is not None and origin.line != first.line:
            lines.append(
                f"invalidated by line {origin.line} `{origin.text}`: {self.expectation.may_miss[origin.line]}; "
                "every later step of the stage rebuilds"
            )
            fix = fix_advice(origin, first.instruction)
            if fix:
                lines.append(f"fix: {fix}")
        elif origin is not None:
            lines.append(f"it {self.expectation.may_miss[origin.line]}")
        else:
            lines.append(
                "nothing in the change reaches this step: the builder did not reuse its cache "
                "(was the cache pruned, a base image re-pulled, or the step made non-deterministic?)"
            )
        marks: dict[int, str] = {}
        for s in self.rebuild.steps:
            if s in bad:
                marks[s.index] = "<-- must be cached" if s.line in self.required else "<-- unexpected miss"
            elif origin is not None and s.line == origin.line:
                marks[s.index] = "<-- invalidated here"
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


def check_cache(
    client: docker.DockerClient,
    context: str | os.PathLike[str],
    dockerfile: str | os.PathLike[str] | None = None,
    *,
    builder: Builder,
    change: ChangeSpec = None,
    cached: Sequence[CachedPattern] = (),
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    session: cleanup.Session | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> CacheReport:
    """Build a copy of the context, change it, rebuild, and compare the two builds' cache use.

    The user's tree is never touched. Raises :class:`CacheMarkerUsageError` for a
    change path that is not in the context or a ``cached`` pattern that matches no step.
    """
    ctx, df_path = resolve_paths(context, dockerfile)
    df = Dockerfile.read(df_path)
    paths, arg_changes, edit = parse_change(change)
    if isinstance(cached, (str, int)):
        cached = [cached]  # a (stage, text) pair must come inside the list: cached=[("build", "RUN make")]
    required: dict[int, CachedPattern] = {}
    for pattern in cached:
        matched = match_pattern(df, pattern)
        if not matched:
            raise CacheMarkerUsageError(
                f"cached pattern {pattern!r} matches no step of {df_path}",
                hint="use an instruction's text (prefix or glob, e.g. 'RUN npm install'), its line number, "
                "or (stage, text)",
            )
        for ins in matched:
            required[ins.line] = pattern
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
    session = session or cleanup.Session()
    base_args = dict(build_args or {})
    tmp = Path(tempfile.mkdtemp(prefix="dockapp-cache-", dir=workdir))
    tags: list[str] = []
    try:
        copy = tmp / "context"
        copy.mkdir()
        sent = set(copy_context(ctx, copy, df_path, builder.name))
        try:
            rel_df: Path = df_path.relative_to(ctx)
            build_df: Path = copy / rel_df
        except ValueError:
            build_df = df_path
        # The warm build is the user's own layer cache: it keeps a stable tag and stays, since
        # removing it would drop its last layer and make the next check's warm build miss there.
        # The rebuild holds the changed, never-again-useful layers: those are removed below.
        rebuild_tag = session.scratch_tag(1)
        warm = build_image(
            client,
            copy,
            build_df,
            builder=builder,
            build_args=base_args,
            target=target,
            tag=warm_tag(ctx, df_path, target, base_args, builder.name),
        )
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
        sent_after = set(context_files(copy, build_df, builder.name))
        changed_sent = sorted(
            k for k in set(before) | set(after) if before.get(k) != after.get(k) and (k in sent or k in sent_after)
        )
        rebuild = build_image(
            client,
            copy,
            build_df,
            builder=builder,
            build_args={**base_args, **arg_changes},
            target=target,
            tag=rebuild_tag,
        )
        tags.append(rebuild_tag)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_tags(client, tags)
    expectation = expected_misses(df, changed_sent, arg_changes)
    return CacheReport(warm, rebuild, changed_sent, arg_changes, expectation, required, df)


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
