"""The plugin's small JSON files under ``$XDG_CACHE_HOME`` (or ``~/.cache``)/pytest-dockapp.

They only save time: a missing, damaged or unwritable file means asking or building again.
Several sessions (and pytest-xdist workers) share them, so every change is a read-modify-write
under a file lock, and every write replaces the whole file atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The most values a kept parse may hold: more is no file a person wrote (or an alias bomb,
#: whose JSON would be its whole expansion).
MEMO_VALUES = 20_000
#: Parses kept per kind; the oldest go first.
MEMO_KEEP = 64

#: How long a writer waits for another session's write (each takes about a millisecond).
LOCK_TIMEOUT = 10.0


def cache_file(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pytest-dockapp" / name


def load(path: Path) -> dict[str, Any]:
    """The file's JSON object; empty when it is missing or damaged."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to the file's object under a lock, so that concurrent sessions lose
    none of each other's entries. Errors (no lock in time, unwritable folder) are ignored."""
    from pytest_dockapp.core.locks import FileLock

    with contextlib.suppress(OSError):  # a LockTimeout is one
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT):
            data = load(path)
            change(data)
            _replace(path, json.dumps(data))


def _replace(path: Path, text: str, private: bool = False) -> None:
    """Write ``text`` to ``path`` at once (a reader sees the old file or the new one); ``private``:
    readable by its owner only."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o666), "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def memo(kind: str, text: str, make: Callable[[str], Any], keep: Callable[[Any], bool] = lambda v: True) -> Any:
    """``make(text)``, kept as JSON under the text's digest for the next session, which reads it
    instead (a compose file parsed by PyYAML: its import and parse, 15-20 ms, against 0.2 ms). A
    value that ``keep`` refuses, that JSON does not give back as it was, or that is too large, is
    not kept; what is kept is readable by its owner only."""
    path = cache_file(f"{kind}/{hashlib.sha256(text.encode()).hexdigest()[:32]}.json")
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    value = make(text)
    with contextlib.suppress(OSError, TypeError, ValueError, RecursionError):
        if _small(value, [MEMO_VALUES]) and keep(value) and json.loads(dumped := json.dumps(value)) == value:
            path.parent.mkdir(parents=True, exist_ok=True)
            _replace(path, dumped, private=True)
            kept = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
            for old in kept[:-MEMO_KEEP]:
                old.unlink(missing_ok=True)
    return value


def _small(value: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(value, dict):
        return all(_small(v, budget) for v in value.values())
    if isinstance(value, list):
        return all(_small(v, budget) for v in value)
    return True


def kept_text(kind: str, text: str, suffix: str = "") -> Path:
    """``text`` in a file of its own, named by its digest, readable by its owner only: the same
    text is the same file in every session (an inline Dockerfile, whose build is then reused)."""
    path = cache_file(f"{kind}/{hashlib.sha256(text.encode()).hexdigest()[:32]}{suffix}")
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, text, private=True)
        kept = sorted(path.parent.glob(f"*{suffix}"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MEMO_KEEP]:
            old.unlink(missing_ok=True)
    return path
