"""V8's coverage (``NODE_V8_COVERAGE``) as line coverage, with no package to download.

V8 writes, per script, its functions, each with ranges of source offsets (UTF-16 code units)
and how often each ran; a function's first range is the whole function, the others blocks
inside it that ran a different number of times. A line's count is that of the innermost range
that holds its first non-blank character, as c8 and v8-to-istanbul count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

#: Lines by count, per file: what one container's coverage adds to the session's.
Hits = dict[int, int]


def script_path(url: str) -> str | None:
    """The path in the container of a script V8 names by ``file://`` URL (None: Node's own)."""
    if not url.startswith("file://"):
        return None
    path = unquote(urlsplit(url).path)
    return None if "/node_modules/" in path else path


def line_hits(source: str, functions: Iterable[Mapping[str, Any]]) -> Hits:
    """The count of each non-blank line of ``source`` (1-based)."""
    ranges = sorted(
        ((int(r["startOffset"]), int(r["endOffset"]), int(r["count"])) for f in functions for r in f["ranges"]),
        key=lambda r: (r[0], -r[1]),
    )
    hits: Hits = {}
    offset = 0  # in UTF-16 code units, as V8 counts
    for number, line in enumerate(source.splitlines(keepends=True), start=1):
        stripped = line.lstrip()
        if stripped.strip():
            pos = offset + _units(line[: len(line) - len(stripped)])
            count = None
            for start, end, n in ranges:  # sorted so that the last range holding pos is the innermost
                if start > pos:
                    break
                if pos < end:
                    count = n
            if count is not None:
                hits[number] = count
        offset += _units(line)
    return hits


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def add(into: dict[Path, Hits], path: Path, hits: Hits) -> None:
    """Add ``hits`` to the session's counts of ``path``."""
    lines = into.setdefault(path, {})
    for number, count in hits.items():
        lines[number] = lines.get(number, 0) + count


def ranges(numbers: Sequence[int]) -> str:
    """``40-44, 50``: sorted line numbers, runs folded."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and runs[-1][1] == n - 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def lcov(files: Mapping[Path, Hits]) -> str:
    """The counts in LCOV's tracefile format, which CI coverage services read."""
    records = []
    for path, hits in sorted(files.items()):
        lines = [f"DA:{n},{c}" for n, c in sorted(hits.items())]
        hit = sum(1 for c in hits.values() if c > 0)
        records.append("\n".join(["TN:", f"SF:{path}", *lines, f"LF:{len(hits)}", f"LH:{hit}", "end_of_record"]))
    return "\n".join(records) + ("\n" if records else "")
