"""Our own runs of the image's HEALTHCHECK, while the engine's first one is an interval away."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker


def healthcheck_command(config: dict[str, Any] | None) -> list[str] | None:
    """The exec form of an image's HEALTHCHECK test, or None when it has none."""
    test = (config or {}).get("Test") or []
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    if test[0] == "CMD":
        return list(test[1:])
    return list(test)


def health_log(state: dict[str, Any]) -> str:
    entries = ((state.get("Health") or {}).get("Log")) or []
    return "\n".join(f"exit {e.get('ExitCode')}: {str(e.get('Output', '')).strip()}" for e in entries[-5:])


class HealthcheckRun:
    """Runs the image's HEALTHCHECK with ``exec`` in a background thread, so the port is probed
    while it runs; honours the check's own ``--timeout`` as the engine does."""

    def __init__(
        self,
        client: docker.DockerClient,
        container_id: str,
        command: list[str],
        timeout: float,
        every: float,
        growth: float = 1.0,
    ):
        self.client, self.container_id, self.command = client, container_id, command
        self.timeout = timeout
        # Between runs; on podman it grows (each exec there leaves a conmon behind for a while).
        self.every, self.growth, self.backoff = every, growth, 1.0
        self.passed = False
        self.last_error: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-health")
        self._pending: Future[tuple[int, str]] | None = None
        self._since = 0.0
        self._next = 0.0
        self.windows: list[tuple[float, float]] = []  # epoch seconds; a run under way ends at +inf

    @property
    def running(self) -> bool:
        return self._pending is not None

    def rearm(self) -> None:
        """The port just came up: a check that failed for lack of it may pass now."""
        self._next = time.perf_counter()

    def poll(self) -> None:
        """Collect a finished run, give up a hung one, start the next when due."""
        now = time.perf_counter()
        if self._pending is not None and not self._pending.done() and now - self._since > self.timeout:
            # A hung check: give up on this run as the engine would, and run the next one on a fresh
            # thread (the hung exec ends when the container is removed).
            self.last_error = f"HEALTHCHECK did not finish within its timeout of {self.timeout:g}s"
            self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-health")
            self._pending = None
        if self._pending is not None and self._pending.done():
            try:
                code, output = self._pending.result()
            except Exception as exc:  # the engine refused or did not answer the exec
                code, output = -1, f"{type(exc).__name__}: {exc}"
            self._pending = None
            if code == 0:
                self.passed = True
            else:
                self.last_error = f"HEALTHCHECK exited {code}: {output.strip()[-300:]}"
        if not self.passed and self._pending is None and now >= self._next:
            self._pending, self._since = self._pool.submit(self._run), now
            self._next = now + self.every * self.backoff
            self.backoff = min(self.backoff * self.growth, 10.0)

    def wait(self, seconds: float) -> None:
        """Block until the run in flight ends, at most ``seconds``. Engine calls slow an exec down
        (measured: inspects took 58 ms instead of 2 ms while an exec ran), and the exec fails by
        itself if the container exits, so no exit goes unnoticed meanwhile."""
        if self._pending is not None:
            futures_wait([self._pending], timeout=max(0.0, min(1.0, seconds)))

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _run(self) -> tuple[int, str]:
        api = self.client.api
        n = len(self.windows)
        self.windows.append((time.time(), float("inf")))
        try:
            exec_id = api.exec_create(self.container_id, self.command, stdout=True, stderr=True)["Id"]
            out = api.exec_start(exec_id)
            code = api.exec_inspect(exec_id).get("ExitCode")
        finally:
            self.windows[n] = (self.windows[n][0], time.time())
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        return (code if code is not None else -1), text
