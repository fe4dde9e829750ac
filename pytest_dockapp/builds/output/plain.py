"""BuildKit's ``--progress=plain`` output."""

from __future__ import annotations

import re

from pytest_dockapp.builds.output.vertices import VertexFolder

_PLAIN = re.compile(r"^#(\d+) (.*)$")
_PLAIN_DONE = re.compile(r"^DONE (\d+(?:\.\d+)?)s$")
_PLAIN_OUTPUT = re.compile(r"^\d+(?:\.\d+)? (.*)$")


class PlainParser(VertexFolder):
    """Parses ``docker build --progress=plain`` (``#N [i/n] INSTR``, ``#N CACHED``)."""

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if not line:
            return
        self.log.append(line)
        m = _PLAIN.match(line)
        if not m:
            if line.startswith(("error:", "ERROR:", "failed to solve")):
                self.error = line
            return
        key, rest = m.group(1), m.group(2)
        if key not in self.by_key:
            if rest.startswith("["):
                self.vertex(key, rest)
            return
        step = self.by_key[key]
        if rest == "CACHED":
            step.cached = True
            return
        done = _PLAIN_DONE.match(rest)
        if done:
            step.seconds = float(done.group(1))
            if step.cached is None:
                step.cached = False
            return
        if rest.startswith("ERROR"):
            step.failed = True
            step.cached = False
            step.output.append(rest)
            self.error = rest
            return
        out = _PLAIN_OUTPUT.match(rest)
        if out:
            step.output.append(out.group(1))
            self.printed(step, out.group(1))

    def finish(self) -> None:
        pass
