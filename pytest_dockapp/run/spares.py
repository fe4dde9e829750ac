"""Warm spares: while a test runs with a fresh app, the next app of the same image and settings
starts in the background, so that the next test takes one that is already ready.

A spare goes to one test only (it is taken out before it is handed over), carries the session's
labels like any app, and one that no test took is removed with the session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_dockapp.run.app import DockApp
    from pytest_dockapp.run.images import Image

#: Settings that make an app unlike any other, so it cannot come from a spare.
_UNIQUE = ("name", "host_ports", "network", "aliases")


def spareable(kwargs: Mapping[str, Any]) -> bool:
    """Whether an app with these settings can be a spare: nothing in them is a test's own."""
    return not any(kwargs.get(k) for k in _UNIQUE)


def _key(image: Image | str, kwargs: Mapping[str, Any]) -> str:
    ref = image if isinstance(image, str) else image.ref
    return repr((ref, sorted((k, repr(v)) for k, v in kwargs.items())))


class Spares:
    """Up to ``count`` apps per image and settings, started ahead by ``start``."""

    def __init__(self, start: Callable[..., DockApp], count: int = 1):
        self._start = start
        self.count = count
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dockapp-spare")
        self._ahead: dict[str, list[Future[DockApp]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0
        self.used = 0

    def take(self, image: Image | str, kwargs: Mapping[str, Any]) -> DockApp | None:
        """A spare for these settings (waiting for one that is still starting), or None."""
        with self._lock:
            ahead = self._ahead.get(_key(image, kwargs)) or []
            future = ahead.pop(0) if ahead else None
        if future is None:
            return None
        try:
            app = future.result()
        except Exception:  # the caller starts its own app, and reports its error if it fails the same way
            return None
        self.used += 1
        return app

    def refill(self, image: Image | str, kwargs: Mapping[str, Any]) -> None:
        """Start spares for these settings in the background, up to :attr:`count`."""
        with self._lock:
            if self._closed or self.count <= 0:
                return
            ahead = self._ahead.setdefault(_key(image, kwargs), [])
            while len(ahead) < self.count:
                ahead.append(self._pool.submit(self._start, image, **kwargs))
                self.started += 1

    def close(self) -> None:
        """No more spares; wait for the starts under way (the manager removes their apps)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
