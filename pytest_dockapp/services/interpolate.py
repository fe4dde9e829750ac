"""The Compose Specification's interpolation and its ``.env`` files.

``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset),
``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+other}``, ``${VAR+other}``, and ``$$`` for a
literal ``$``. Defaults may themselves hold ``${...}`` (compose-go resolves them too).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_dockapp.core.errors import ComposeError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str], where: str) -> str:
    """``text`` with its variables replaced from ``env``; ``where`` names the place in errors."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2, where)
            out.append(_expand(text[i + 2 : end], env, where))
            i = end + 1
        else:
            m = _NAME.match(text, i + 1)
            if m is None:  # a lone `$` stays, as compose leaves it
                out.append("$")
                i += 1
            else:
                out.append(env.get(m.group(0), ""))
                i = m.end()
    return "".join(out)


def _closing_brace(text: str, start: int, where: str) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{" and text[j - 1] == "$":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise ComposeError(f"{where}: unclosed ${{ in {text!r}", hint="close it with }, or write $$ for a literal $")


def _expand(body: str, env: Mapping[str, str], where: str) -> str:
    m = _NAME.match(body)
    if m is None:
        raise ComposeError(f"{where}: invalid interpolation ${{{body}}}", hint="a name is [A-Za-z_][A-Za-z0-9_]*")
    name, rest = m.group(0), body[m.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op) :]
            break
    else:
        raise ComposeError(
            f"{where}: invalid interpolation ${{{body}}}",
            hint="valid forms: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+other}",
        )
    missing = value is None or (op.startswith(":") and value == "")
    if op.endswith("-"):
        return interpolate(arg, env, where) if missing else str(value)
    if op.endswith("+"):
        return "" if missing else interpolate(arg, env, where)
    if missing:
        message = interpolate(arg, env, where) or f"{name} is not set"
        raise ComposeError(
            f"{where}: required variable {name} is missing a value: {message}",
            hint=f"set {name} in the environment or in the .env file next to the compose file",
        )
    return str(value)


#: The most values a compose file may hold once its YAML aliases are expanded. The largest real
#: file of the parse corpus holds about 1,500; an alias bomb (nine anchors of ten aliases each)
#: expands to a billion and ended in a MemoryError after a minute.
MAX_VALUES = 100_000
#: The deepest nesting a compose file may have (real ones stay under 10).
MAX_DEPTH = 50


def interpolate_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    """Every string value of a parsed YAML tree, interpolated (keys are left as written); a tree
    over :data:`MAX_VALUES` values or :data:`MAX_DEPTH` levels is refused before it is expanded."""
    budget = [MAX_VALUES]

    def walk(node: Any, where: str, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise ComposeError(
                f"{where}: the file holds more than {MAX_VALUES:,} values once its YAML aliases are expanded",
                hint="a compose file this large is most likely an alias bomb; write fewer aliases of aliases",
            )
        if depth > MAX_DEPTH:
            raise ComposeError(f"{where}: nested deeper than {MAX_DEPTH} levels", hint="no compose key nests this deep")
        if isinstance(node, str):
            return interpolate(node, env, where)
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}", depth + 1) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, where, depth + 1) for v in node]
        return node

    return walk(node, where, 0)


def read_env_file(path: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A ``.env`` or ``env_file``: ``KEY=VALUE`` lines, ``export`` and ``#`` comments allowed;
    single-quoted values are literal, double-quoted ones know ``\\n``; unquoted values are
    interpolated with the lines above them (and ``env``) as compose does."""
    seen: dict[str, str] = {}
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not _NAME.fullmatch(key):
            raise ComposeError(
                f"{path}:{number}: {raw!r} is not KEY=VALUE",
                hint="each line of an env file is KEY=VALUE (a comment starts with #)",
            )
        if not eq:
            if env is not None and key in env:  # `KEY` alone takes the value from the environment
                seen[key] = env[key]
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            seen[key] = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            seen[key] = value[1:-1].replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.sub(r"\s+#.*$", "", value)
            seen[key] = interpolate(value, {**(env or {}), **seen}, f"{path}:{number}")
    return seen
