"""The fix for a step that a broad COPY makes rerun: which files it really reads, and a reordered
Dockerfile that keeps it cached, which the cache check then verifies by a build.

The files a step reads are the manifests of the tools it runs (``npm ci`` reads package.json
and package-lock.json in its WORKDIR), the workspace manifests those tools follow (pnpm's
``pnpm-workspace.yaml``, the ``workspaces`` of package.json) and the files its command line
names (``sh /app/install-deps.sh``). Each is found in the image where the broad COPY puts it,
and traced back to its path in the build context (``COPY app/ /app`` brings
``app/requirements.txt`` as ``/app/requirements.txt``). Only those files are copied first, and
a move keeps the step's WORKDIR and USER.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from pytest_dockapp.builds.dockerfile import (
    Dockerfile,
    Instruction,
    Scope,
    copy_sources,
    decode,
    expand,
    normalize_source,
    source_covers,
)
from pytest_dockapp.builds.dockerfile import split_words as words_of
from pytest_dockapp.cache.tools import RunReads, run_reads
from pytest_dockapp.core.redact import looks_secret

#: Reads a context file's text (None when it is missing): for workspace manifests.
Reader = Callable[[str], "str | None"]


@dataclass
class Advice:
    """How to keep ``victim`` cached although ``culprit`` copies changed files."""

    text: str
    #: The reordered Dockerfile, or None when no reorder is certain to keep the build working.
    dockerfile: str | None = None
    #: Lines of :attr:`dockerfile` that must stay cached after the change (what a build verifies).
    keep: list[int] = field(default_factory=list)
    #: The context files the fix copies first.
    copies: list[str] = field(default_factory=list)
    #: None: not verified; True: a build showed :attr:`keep` cached; False: it did not.
    verified: bool | None = None
    verify_note: str = ""

    def render(self) -> str:
        if self.verified:
            lines = f"lines {self.keep[0]}-{self.keep[-1]} stay" if len(self.keep) > 1 else f"line {self.keep[0]} stays"
            head = f"fix verified: with this order, {lines} cached after the change. "
        elif self.dockerfile is not None:
            head = f"fix (unverified{': ' + self.verify_note if self.verify_note else ''}): "
        else:
            head = "fix (unverified): "
        return head + self.text


def advise(
    df: Dockerfile,
    culprit: Instruction,
    victim: Instruction | None,
    *,
    files: Collection[str] | None = None,
    read: Reader | None = None,
    build_args: dict[str, str] | None = None,
    scopes: dict[tuple[int, int], Scope] | None = None,
) -> Advice | None:
    """The fix for ``victim``, which reruns because ``culprit`` (a COPY/ADD) copies changed files.
    ``files`` are the files the build sends and ``read`` reads one: with them, only files that
    exist are proposed, and workspace members are found. ``scopes``: :meth:`Dockerfile.scopes`,
    when the caller has them already."""
    if culprit.keyword not in ("COPY", "ADD") or victim is None:
        return None
    scopes = scopes if scopes is not None else df.scopes(build_args)
    reads = run_reads(victim)
    v_scope, c_scope = scopes[victim.key], scopes[culprit.key]
    needed = _needed(victim, reads, v_scope, read)
    copies = _traced(culprit, c_scope, needed, files)
    copies = [c for c in copies if not _copied_before(df, culprit, victim, c[0], scopes)]
    here = f"above {culprit.where} (`{culprit.text}`)"
    if reads.builds:  # the step reads the sources: it must rerun, but its dependencies need not
        tool = (reads.installs or reads.builds)[0]
        if reads.installs:
            why = (
                f"`{victim.text}` installs dependencies and reads the sources: split it. To install from the "
                "manifests alone"
            )
        else:
            why = (
                f"`{victim.text}` reads the sources, so it must rerun when they change: it cannot be cached across "
                f"this change. To keep the {tool.name} dependency download cached"
            )
            if not copies:
                return Advice(f"{why}, copy {' '.join(tool.manifests)} and run `{tool.command}` {here}")
        return _insert(df, culprit, victim, copies, [f"RUN {tool.command}"], why, v_scope, c_scope)
    if copies or reads.installs:
        return _move(df, culprit, victim, copies, v_scope, c_scope)
    return Advice(
        f"if `{victim.text}` does not need the files that `{culprit.text}` copies, move it {here}; if it does, "
        "it must rerun when they change, and cached= should not require it"
    )


# -- what the step reads, and where those files come from ---------------------------------------


def _needed(victim: Instruction, reads: RunReads, scope: Scope, read: Reader | None) -> list[str]:
    """Absolute paths in the image that ``victim`` reads: manifests, workspaces, named files."""
    wd = scope.workdir
    out: list[str] = []
    for tool in (*reads.installs, *reads.builds):
        out += [posixpath.join(wd, m) for m in tool.manifests]
        if tool.name in ("npm", "yarn", "pnpm", "bun"):
            out += _workspace_manifests(tool.name, wd, read)
    # Secret-looking variables stay unexpanded: their values must not reach the advice.
    variables = {k: v for k, v in scope.variables.items() if not looks_secret(k)}
    for token in re.split(r"[\s;&|()<>'\"=]+", expand(victim.args, variables)):
        if not token or token.startswith("-") or any(c in token for c in "$*:"):
            continue
        name = token.rsplit("/", 1)[-1]
        if re.fullmatch(r"[\w.-]*[A-Za-z_][\w-]*\.[A-Za-z][A-Za-z0-9]*", name):  # a file, not `npm` or `1.5`
            out.append(posixpath.normpath(posixpath.join(wd, token)))
    return list(dict.fromkeys(out))


def _workspace_manifests(tool: str, wd: str, read: Reader | None) -> list[str]:
    """pnpm's ``pnpm-workspace.yaml`` and the package.json of each workspace member, as globs
    under ``wd`` (matched against the context's files later)."""
    globs: list[str] = []
    extra: list[str] = []
    if read is None:
        return []
    if tool == "pnpm":
        text = read("pnpm-workspace.yaml")
        if text is not None:
            extra.append(posixpath.join(wd, "pnpm-workspace.yaml"))
            globs += re.findall(r"^\s*-\s*['\"]?([^'\"#\s]+)['\"]?", text, re.MULTILINE)
    else:
        try:
            manifest = json.loads(read("package.json") or "{}")
        except ValueError:
            manifest = {}
        spaces = manifest.get("workspaces") if isinstance(manifest, dict) else None
        if isinstance(spaces, dict):
            spaces = spaces.get("packages")
        globs += [g for g in spaces or [] if isinstance(g, str)]
    return extra + [posixpath.join(wd, g.rstrip("/"), "package.json") for g in globs if not g.startswith("!")]


def _traced(
    culprit: Instruction, scope: Scope, needed: list[str], files: Collection[str] | None
) -> list[tuple[str, str]]:
    """``(context path, image path)`` for each needed file that ``culprit`` brings."""
    sources = [expand(s, scope.variables) for s in copy_sources(culprit)]
    words = words_of(culprit.args)
    if len(sources) != 1 or len(words) < 2:
        return []
    root = normalize_source(sources[0])
    if root is None or any(ch in root for ch in "*?["):
        return []
    dest = posixpath.normpath(posixpath.join(scope.workdir, expand(words[-1], scope.variables)))
    out: list[tuple[str, str]] = []
    for path in needed:
        if not (path + "/").startswith(dest.rstrip("/") + "/"):
            continue
        rel = posixpath.relpath(path, dest)
        ctx = rel if root == "." else posixpath.join(root, rel)
        matches = [ctx] if files is None else sorted(f for f in files if fnmatch.fnmatchcase(f, ctx))
        for found in matches:
            image = posixpath.join(dest, found if root == "." else posixpath.relpath(found, root))
            if (found, image) not in out:
                out.append((found, image))
    return out


def _copied_before(
    df: Dockerfile, culprit: Instruction, victim: Instruction, ctx: str, scopes: dict[tuple[int, int], Scope]
) -> bool:
    """Whether a COPY earlier in the stage than ``culprit`` already brings ``ctx``."""
    for ins in df.stages[victim.stage].instructions:
        if ins is culprit or ins.line >= culprit.line:
            return False
        variables = scopes[ins.key].variables
        if any(source_covers(expand(s, variables), ctx) for s in copy_sources(ins)):
            return True
    return False


# -- the reordered Dockerfile -------------------------------------------------------------------


def _copy_lines(copies: list[tuple[str, str]]) -> list[str]:
    """One COPY per destination folder, in the order the files were found."""
    by_dir: dict[str, list[str]] = {}
    for ctx, image in copies:
        by_dir.setdefault(posixpath.dirname(image), []).append(ctx)
    return [f"COPY {' '.join(srcs)} {d.rstrip('/')}/" for d, srcs in by_dir.items()]


def _wrap(lines: list[str], inner: Scope, outer: Scope) -> list[str]:
    """``lines`` run with ``inner``'s WORKDIR and USER, then ``outer``'s restored."""
    before, after = [], []
    if inner.workdir != outer.workdir:
        before.append(f"WORKDIR {inner.workdir}")
        after.append(f"WORKDIR {outer.workdir}")
    if inner.user != outer.user:
        before.append(f"USER {inner.user or 'root'}")
        after.append(f"USER {outer.user or 'root'}")
    return before + lines + after


def _source(df: Dockerfile) -> list[str] | None:
    if df.path is None:
        return None
    try:
        return decode(df.path.read_bytes()).splitlines()
    except OSError:
        return None


def _reorder_safe(df: Dockerfile, culprit: Instruction, victim: Instruction) -> bool:
    """Whether steps can go above ``culprit`` for ``victim``: same stage, no trigger, and nothing
    between them that changes what the step sees but WORKDIR and USER (which are kept)."""
    if culprit.stage != victim.stage or culprit.trigger or victim.trigger or victim.line <= culprit.line:
        return False
    own = df.stages[victim.stage].instructions
    if culprit not in own or victim not in own:
        return False  # an ONBUILD block's instructions: not lines of this stage
    between = [i for i in df.stages[victim.stage].instructions if culprit.line < i.line < victim.line]
    return not any(i.keyword in ("ARG", "ENV", "SHELL", "ONBUILD") for i in between)


def _insert(
    df: Dockerfile,
    culprit: Instruction,
    victim: Instruction,
    copies: list[tuple[str, str]],
    steps: list[str],
    why: str,
    v_scope: Scope,
    c_scope: Scope,
) -> Advice:
    block = _wrap(_copy_lines(copies) + steps, v_scope, c_scope)
    text = f"{why}, add above {culprit.where} (`{culprit.text}`):\n" + "\n".join("    " + b for b in block)
    safe = copies and _reorder_safe(df, culprit, victim)
    return _reordered(text, _source(df) if safe else None, culprit, block, copies)


def _move(
    df: Dockerfile,
    culprit: Instruction,
    victim: Instruction,
    copies: list[tuple[str, str]],
    v_scope: Scope,
    c_scope: Scope,
) -> Advice:
    src = _source(df)
    moved = src[victim.line - 1 : victim.end_line] if src is not None else [victim.text]
    block = _wrap(_copy_lines(copies) + moved, v_scope, c_scope)
    what = (
        f"`{victim.text}` reads {', '.join(c for c, _ in copies)}, which `{culprit.text}` copies: copy only "
        "those first and run it there"
        if copies
        else f"`{victim.text}` reads only files copied before `{culprit.text}`: run it before that copy"
    )
    text = (
        f"{what}, so edits to other files no longer invalidate it. Add above {culprit.where}:\n"
        + "\n".join("    " + b for b in block)
        + f"\n  and remove {victim.where}"
    )
    return _reordered(text, src if _reorder_safe(df, culprit, victim) else None, culprit, block, copies, victim)


def _reordered(
    text: str,
    src: list[str] | None,
    culprit: Instruction,
    block: list[str],
    copies: list[tuple[str, str]],
    removed: Instruction | None = None,
) -> Advice:
    """The advice, with the Dockerfile ``src`` reordered: ``block`` above ``culprit``, and the
    lines of ``removed`` dropped. Without ``src`` (no safe reorder), the text alone."""
    names = [c for c, _ in copies]
    if src is None:
        return Advice(text, copies=names)
    start = culprit.line - 1
    rest = src[start:] if removed is None else src[start : removed.line - 1] + src[removed.end_line :]
    keep = [start + 1 + n for n, line in enumerate(block) if not line.startswith(("WORKDIR", "USER"))]
    return Advice(text, "\n".join(src[:start] + block + rest) + "\n", keep, names)
