"""Live build progress and notices on the terminal.

Quiet when a build is cached or reused (it ends within a second). Past that second, a terminal
shows one live line, the current step with its elapsed time and its last line of output,
refreshed four times a second; without a terminal (CI logs), one plain line per step, and a
"still running" line every 10 s of a long step.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_dockapp.builds.record import BuildEvent


class Progress:
    """Live build progress for one pytest run; :meth:`done` ends each build's display."""

    threshold = 1.0  # seconds of build before anything is shown
    refresh = 0.25  # seconds between redraws of the live line
    still_every = 10.0  # without a terminal: seconds between "still running" lines of one step

    def __init__(self, config: pytest.Config):
        self.config = config
        self.shown = False
        self._lock = threading.Lock()
        self._began: float | None = None
        self._step_began = 0.0
        self._last_plain = 0.0
        self._output = ""
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._fspath: object = None
        self._position = self._text = ""
        #: False while a build runs in the background (started at collection) and nobody waits for
        #: it: drawing then would write into a running test's output.
        self.attached = True

    def __call__(self, event: BuildEvent) -> None:
        if self._reporter() is None or self.config.getoption("verbose") < 0:
            return
        with self._lock:
            now = time.perf_counter()
            if self._began is None:
                self._began = now - event.elapsed
                self._stop.clear()
                self._ticker = threading.Thread(target=self._tick, name="dockapp-progress", daemon=True)
                self._ticker.start()
            if event.output:
                self._output = event.output.strip()
            else:
                self._position, self._text, self._step_began, self._output = event.position, event.text, now, ""
                self._last_plain = 0.0
            self._draw(now)

    def phase(self, text: str) -> None:
        """The build shown ended and the same wait goes on with something else (the app's start
        and readiness): say that instead of the last build step, whose time would keep counting."""
        with self._lock:
            if self._began is None:
                return  # nothing shown: a quiet wait stays quiet
            now = time.perf_counter()
            self._position, self._text, self._step_began, self._output, self._last_plain = "app", text, now, "", 0.0
            self._draw(now)

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh):
            with self._lock:
                if self._began is not None:
                    self._draw(time.perf_counter())

    def settle(self) -> None:
        """A background build ended before anyone waited for it: nothing to show live."""
        with self._lock:
            if self.attached:
                return  # a fixture waits: its done() ends the display
            self._stop.set()
            self._ticker, self._began, self._text = None, None, ""
            self.attached = True

    def attach(self) -> None:
        """A fixture waits for the background build: show it from now on."""
        with self._lock:
            self.attached = True
            if self._began is not None:
                self._draw(time.perf_counter())

    def _draw(self, now: float) -> None:
        """Called with the lock held."""
        assert self._began is not None
        if now - self._began < self.threshold or not self._text or not self.attached:
            return
        reporter = self._reporter()
        if reporter is None:
            return
        running = now - self._step_began
        if not self.shown:
            self._fspath = reporter.currentfspath  # our first line resets it: keep it for _resume_line
        with self._terminal():
            if reporter.isatty():
                # One terminal line (a wrapped live line cannot be rewritten): the elapsed time first,
                # then the step, then up to a third of the line for its last output.
                head = f"dockapp: {self._verb}[{self._position}] {running:.1f}s "
                room = max(20, reporter._tw.fullwidth - 1 - len(head))
                out = f" | {self._output}"[: room // 3] if self._output else ""
                reporter.rewrite(head + self._text[: room - len(out)] + out, erase=True)
            elif not self._last_plain:
                reporter.ensure_newline()
                reporter.write_line(f"dockapp: {self._verb}{self._step}"[:160])
                self._last_plain = now
            elif now - self._last_plain >= self.still_every:
                tail = f": {self._output}"[:100] if self._output else ""
                still = "still " if self._position == "app" else "still running "
                reporter.write_line(f"dockapp: {still}{self._step}"[:100] + f" ({running:.0f}s){tail}")
                self._last_plain = now
        self.shown = True

    def notice(self, message: str) -> None:
        """A line about something that looks wrong while we wait (printed even under -q)."""
        reporter = self._reporter()
        if reporter is None:
            return
        with self._lock, self._terminal():
            reporter.ensure_newline()
            reporter.write_line(f"dockapp: {message}")

    def done(self, message: str) -> None:
        """End the build's display: its last word replaces the live line, if anything was shown."""
        self._stop.set()
        if self._ticker is not None and self._ticker is not threading.current_thread():
            self._ticker.join(timeout=1.0)
        with self._lock:
            self._ticker, self._began, self._text = None, None, ""
            self.attached = True
            if not self.shown:
                return
            self.shown = False
            reporter = self._reporter()
            if reporter is None:
                return
            with self._terminal():
                if reporter.isatty():
                    reporter.rewrite(message, erase=True)
                    reporter.write("\n")
                else:
                    reporter.write_line(message)
                self._resume_line(reporter)

    @property
    def _verb(self) -> str:
        """``building `` for a build step; nothing for a pull or push, whose text says it."""
        return "" if self._position in ("registry", "app") else "building "

    @property
    def _step(self) -> str:
        return self._text if self._position == "app" else f"[{self._position}] {self._text}"

    def _resume_line(self, reporter: pytest.TerminalReporter) -> None:
        """Give the test's outcome letter its file name again: it would land alone on a line. (On
        a terminal the live line overwrote the first "test_x.py "; a pipe shows the name twice.)"""
        where = self._fspath
        if isinstance(where, Path) and self.config.get_verbosity() <= 0:
            from _pytest.pathlib import bestrelpath

            reporter.write(bestrelpath(reporter.startpath, where) + " ")
            reporter.currentfspath = where  # the file's next tests add their letters to this line
        else:
            reporter.currentfspath = None  # -v: pytest writes the test's location line again

    def _reporter(self) -> pytest.TerminalReporter | None:
        reporter: pytest.TerminalReporter | None = self.config.pluginmanager.get_plugin("terminalreporter")
        return reporter

    def _terminal(self) -> contextlib.AbstractContextManager[None]:
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        return capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
