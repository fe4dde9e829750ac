"""Fails the wait the moment the container exits, goes away, or the engine calls it unhealthy."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pytest_dockapp.core.errors import (
    ContainerExitedError,
    ContainerGoneError,
    UnhealthyError,
)
from pytest_dockapp.run.readiness.healthcheck import health_log
from pytest_dockapp.run.readiness.logs import log_tail
from pytest_dockapp.run.readiness.sockets import INSPECT_EVERY, ExecSocketTable, ProcSocketTable

if TYPE_CHECKING:
    import docker


class ContainerWatch:
    """Fails the wait the moment the container exits, is removed, or the engine calls it unhealthy."""

    def __init__(
        self,
        client: docker.DockerClient,
        container_id: str,
        label: str,
        state: dict[str, Any],
        table: ProcSocketTable | ExecSocketTable,
        start: float,
        image: str = "",
    ):
        self.client, self.container_id, self.label, self.start = client, container_id, label, start
        self.proc = table if isinstance(table, ProcSocketTable) else None  # PID 1 is watched here
        self.state = state  # just inspected by the caller
        self.image = image.split(":", 1)[1][:12] if image.startswith("sha256:") else image
        self._inspected, self._fresh = time.perf_counter(), True

    @property
    def health(self) -> str:
        # podman without systemd reports "" (and never "unhealthy"): that is "none".
        return str((self.state.get("Health") or {}).get("Status") or "none")

    def check(self) -> None:
        import docker.errors

        try:
            # With the socket table read from /proc, the engine is asked only every 50 ms or as soon
            # as PID 1 is gone: an inspect per 5 ms turn cost a millisecond of each turn and kept the
            # engine busy while the app itself was starting.
            now = time.perf_counter()
            proc = self.proc
            if not self._fresh and (proc is None or now - self._inspected >= INSPECT_EVERY or not proc.alive()):
                self.state, self._inspected = self.client.api.inspect_container(self.container_id)["State"], now
            self._fresh = False
        except docker.errors.NotFound:
            raise ContainerGoneError(
                f"container {self.label} was removed while waiting for it to become ready",
                hint="something outside this test session removed it (docker rm, a cleanup job)",
            ) from None
        state = self.state
        if not state.get("Running") or state.get("Status") in ("exited", "dead"):
            oom = " (killed: out of memory)" if state.get("OOMKilled") else ""
            raise ContainerExitedError(
                f"container {self.label} exited with code {state.get('ExitCode')}{oom} "
                f"{time.perf_counter() - self.start:.2f}s after start, before it became ready"
                + (f"; engine error: {state['Error']}" if state.get("Error") else ""),
                evidence=log_tail(self.client, self.container_id, 30),
                evidence_title="container log (last lines)",
                hint=f"run the image by hand (docker run --rm -it {self.image or self.container_id[:12]}) to see why "
                "its command stops",
            )
        if self.health == "unhealthy":
            raise UnhealthyError(
                f"container {self.label} is unhealthy: its HEALTHCHECK failed "
                f"{(state.get('Health') or {}).get('FailingStreak', '?')} times in a row",
                evidence=health_log(state) + "\n--- container log ---\n" + log_tail(self.client, self.container_id, 20),
                evidence_title="health log",
                hint="run the HEALTHCHECK command in the container (docker exec) to see why it fails",
            )
