"""Tearing down on SIGTERM and SIGHUP as on Ctrl-C.

CI runners cancel a job with SIGTERM (GitLab, GitHub Actions, Jenkins), and a closed
terminal sends SIGHUP. Python's default for both is to die at once, so no teardown runs and
every container stays. :class:`TerminationGuard` turns the first such signal into a
``KeyboardInterrupt``, which pytest (and any ``with`` block) unwinds like Ctrl-C; further
signals are ignored while that cleanup runs. :meth:`TerminationGuard.reraise` then ends the
process with the signal, so the caller still sees exit status -15 (143 in a shell).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class TerminationGuard:
    """Installs the handlers (main thread only, and only where nobody installed their own)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # cleanup is under way: let it finish
        self.received = signum
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received: tearing down, then exiting")

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def reraise(self) -> None:
        """After cleanup: end the process with the signal that interrupted it, if any."""
        self.uninstall()
        if self.received is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            signal.signal(self.received, signal.SIG_DFL)
            os.kill(os.getpid(), self.received)
