"""One SQL client kept running in a service's container, fed through the exec's stdin: a
statement costs a round trip, not an exec (about 60 ms here each)."""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING

from pytest_dockapp.core.errors import DockappError

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp

DONE = "__dockapp_done__"


class SqlSession:
    """``cmd`` (``psql``, ``mariadb``) running in ``app``'s container; :meth:`run` sends SQL and
    reads its output up to ``done`` (a statement that prints :data:`DONE`). A stderr line that
    matches ``errors`` is a :class:`DockappError` with ``hint``."""

    def __init__(self, app: DockApp, cmd: list[str], *, done: str, errors: str, quit: str, hint: str):
        api = app.container.client.api
        exec_id = api.exec_create(app.container.id, cmd, stdin=True, stdout=True, stderr=True)["Id"]
        self._stream = api.exec_start(exec_id, socket=True)
        self._sock = getattr(self._stream, "_sock", self._stream)
        self._name, self._done, self._errors, self._quit, self._hint = cmd[0], done, errors, quit, hint
        self._service = app.service or app.name

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sock.sendall(self._quit.encode())
            self._stream.close()

    def run(self, sql: str) -> list[str]:
        """The output lines of ``sql``; an error (or the client ending) is a :class:`DockappError`."""
        from docker.utils.socket import next_frame_header, read_exactly

        self._sock.sendall(f"{sql}\n{self._done}\n".encode())
        out: list[str] = []
        errors: list[str] = []
        buffer = ""
        while True:
            stream, size = next_frame_header(self._sock)
            if size < 0:
                errors.append(f"{self._name} ended")
                break
            text = read_exactly(self._sock, size).decode("utf-8", "replace")
            if stream == 2:  # notices (a DROP ... IF EXISTS that skips) are not failures
                errors += [line for line in text.splitlines() if re.search(self._errors, line)]
                continue
            buffer += text
            *lines, buffer = buffer.split("\n")
            if DONE in lines:
                out += lines[: lines.index(DONE)]
                break
            out += lines
        if errors:
            raise DockappError(
                f"service {self._service}: {self._name} failed while putting the database back as seeded",
                evidence="\n".join(errors)[-2000:],
                evidence_title=f"{self._name} said",
                hint=self._hint,
            )
        return out
