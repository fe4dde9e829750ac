"""BuildKit's ``--progress=rawjson`` output (buildx 0.12 and later)."""

from __future__ import annotations

import base64
import json
import re

from pytest_dockapp.builds.output.vertices import VertexFolder


class RawJsonParser(VertexFolder):
    """Parses ``--progress=rawjson`` (buildx >= 0.12): vertices folded by digest, last wins."""

    def feed(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        try:
            status = json.loads(line)
        except ValueError:
            self.log.append(line)
            if line.startswith(("error:", "ERROR:")):
                self.error = line
            return
        for v in status.get("vertexes") or []:
            step = self.vertex(v.get("digest", ""), v.get("name", ""))
            if step is None:
                continue
            if v.get("cached"):
                step.cached = True
            elif v.get("completed") and step.cached is None:
                step.cached = False
            if v.get("started") and v.get("completed"):
                step.seconds = _rfc3339_delta(v["started"], v["completed"])
            if v.get("error"):
                step.failed, step.cached = True, False
                step.output.append(str(v["error"]))
                self.error = str(v["error"])
        for entry in status.get("logs") or []:
            step = self.by_key.get(entry.get("vertex", ""))
            data = base64.b64decode(entry.get("data", "")).decode("utf-8", "replace")
            self.log.extend(data.splitlines())
            if step is not None:
                step.output.extend(data.splitlines())
                for text in data.splitlines()[-1:]:
                    self.printed(step, text)

    def finish(self) -> None:
        pass


def _rfc3339_delta(start: str, end: str) -> float:
    from datetime import datetime

    def parse(ts: str) -> datetime:
        ts = re.sub(r"(\.\d{6})\d*", r"\1", ts.replace("Z", "+00:00"))
        return datetime.fromisoformat(ts)

    try:
        return max(0.0, (parse(end) - parse(start)).total_seconds())
    except ValueError:
        return 0.0
