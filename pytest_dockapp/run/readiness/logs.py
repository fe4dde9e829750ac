"""Container logs without our own probes' lines."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import docker


PROBE_AGENT = "pytest-dockapp-probe"


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")
#: Slack around a HEALTHCHECK run: the engine stamps a line when it reads it, a little later.
_WINDOW_SLACK = 0.1


def without_probes(text: str, windows: Sequence[tuple[float, float]] = ()) -> tuple[list[str], int]:
    """The lines of ``text``, a log read with the engine's timestamps (which are dropped), without
    those of our own probes: HTTP probes by their user agent, HEALTHCHECK runs by when they ran;
    and how many were left out."""
    import calendar

    kept, hidden = [], 0
    for line in text.splitlines():
        stamp, _, message = line.partition(" ")
        m = _STAMP.match(stamp)
        if m is None:
            at, message = None, line
        else:  # RFC 3339 with up to nanoseconds, trailing zeros trimmed: what the engine writes
            at = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(f"0.{m.group(2) or 0}")
        ours = at is not None and any(a - _WINDOW_SLACK <= at <= b + _WINDOW_SLACK for a, b in windows)
        if ours or PROBE_AGENT in message:
            hidden += 1
        else:
            kept.append(message)
    return kept, hidden


def probes_note(hidden: int) -> list[str]:
    return [f"({hidden} lines of pytest-dockapp's own probe requests left out)"] if hidden else []


def log_tail(client: docker.DockerClient, container_id: str, lines: int = 30) -> str:
    """The log tail, without the access-log lines of our own probe requests."""
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=lines * 10)
    except Exception:
        return "(logs unavailable)"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    kept, hidden = without_probes(text)
    return "\n".join(kept[-lines:] + probes_note(hidden))
