"""Live build progress and notices on the terminal."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .build import BuildEvent


class Progress:
    """Live build progress; silent for builds that finish within a second."""

    threshold = 1.0

    def __init__(self, config: pytest.Config):
        self.config = config
        self.shown = False

    def __call__(self, event: BuildEvent) -> None:
        if event.elapsed < self.threshold:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or self.config.getoption("verbose") < 0:
            return
        line = f"dockapp: building [{event.position}] {event.text}"[:120]
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            if reporter.isatty():
                reporter.rewrite(line, erase=True)
            else:
                reporter.write_line(line)
        self.shown = True

    def notice(self, message: str) -> None:
        """A line about something that looks wrong while we wait (printed even under -q)."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.ensure_newline()
            reporter.write_line(f"dockapp: {message}")

    def done(self, message: str) -> None:
        if not self.shown:
            return
        self.shown = False
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None:
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                if reporter.isatty():
                    reporter.rewrite(message, erase=True)
                reporter.write_line("" if reporter.isatty() else message)
