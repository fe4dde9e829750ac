"""Warm spares: while a test runs with a fresh app (or stack), the next one of the same image
and settings starts in the background, so that the next test takes one that is already ready.

A spare goes to one test only (it is taken out before it is handed over), carries the session's
labels like any app, and one that no test took is removed with the session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def spare_key(kind: str, what: object, settings: Mapping[str, Any]) -> str:
    """What tells apart the things one spare can stand in for, where they are not hashable (a
    stack's project): what it is and every setting, as text."""
    return repr((kind, what, sorted((k, repr(v)) for k, v in settings.items())))


class Spares:
    """Things (apps, stacks) started ahead in the background, by key: one per key at first, and
    one more, up to ``count``, each time a test had to wait for its spare.

    One spare hides a test's body, not a start: with quick tests, each test waits for the start
    of its spare (100 empty tests: 1.01 times the time without spares, `bench/RESULTS.md` F1). Two
    start side by side. A key used once (a test's odd settings) still costs one start only.
    """

    def __init__(self, count: int):
        self.count = count
        #: How often each key was asked for: a key's spares start from its second use (or its
        #: first, when the caller says more of the same will come), since settings only one test
        #: uses would leave a spare per test unused (30 tests with their own env: 30 spares, none taken).
        self._seen: dict[Hashable, int] = {}
        self.dead = 0  # spares that had exited when a test came to take them
        # Two at a time: 100 empty tests took 22.1 s with two concurrent starts, 20.8 s with three
        # and 21.6 s with four (two runs each, 2 cores): the engine's CPU is the limit (F3).
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dockapp-spare")
        self._ahead: dict[Hashable, list[Future[Any]]] = {}
        self._depth: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.started = 0
        self.used = 0

    def fresh(
        self,
        key: Hashable,
        kind: type[T],
        start: Callable[[], T],
        ahead: Callable[[], object] | None = None,
        *,
        likely: bool = False,
        dead: Callable[[T], str | None] | None = None,
        discard: Callable[[T, str], None] | None = None,
    ) -> T:
        """A spare for ``key``, or else what ``start`` makes now; the next spares start in the
        background meanwhile, with ``ahead`` (default: ``start``), once the key was asked for
        twice, or at once when ``likely`` (more tests will ask). They start after the caller's own
        start, so that they never hold up the test that waits for it. A spare that ``dead``
        finds gone (it says how) is handed to ``discard``, never to the test."""
        spare = self.take(key, kind)
        why = dead(spare) if spare is not None and dead is not None else None
        if spare is not None and why is not None:
            with self._lock:
                self.used, self.dead = self.used - 1, self.dead + 1
            if discard is not None:
                discard(spare, why)
            spare = None
        made = start() if spare is None else spare
        with self._lock:
            self._seen[key] = self._seen.get(key, 0) + 1
            wanted = likely or self._seen[key] > 1
        if wanted:
            self.refill(key, ahead or start)
        return made

    def take(self, key: Hashable, kind: type[T]) -> T | None:
        """A spare for ``key`` (waiting for one that is still starting), or None."""
        with self._lock:
            ahead = self._ahead.get(key) or []
            future = ahead.pop(0) if ahead else None
        if future is None:
            return None
        if not future.done():  # the test waits: keep one more ready from now on
            with self._lock:
                self._depth[key] = min(self.count, self._depth.get(key, 1) + 1)
        try:
            spare = future.result()
        except Exception:  # the caller starts its own, and reports its error if it fails the same way
            return None
        if not isinstance(spare, kind):
            # not the key in the message: an app's key holds its env, secrets included
            raise TypeError(f"a spare is a {type(spare).__name__}, not a {kind.__name__}")
        self.used += 1
        return spare

    def refill(self, key: Hashable, start: Callable[[], object]) -> None:
        """Start spares for ``key`` in the background with ``start``, up to its depth."""
        with self._lock:
            if self._closed or self.count <= 0:
                return
            ahead = self._ahead.setdefault(key, [])
            while len(ahead) < min(self.count, self._depth.get(key, 1)):
                ahead.append(self._pool.submit(start))
                self.started += 1

    def close(self) -> None:
        """No more spares; wait for the starts under way (their owner removes what they made)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
