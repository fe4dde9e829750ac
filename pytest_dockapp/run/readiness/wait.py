"""The wait that composes the probes, by ``dockapp_ready`` mode."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pytest_dockapp.core.errors import (
    ConfigurationError,
    ContainerGoneError,
    ReadinessTimeoutError,
)
from pytest_dockapp.run.readiness.healthcheck import HealthcheckRun, healthcheck_command
from pytest_dockapp.run.readiness.logs import log_tail
from pytest_dockapp.run.readiness.port import PortCheck
from pytest_dockapp.run.readiness.settings import DEFAULT_TIMEOUT, parse_ready
from pytest_dockapp.run.readiness.sockets import ProcSocketTable, socket_table
from pytest_dockapp.run.readiness.watch import ContainerWatch

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class ProbeTarget:
    """Where the probes reach the app: the host, its published port and the container's port
    behind it (either port None: no port probe)."""

    host: str
    host_port: int | None = None
    container_port: int | None = None


@dataclass(frozen=True)
class WaitPlan:
    """How one wait probes: the ``dockapp_ready`` mode, the health path, the deadline, and the
    pace of the port probe and of the HEALTHCHECK runs by exec (every ``exec_every`` seconds,
    the gap growing by ``exec_growth``)."""

    mode: str = "auto"
    health_path: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    interval: float = 0.005
    exec_every: float = 0.1
    exec_growth: float = 1.0

    def for_engine(self, *, podman: bool) -> WaitPlan:
        """The plan paced for the engine: on podman each exec leaves a conmon behind for a while,
        so the HEALTHCHECK runs start 0.25 s apart and the gap grows by half each time."""
        return replace(self, exec_every=0.25, exec_growth=1.5) if podman else self


@dataclass
class Readiness:
    """How the wait ended."""

    seconds: float
    checks: str
    #: When our own HEALTHCHECK runs ran (epoch seconds, from and to): what they made the app
    #: log is left out of the test's log section.
    probe_windows: list[tuple[float, float]] = field(default_factory=list)


class ReadyWait:
    """One wait for one container, by ``mode``:

    * ``auto``: the port (a GET of ``health_path`` when set), then the image's HEALTHCHECK if it has one;
    * ``listen``: the app's LISTEN socket and the published port only, nothing else;
    * ``http``: a GET of ``health_path`` (``/`` when unset) answering 2xx/3xx;
    * ``healthcheck``: the port, then the image's HEALTHCHECK (an image without one is an error).

    The engine's own ``unhealthy`` verdict fails every mode.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        container_id: str,
        target: ProbeTarget,
        plan: WaitPlan,
        *,
        attrs: dict[str, Any],
        name: str = "",
        on_notice: Callable[[str], None] | None = None,
    ):
        mode, health_path, interval = plan.mode, plan.health_path, plan.interval
        parse_ready(mode)
        self.client, self.container_id, self.timeout, self.interval = client, container_id, plan.timeout, interval
        self.label = name or container_id[:12]
        self.on_notice = on_notice
        self.start = time.perf_counter()
        config = attrs.get("Config") or {}
        health_cmd = healthcheck_command(config.get("Healthcheck")) if mode in ("auto", "healthcheck") else None
        if mode == "healthcheck" and health_cmd is None:
            raise ConfigurationError(
                f"dockapp_ready = healthcheck, but the image of {self.label} has no HEALTHCHECK",
                hint="add a HEALTHCHECK to the Dockerfile, or choose auto, listen or http",
            )
        self.health: HealthcheckRun | None = None
        if health_cmd:
            # The engine gives each run the HEALTHCHECK's --timeout (default 30 s); so do we.
            seconds = ((config.get("Healthcheck") or {}).get("Timeout") or 30_000_000_000) / 1e9
            self.health = HealthcheckRun(client, container_id, health_cmd, seconds, plan.exec_every, plan.exec_growth)
        path = {"auto": health_path, "http": health_path or "/"}.get(mode)
        self.table = socket_table(client, attrs)
        self._state, self._image = attrs.get("State") or {}, config.get("Image") or ""
        self.port = (
            PortCheck(self.table, target.host, target.host_port, target.container_port, path, interval)
            if target.host_port is not None and target.container_port is not None
            else None
        )
        self.health_cmd = health_cmd
        self.path = path
        self._client_error_since: float | None = None

    @property
    def checks(self) -> list[str]:
        return (["HEALTHCHECK"] if self.health else []) + ([self.port.name] if self.port else [])

    def run(self) -> Readiness:
        # The watch starts with the wait, from the state the caller just inspected.
        self.watch = ContainerWatch(
            self.client, self.container_id, self.label, self._state, self.table, self.start, self._image
        )
        deadline = self.start + self.timeout
        last_error = "no check has run yet"
        port_was_down = False
        try:
            while True:
                self.watch.check()
                if self.health and self.watch.health == "healthy":
                    self.health.passed = True
                port_error = self.port.poll(time.perf_counter()) if self.port else None
                self._notice_client_errors(port_error)
                if port_error is None and port_was_down and self.health:
                    self.health.rearm()
                port_was_down = port_error is not None
                # HEALTHCHECK runs wait for the port: one run before the app listens would fail, and
                # the next could only start once that one returned (measured: about 0.1 s lost per start).
                if port_error is None and self.health and not self.health.passed:
                    self.health.poll()
                    last_error = self.health.last_error or last_error
                if port_error is not None:
                    last_error = port_error
                if port_error is None and (self.health is None or self.health.passed):
                    return Readiness(
                        time.perf_counter() - self.start,
                        " + ".join(self.checks) or "running",
                        list(self.health.windows) if self.health else [],
                    )
                if time.perf_counter() >= deadline:
                    raise self._timed_out(last_error)
                if self.health and self.health.running and port_error is None:
                    self.health.wait(deadline - time.perf_counter())
                    continue
                # Until the namespace has any TCP socket the probe is cheap, so poll more often.
                cheap = isinstance(self.table, ProcSocketTable) and not self.table.scanned
                time.sleep(self.interval / 2.5 if cheap else self.interval)
        finally:
            if self.health:
                self.health.close()

    def _notice_client_errors(self, port_error: str | None) -> None:
        """Tell once, after 2 s of 4xx answers, that the health path may be wrong."""
        if port_error and " answered HTTP 4" in port_error:
            now = time.perf_counter()
            self._client_error_since = self._client_error_since or now
            if self.on_notice and now - self._client_error_since >= 2.0:
                self.on_notice(
                    f"{self.label}: {port_error} for {now - self._client_error_since:.1f}s: "
                    f"is dockapp_health_path right? still waiting until the {self.timeout:g}s timeout"
                )
                self.on_notice = None
        elif port_error is None or " answered HTTP" not in port_error:
            self._client_error_since = None

    def _timed_out(self, last_error: str) -> ReadinessTimeoutError:
        state = self.watch.state
        return ReadinessTimeoutError(
            f"container {self.label} did not become ready within {self.timeout:g}s "
            f"(status {state.get('Status')}, health {self.watch.health}; "
            f"waited for: {', '.join(self.checks)})\nlast probe error: {last_error}",
            evidence=log_tail(self.client, self.container_id, 30),
            evidence_title="container log (last lines)",
            hint=_timeout_hint(
                last_error, self.port.container_port if self.port else None, self.path, self.label, self.health_cmd
            ),
        )


def wait_ready(
    client: docker.DockerClient,
    container_id: str,
    target: ProbeTarget,
    plan: WaitPlan | None = None,
    *,
    attrs: dict[str, Any] | None = None,
    name: str = "",
    on_notice: Callable[[str], None] | None = None,
) -> Readiness:
    """Block until the container's service answers at ``target`` as ``plan`` says (see
    :class:`ReadyWait`); raise a precise error otherwise. ``on_notice`` hears, once, about a
    wait that looks wrong but may still end well (a health path that answers 404)."""
    import docker.errors

    if attrs is None:
        try:
            attrs = client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            label = name or container_id[:12]
            raise ContainerGoneError(f"container {label} disappeared before it could be probed") from None
    wait = ReadyWait(client, container_id, target, plan or WaitPlan(), attrs=attrs, name=name, on_notice=on_notice)
    return wait.run()


def _timeout_hint(
    last_error: str, port: int | None, health_path: str | None, label: str, health_cmd: list[str] | None
) -> str:
    """What to do, by what the last probe said: the port, the health path, or the HEALTHCHECK."""
    if last_error.startswith("HEALTHCHECK") and health_cmd:
        return (
            "the app answers on its port, but its HEALTHCHECK does not pass: run it by hand "
            f"(docker exec {label} {' '.join(health_cmd)}), or raise dockapp_timeout if the app is just slow"
        )
    if health_path and " answered HTTP" in last_error:
        return f"the app answers, but not 2xx/3xx on {health_path}: is dockapp_health_path right?"
    return f"raise dockapp_timeout if the app is just slow; check that it listens on 0.0.0.0:{port}" + (
        f" and that {health_path} answers 2xx" if health_path else ""
    )
