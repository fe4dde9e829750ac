"""A Dockerfile parser that keeps line numbers.

Neither builder reports Dockerfile lines (BuildKit names carry none and the
classic ``Step N/M`` counts every instruction), so build steps are mapped back to
the file with this parse. It follows the reference grammar: parser directives,
the escape character, line continuations, comments inside continuations, JSON
and shell forms, leading ``--flags`` and heredocs.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_dockapp.core.errors import DockerfileError

KNOWN_INSTRUCTIONS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)

#: Instructions that BuildKit turns into a build vertex (``[stage i/n]``).
VERTEX_INSTRUCTIONS = frozenset({"FROM", "RUN", "COPY", "ADD", "WORKDIR"})

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Instruction:
    """One instruction, with the 1-based lines it spans in the file."""

    keyword: str
    value: str
    line: int
    end_line: int
    stage: int
    flags: Mapping[str, str] = field(default_factory=dict)
    args: str = ""
    heredocs: tuple[str, ...] = ()
    #: For an ONBUILD trigger fired by this stage's FROM: its 1-based position among the
    #: triggers (its ``line`` is the FROM's). 0 for the Dockerfile's own instructions.
    trigger: int = 0

    @property
    def key(self) -> tuple[int, int]:
        """Identifies the step in its Dockerfile: its first line, and its trigger position."""
        return (self.line, self.trigger)

    @property
    def where(self) -> str:
        """``line 12``, or ``line 1 (ONBUILD trigger 2 of the base image)``."""
        return f"line {self.line}" + (f" (ONBUILD trigger {self.trigger} of its base)" if self.trigger else "")

    @property
    def text(self) -> str:
        """The instruction as written, continuations joined, whitespace folded."""
        return normalize(f"{self.keyword} {self.value}")

    def __str__(self) -> str:
        return self.text


@dataclass
class Stage:
    """A build stage: its ``FROM`` and the instructions that follow it."""

    index: int
    name: str | None
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The name BuildKit prints for this stage (``stage-N`` when unnamed)."""
        return self.name or f"stage-{self.index}"

    @property
    def triggers(self) -> list[Instruction]:
        """The ONBUILD triggers this stage's FROM fires (see :meth:`Dockerfile.with_triggers`)."""
        return [i for i in self.instructions if i.trigger]

    def is_named(self, ref: str) -> bool:
        """Whether ``ref`` (as in ``FROM ref`` or ``COPY --from=ref``) names this stage."""
        return (self.name is not None and self.name.lower() == ref.lower()) or ref == str(self.index)


def decode(data: bytes) -> str:
    """A Dockerfile's bytes as text. Docker reads the file as bytes: a Latin-1 comment or a
    byte-order mark builds on both builders, so neither may stop us (invalid bytes only ever
    matter in comments)."""
    return data.decode("utf-8-sig", errors="replace")


def normalize(text: str) -> str:
    """Fold runs of whitespace so instruction texts compare reliably."""
    return " ".join(text.split())


def expand(text: str, variables: Mapping[str, str | None]) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alt}``."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(4)
        value = variables.get(name)
        op, word = m.group(2), m.group(3)
        if op in (":-", "-"):
            return value if value else expand(word or "", variables)
        if op in (":+", "+"):
            return expand(word or "", variables) if value else ""
        return value or ""

    return _VAR.sub(sub, text)


def split_flags(value: str) -> tuple[dict[str, str], str]:
    """Split leading ``--name=value`` flags from an instruction's arguments."""
    flags: dict[str, str] = {}
    rest = value.lstrip()
    while rest.startswith("--"):
        token, _, remainder = rest.partition(" ")
        name, eq, flag_value = token[2:].partition("=")
        if not name:
            break
        flags[name.lower()] = flag_value if eq else "true"
        rest = remainder.lstrip()
    return flags, rest


def split_words(args: str) -> list[str]:
    """Arguments of a JSON-form or shell-form instruction, as a list."""
    stripped = args.strip()
    if stripped.startswith("["):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            pass
        else:
            if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
                return parsed
    try:
        return shlex.split(stripped, posix=True)
    except ValueError:
        return stripped.split()


class Dockerfile:
    """A parsed Dockerfile."""

    def __init__(
        self, instructions: list[Instruction], path: Path | None = None, escape: str = "\\", syntax: str | None = None
    ):
        self.path = path
        self.escape = escape
        self.syntax = syntax  # the ``# syntax=`` frontend image, if any
        self.instructions = instructions
        self.stages: list[Stage] = []
        self.meta_args: dict[str, str | None] = {}
        for ins in instructions:
            if ins.keyword == "FROM":
                words = ins.args.split()
                name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
                self.stages.append(Stage(len(self.stages), name, words[0] if words else "", ins.line))
            if ins.stage < 0:
                if ins.keyword == "ARG":
                    self.meta_args.update(_arg_defaults(ins.args))
            else:
                self.stages[ins.stage].instructions.append(ins)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def read(cls, path: str | Path) -> Dockerfile:
        """Read and parse ``path``, raising :class:`DockerfileError` with the fix."""
        p = Path(path)
        try:
            text = decode(p.read_bytes())
        except FileNotFoundError:
            raise DockerfileError(
                f"Dockerfile not found: {p}",
                hint="set dockapp_dockerfile (ini or --dockapp-dockerfile) or dockapp_context "
                "to the folder that holds your Dockerfile",
            ) from None
        except OSError as exc:
            raise DockerfileError(f"cannot read Dockerfile {p}: {exc}") from None
        return cls.parse(text, p)

    @classmethod
    def parse(cls, text: str, path: Path | None = None) -> Dockerfile:
        """Parse Dockerfile source ``text``."""
        lines = text.removeprefix("\ufeff").splitlines()
        escape = "\\"
        syntax = None
        i = 0
        # Parser directives are only honoured before the first comment, blank line or instruction.
        while i < len(lines):
            m = _DIRECTIVE.match(lines[i].strip())
            if not m:
                break
            if m.group(1).lower() == "escape":
                escape = m.group(2)
            elif m.group(1).lower() == "syntax":
                syntax = m.group(2)
            i += 1
        where = str(path) if path else "Dockerfile"
        instructions: list[Instruction] = []
        stage = -1
        while i < len(lines):
            raw = lines[i].strip()
            if not raw or raw.startswith("#"):
                i += 1
                continue
            start = i
            joined, i = _joined(lines, i, escape)
            keyword, _, value = joined.partition(" ")
            keyword = keyword.upper()
            if keyword not in KNOWN_INSTRUCTIONS:
                raise DockerfileError(
                    f"{where}:{start + 1}: unknown instruction {keyword!r}",
                    evidence=lines[start],
                    evidence_title="line",
                    hint="check the spelling; valid instructions are " + ", ".join(sorted(KNOWN_INSTRUCTIONS)),
                )
            heredocs: list[str] = []
            if keyword in ("RUN", "COPY", "ADD"):
                heredocs, i = _heredocs(lines, i, value)
            if keyword == "FROM":
                if not value.strip():
                    raise DockerfileError(
                        f"{where}:{start + 1}: FROM names no image", hint="write FROM <image> (or FROM scratch)"
                    )
                stage += 1
            flags, args = split_flags(value)
            instructions.append(
                Instruction(
                    keyword=keyword,
                    value=value.strip(),
                    line=start + 1,
                    end_line=i + 1,
                    stage=stage,
                    flags=flags,
                    args=args,
                    heredocs=tuple(heredocs),
                )
            )
            i += 1
        if not any(ins.keyword == "FROM" for ins in instructions):
            raise DockerfileError(
                f"{where} has no FROM instruction" + ("" if instructions else " (it is empty)"),
                hint="a Dockerfile starts with FROM <image> (or FROM scratch)",
            )
        if instructions[0].keyword not in ("FROM", "ARG"):
            first = instructions[0]
            raise DockerfileError(
                f"{where}:{first.line}: {first.keyword} comes before the first FROM",
                hint="only ARG may come before FROM",
            )
        return cls(instructions, path, escape, syntax)

    def with_triggers(
        self, base_triggers: Mapping[str, Sequence[str]] | None = None, build_args: Mapping[str, str] | None = None
    ) -> Dockerfile:
        """Insert the ONBUILD triggers each stage's FROM fires, right after it, as steps of that
        stage (both builders run them there): a stage built on an earlier stage fires that
        stage's ``ONBUILD`` instructions; one built on an image fires the image's
        ``Config.OnBuild``, given in ``base_triggers`` by image reference as written in FROM
        (ARGs expanded). Idempotent."""
        variables = self.arg_values(build_args)
        for st in self.stages:
            st.instructions = [i for i in st.instructions if not i.trigger]
            parent = next((o for o in self.stages[: st.index] if o.is_named(st.base)), None)
            if parent is not None:
                texts = [i.args for i in parent.instructions if i.keyword == "ONBUILD" and not i.trigger]
            else:
                texts = list((base_triggers or {}).get(expand(st.base, variables), []))
            st.instructions[1:1] = [
                replace(t, line=st.line, end_line=st.line, stage=st.index, trigger=n)
                for n, t in enumerate(parse_triggers(texts), 1)
            ]
        return self

    def steps(self) -> list[Instruction]:
        """Every instruction of every stage in build order, ONBUILD triggers included."""
        return [i for st in self.stages for i in st.instructions]

    # -- queries ----------------------------------------------------------------------------

    def stage(self, ref: str | int) -> Stage:
        """The stage named ``ref`` or numbered ``ref``."""
        for st in self.stages:
            if st.name is not None and st.name.lower() == str(ref).lower():
                return st
        if isinstance(ref, int) or str(ref).isdigit():
            idx = int(ref)
            if 0 <= idx < len(self.stages):
                return self.stages[idx]
        names = ", ".join(s.label for s in self.stages)
        raise DockerfileError(
            f"{self.path or 'Dockerfile'} has no stage {ref!r}",
            hint=f"the stages are: {names}",
        )

    def target_stage(self, target: str | None) -> Stage:
        """The stage a build with ``--target target`` ends at (the last one by default)."""
        return self.stage(target) if target else self.stages[-1]

    def stage_dependencies(self, stage: Stage) -> set[int]:
        """Indexes of the stages ``stage`` needs, itself included, transitively."""
        needed: set[int] = set()
        todo = [stage.index]
        while todo:
            idx = todo.pop()
            if idx in needed:
                continue
            needed.add(idx)
            for ref in self.direct_stage_refs(self.stages[idx]):
                todo.append(ref)
        return needed

    def direct_stage_refs(self, stage: Stage) -> set[int]:
        """Earlier stages that ``stage`` uses through FROM, COPY --from or RUN --mount from=."""
        refs: set[int] = set()
        candidates = [stage.base]
        for ins in stage.instructions:
            if "from" in ins.flags:
                candidates.append(ins.flags["from"])
            if ins.keyword == "RUN":
                for mount in mount_specs(ins):
                    if "from" in mount:
                        candidates.append(mount["from"])
        for ref in candidates:
            refs.update(other.index for other in self.stages[: stage.index] if other.is_named(ref))
        return refs

    def base_images(self, build_args: Mapping[str, str] | None = None) -> list[tuple[Stage, str]]:
        """External base images (not earlier stages, not scratch), ARGs expanded. A FROM that
        expands to nothing is a :class:`DockerfileError` naming the ARG to pass."""
        variables = self.arg_values(build_args)
        out = []
        for st in self.stages:
            image = expand(st.base, variables)
            if not image.strip():
                names = [m.group(1) or m.group(4) for m in _VAR.finditer(st.base)]
                missing = [n for n in names if not variables.get(n)]
                raise DockerfileError(
                    f"{self.path or 'Dockerfile'}:{st.line}: `FROM {st.base}` names no image: "
                    + ", ".join(f"ARG {n}" for n in missing or names)
                    + " has no default and no value",
                    hint="pass "
                    + " ".join(f"--dockapp-build-arg {n}=<image>" for n in missing or names)
                    + " (or dockapp_build_args in the ini file, or build_args= on the factory), or give the ARG "
                    "a default",
                )
            earlier = {s.name.lower() for s in self.stages[: st.index] if s.name}
            if image.lower() != "scratch" and image.lower() not in earlier:
                out.append((st, image))
        return out

    def scopes(self, build_args: Mapping[str, str] | None = None) -> dict[tuple[int, int], Scope]:
        """Per instruction (by key): the variables it sees and the WORKDIR and USER in effect.

        An ARG takes the build arg's value, else its default, else the meta ARG's; an ENV
        (also inherited from a parent stage) wins over an ARG of the same name, as in Docker.
        """
        args = dict(build_args or {})
        meta = self.arg_values(args)
        out: dict[tuple[int, int], Scope] = {}
        ends: dict[int, Scope] = {}  # stage -> its scope after its last instruction
        for st in self.stages:
            parent = next((o for o in self.stages[: st.index] if o.is_named(st.base)), None)
            inherited = ends.get(parent.index) if parent is not None else None
            env = dict(inherited.env) if inherited else {}
            workdir, user = (inherited.workdir, inherited.user) if inherited else ("/", "")
            argv: dict[str, str] = {}
            for ins in st.instructions:
                out[ins.key] = Scope({**argv, **env}, env, workdir, user)
                variables = {**argv, **env}
                if ins.keyword == "ARG":
                    for name, default in _arg_defaults(ins.args).items():
                        value = args.get(name, expand(default, variables) if default is not None else meta.get(name))
                        if value is not None:
                            argv[name] = value
                elif ins.keyword == "ENV":
                    env.update({k: expand(v, variables) for k, v in _env_pairs(ins.args).items()})
                elif ins.keyword == "WORKDIR":
                    path = expand(split_words(ins.args)[0] if ins.args.strip() else "/", variables)
                    workdir = posixpath.normpath(posixpath.join(workdir, path))
                elif ins.keyword == "USER":
                    user = expand(ins.args.strip(), variables)
            ends[st.index] = Scope({**argv, **env}, env, workdir, user)
        return out

    def arg_values(self, build_args: Mapping[str, str] | None = None) -> dict[str, str | None]:
        """Meta ARG values after applying ``build_args``."""
        values = dict(self.meta_args)
        for key, value in (build_args or {}).items():
            if key in values:
                values[key] = value
        return values

    def exposed_ports(self, target: str | None = None) -> list[str]:
        """Ports EXPOSEd by the target stage itself, as ``"80/tcp"`` strings."""
        ports: list[str] = []
        for ins in self.target_stage(target).instructions:
            if ins.keyword == "EXPOSE":
                for word in ins.args.split():
                    ports.append(word if "/" in word else f"{word}/tcp")
        return ports


def _joined(lines: list[str], i: int, escape: str) -> tuple[str, int]:
    """The instruction starting at line ``i``, its continuation lines joined (comment and blank
    lines inside a continuation are dropped), and the index of its last line."""
    parts: list[str] = []
    line = lines[i].rstrip()
    while line.endswith(escape) and i + 1 < len(lines):
        parts.append(line[: -len(escape)])
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
            i += 1
        line = lines[i].rstrip() if i < len(lines) else ""
    parts.append(line[: -len(escape)] if line.endswith(escape) else line)
    return " ".join(p.strip() for p in parts), i


def _heredocs(lines: list[str], i: int, value: str) -> tuple[list[str], int]:
    """The bodies of the heredocs ``value`` opens after line ``i``, and the index of the last line."""
    heredocs: list[str] = []
    for m in _HEREDOC.finditer(value):
        strip_tabs, terminator = m.group(1) == "-", m.group(3)
        body: list[str] = []
        i += 1
        while i < len(lines):
            candidate = lines[i].lstrip("\t") if strip_tabs else lines[i]
            if candidate == terminator:
                break
            body.append(lines[i])
            i += 1
        heredocs.append("\n".join(body))
    return heredocs, i


@dataclass(frozen=True)
class Scope:
    """What an instruction sees: variables (ARG and ENV), the ENV alone, WORKDIR and USER."""

    variables: Mapping[str, str]
    env: Mapping[str, str]
    workdir: str
    user: str


def _env_pairs(args: str) -> dict[str, str]:
    """``ENV A=1 B="two"`` (or the legacy ``ENV A one value``) as a mapping."""
    words = split_words(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words if "=" in w)


def _arg_defaults(args: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for word in split_words(args):
        name, eq, default = word.partition("=")
        out[name] = default if eq else None
    return out


def mount_specs(ins: Instruction) -> list[dict[str, str]]:
    """The ``--mount=`` specs of a RUN instruction, each as a dict."""
    specs = []
    for m in re.finditer(r"--mount=(\S+)", ins.value):
        spec: dict[str, str] = {}
        for item in m.group(1).split(","):
            key, eq, value = item.partition("=")
            spec[key.lower()] = value if eq else "true"
        specs.append(spec)
    return specs


def parse_triggers(texts: Iterable[str]) -> list[Instruction]:
    """ONBUILD trigger texts (``COPY . /app``) parsed as the instructions of a stage."""
    lines = [t for t in texts if t.strip()]
    return Dockerfile.parse("FROM scratch\n" + "\n".join(lines) + "\n").instructions[1:] if lines else []


def copy_sources(ins: Instruction) -> list[str]:
    """Context sources of a COPY/ADD (empty for ``--from`` copies and heredocs)."""
    if ins.keyword not in ("COPY", "ADD") or "from" in ins.flags:
        return []
    words = split_words(ins.args)
    sources = words[:-1]
    return [s for s in sources if not s.startswith("<<") and "://" not in s]


# -- matching COPY sources ----------------------------------------------------------------------


def _go_glob(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match, which Docker uses for COPY sources: ``*`` stays within a segment."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
                i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def normalize_source(source: str) -> str | None:
    """A COPY/ADD source as a clean path relative to the context (``"."`` for all of it),
    or None when it climbs out of the context (``..`` past its root)."""
    src = posixpath.normpath("/" + source.strip()).lstrip("/") or "."
    # normpath keeps a leading "//" and folds "/.."; a source written as "../x" climbs out.
    parts = [p for p in source.strip().split("/") if p not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return None
    return src


def source_covers(source: str, path: str) -> bool:
    """Whether COPY/ADD source ``source`` sends context file ``path``; a source that climbs out
    of the context is taken to read all of it (the builder decides what it means)."""
    src = normalize_source(source)
    if src is None or src == ".":
        return True
    if any(ch in src for ch in "*?["):
        rx = _go_glob(src)
        parts = path.split("/")
        return any(rx.match("/".join(parts[:n])) for n in range(1, len(parts) + 1))
    return path == src or path.startswith(src + "/")


def consumed_files(
    ins: Instruction, changed: Iterable[str], variables: Mapping[str, str | None] | None = None
) -> list[str]:
    """The changed context files that ``ins`` reads (COPY/ADD sources, RUN bind mounts), with
    ``variables`` expanded in them (``COPY ${JAR_FILE} app.jar``)."""
    sources = list(copy_sources(ins))
    if ins.keyword == "RUN":
        for mount in mount_specs(ins):
            if mount.get("type") == "bind" and "from" not in mount:
                sources.append(mount.get("source") or mount.get("src") or ".")
    if variables:
        sources = [expand(s, variables) for s in sources]
    return [p for p in changed if any(source_covers(s, p) for s in sources)]
