"""Waiting until a container's service really answers.

Three traps shape this module:

* A published port accepts TCP before the app listens: the port publisher
  (docker-proxy) takes the connection and only then finds nobody behind it. So
  "connect succeeded" proves nothing. Where the engine is local we read the
  container's own socket table (``/proc/<pid>/net/tcp``) and see the app's LISTEN
  socket; elsewhere we connect and treat an immediate EOF as "not yet".
* The engine runs an image's first HEALTHCHECK one interval after start (30 s by
  default). We run the same check ourselves with ``exec`` while we wait, and
  still honour the engine's verdict when it says ``unhealthy``.
* A container that exits while we wait must fail the wait at once, not at the
  timeout.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import (
    ContainerExitedError,
    ContainerGoneError,
    ReadinessTimeoutError,
    UnhealthyError,
    tail,
)

if TYPE_CHECKING:
    import docker

#: Seconds to wait for an app to become ready, unless told otherwise.
DEFAULT_TIMEOUT = 60.0


def parse_timeout(value: str | float) -> float:
    """A positive number of seconds."""
    from .errors import ConfigurationError

    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigurationError(f"{value!r} is not a positive number of seconds", hint="e.g. 60 or 2.5")
    return seconds


def parse_health_path(value: str) -> str:
    """An absolute HTTP path."""
    from .errors import ConfigurationError

    if not value.startswith("/"):
        raise ConfigurationError(f"{value!r} must start with '/'", hint="e.g. /health")
    return value


_LISTEN = b"0A"
_INSPECT_EVERY = 0.05
_LOOPBACK4 = "7F"  # last byte of a little-endian 127.x.x.x address in /proc/net/tcp
_LOOPBACK6 = "00000000000000000000000001000000"


class ListenProbe:
    """Reads a container's socket table through ``/proc/<pid>/net`` on the engine's host."""

    def __init__(self, pid: int, ipv4: str = ""):
        self.pid = pid
        self.ipv4 = ipv4  # the container's IPv4 address on its network, to tell dual-stack from IPv6-only
        self.scanned = False  # whether the last answer needed the socket tables (costly) or not
        self._dual_stack: set[int] = set()

    @classmethod
    def for_container(cls, attrs: dict[str, Any]) -> ListenProbe | None:
        """A probe if the container's PID 1 is visible here (local engine), else None."""
        pid = int((attrs.get("State") or {}).get("Pid") or 0)
        if pid <= 0:
            return None
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
                cgroup = fh.read()
        except OSError:
            return None
        # The pid must be this container's: with a remote engine or another pid namespace the
        # same number can belong to an unrelated process.
        if attrs.get("Id", "")[:12] not in cgroup:
            return None
        net = attrs.get("NetworkSettings") or {}
        ipv4 = net.get("IPAddress") or next(
            (n.get("IPAddress") for n in (net.get("Networks") or {}).values() if n.get("IPAddress")), ""
        )
        return cls(pid, ipv4 or "")

    def alive(self) -> bool:
        """Whether the container's PID 1 still exists (it is gone the moment the container exits)."""
        return os.path.exists(f"/proc/{self.pid}")

    def listening(self, port: int) -> str | None:
        """``"any"`` if something listens on ``port`` reachable from outside, ``"loopback"`` if
        only on the container's loopback, ``None`` if nothing listens (or unreadable)."""
        self.scanned = self._tcp_in_use()
        if not self.scanned:
            return None
        found: str | None = None
        # tcp6 first: most servers listen on [::], which takes IPv4 too, and a hit ends the search.
        for name in ("tcp6", "tcp"):
            where = self._scan(name, f"{port:04X}")
            if where == "any":
                return "any" if name == "tcp" or self._takes_ipv4(port) else "ipv6-only"
            found = found or where
        return found

    def _takes_ipv4(self, port: int) -> bool:
        """Whether a listener on ``[::]`` also takes IPv4 (docker-proxy forwards over IPv4): an
        ``IPV6_V6ONLY`` socket does not, and the table cannot tell. One direct connect to the
        container's IPv4 address does (0.1 ms), once per port."""
        if port in self._dual_stack or not self.ipv4:
            return True
        try:
            socket.create_connection((self.ipv4, port), timeout=0.5).close()
        except OSError:
            return False
        self._dual_stack.add(port)
        return True

    def _tcp_in_use(self) -> bool:
        """Whether the container's network namespace has any TCP socket in its tables.

        The per-namespace counters in ``sockstat`` cost 0.1 ms to read where a socket table
        costs 2 ms, and most apps open no TCP socket until they listen, so the wait can poll
        often and cheaply until something appears.
        """
        for name, key in (("sockstat6", b"TCP6:"), ("sockstat", b"TCP:")):
            try:
                with open(f"/proc/{self.pid}/net/{name}", "rb") as fh:
                    text = fh.read()
            except OSError:
                if name == "sockstat6":
                    continue  # no IPv6 in this kernel: no TCP6 sockets either
                return True  # cannot tell: let the tables answer
            for line in text.splitlines():
                if line.startswith(key):
                    fields = line.split()
                    if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) > 0:
                        return True
        return False

    def _scan(self, name: str, hex_port: str) -> str | None:
        # Each read of /proc/<pid>/net/tcp walks the kernel's whole TCP hash table (measured:
        # 2 ms per read on a 24 GiB host, 4 ms for a file read to EOF). LISTEN sockets come first,
        # and a short chunk means the table ended, so one read usually answers.
        try:
            fd = os.open(f"/proc/{self.pid}/net/{name}", os.O_RDONLY)
        except OSError:
            return None
        found: str | None = None
        rest = b""
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    fields = line.split()
                    if len(fields) < 4 or fields[3] != _LISTEN:
                        continue
                    addr, _, lport = fields[1].decode("ascii").partition(":")
                    if lport != hex_port:
                        continue
                    if (addr.endswith(_LOOPBACK4) and len(addr) == 8) or addr == _LOOPBACK6:
                        found = "loopback"
                    else:
                        return "any"
                if len(chunk) < 2048:  # seq_file hands out a full page unless the table ended
                    break
        except OSError:
            return found
        finally:
            os.close(fd)
        return found


def probe_connect(host: str, port: int, grace: float = 0.05) -> str | None:
    """Connect through the published port; None when the app holds the connection open.

    docker-proxy accepts first and closes at once when nothing listens behind it, so an
    immediate EOF or reset means "not yet". Data or silence for ``grace`` means an app.
    """
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.settimeout(grace)
            try:
                data = sock.recv(1)
            except socket.timeout:
                return None
            return None if data else "connection accepted and closed at once (nothing listens yet)"
    except OSError as exc:
        return f"connect to {host}:{port}: {exc}"


def probe_http(host: str, port: int, path: str, timeout: float = 2.0) -> str | None:
    """GET ``path``; None on a 2xx or 3xx answer, else what went wrong."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": PROBE_AGENT})
        resp = conn.getresponse()
        resp.read()
        if 200 <= resp.status < 400:
            return None
        return f"GET {path} answered HTTP {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"GET {path}: {exc.__class__.__name__}: {exc}"
    finally:
        conn.close()


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


@dataclass
class Readiness:
    """How the wait ended."""

    seconds: float
    checks: str


def _health_log(state: dict[str, Any]) -> str:
    entries = ((state.get("Health") or {}).get("Log")) or []
    return "\n".join(f"exit {e.get('ExitCode')}: {str(e.get('Output', '')).strip()}" for e in entries[-5:])


PROBE_AGENT = "pytest-dockapp-probe"


def _logs(client: docker.DockerClient, container_id: str, lines: int = 30) -> str:
    """The log tail, without the access-log lines of our own probe requests."""
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=lines * 10)
    except Exception:
        return "(logs unavailable)"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    kept = [line for line in text.splitlines() if PROBE_AGENT not in line]
    hidden = len(text.splitlines()) - len(kept)
    note = [f"({hidden} lines of pytest-dockapp's own probe requests left out)"] if hidden else []
    return "\n".join(kept[-lines:] + note)


def wait_ready(
    client: docker.DockerClient,
    container_id: str,
    *,
    host: str,
    host_port: int | None,
    container_port: int | None,
    health_path: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.005,
    name: str = "",
    attrs: dict[str, Any] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> Readiness:
    """Block until the container's service answers; raise a precise error otherwise.

    ``on_notice`` hears, once, about a wait that looks wrong but may still end well (a health
    path that answers 404)."""
    import docker.errors

    start = time.perf_counter()
    deadline = start + timeout
    label = name or container_id[:12]
    if attrs is None:
        try:
            attrs = client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            raise ContainerGoneError(f"container {label} disappeared before it could be probed") from None
    health_cmd = healthcheck_command(attrs["Config"].get("Healthcheck"))
    listen = ListenProbe.for_container(attrs)
    checks = []
    if health_cmd:
        checks.append("HEALTHCHECK")
    if host_port is not None:
        checks.append(f"GET {health_path}" if health_path else "port accepts")
    last_error = "no check has run yet"
    health_ok = health_cmd is None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-health") if health_cmd else None
    pending: Future[tuple[int, str]] | None = None
    pending_since = start
    # Our own run of the check honours the HEALTHCHECK's --timeout (default 30 s), as the engine does.
    health_timeout = ((attrs["Config"].get("Healthcheck") or {}).get("Timeout") or 30_000_000_000) / 1e9
    next_exec = start
    port_was_down = False
    http_wait = interval  # HTTP probes back off to 100 ms: each one is a line in the app's access log
    next_http = start
    last_probe: str | None = "waiting to probe again"  # the last port/HTTP probe, for the turns between
    client_error_since: float | None = None

    def run_health() -> tuple[int, str]:
        exec_id = client.api.exec_create(container_id, health_cmd, stdout=True, stderr=True)["Id"]
        out = client.api.exec_start(exec_id)
        code = client.api.exec_inspect(exec_id).get("ExitCode")
        text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
        return (code if code is not None else -1), text

    state: dict[str, Any] = attrs.get("State") or {}  # just inspected by the caller
    inspected, fresh = time.perf_counter(), True
    try:
        while True:
            try:
                # With the socket table at hand, the engine is asked only every 50 ms or as soon as
                # PID 1 is gone: an inspect per 5 ms turn cost a millisecond of each turn and kept
                # the engine busy while the app itself was starting.
                now = time.perf_counter()
                if not fresh and (listen is None or now - inspected >= _INSPECT_EVERY or not listen.alive()):
                    state, inspected = client.api.inspect_container(container_id)["State"], now
                fresh = False
            except docker.errors.NotFound:
                raise ContainerGoneError(
                    f"container {label} was removed while waiting for it to become ready",
                    hint="something outside this test session removed it (docker rm, a cleanup job)",
                ) from None
            if not state.get("Running") or state.get("Status") in ("exited", "dead"):
                oom = " (killed: out of memory)" if state.get("OOMKilled") else ""
                raise ContainerExitedError(
                    f"container {label} exited with code {state.get('ExitCode')}{oom} "
                    f"{time.perf_counter() - start:.2f}s after start, before it became ready"
                    + (f"; engine error: {state['Error']}" if state.get("Error") else ""),
                    evidence=tail(_logs(client, container_id), 30),
                    evidence_title="container log (last lines)",
                    hint="run the image by hand (docker run --rm -it <image>) to see why its command stops",
                )
            health = state.get("Health") or {}
            if health.get("Status") == "unhealthy":
                raise UnhealthyError(
                    f"container {label} is unhealthy: its HEALTHCHECK failed "
                    f"{health.get('FailingStreak', '?')} times in a row",
                    evidence=_health_log(state) + "\n--- container log ---\n" + tail(_logs(client, container_id), 20),
                    evidence_title="health log",
                    hint="run the HEALTHCHECK command in the container (docker exec) to see why it fails",
                )
            if health.get("Status") == "healthy":
                health_ok = True
            port_error = None
            if host_port is not None and container_port is not None:
                if health_path and time.perf_counter() < next_http:
                    port_error = last_probe  # not the HEALTHCHECK's last error: that says nothing of the port
                else:
                    port_error = last_probe = _probe_port(listen, host, host_port, container_port, health_path)
                    if health_path:
                        http_wait = min(0.1, http_wait * 1.5)
                        next_http = time.perf_counter() + http_wait
                if port_error and " answered HTTP 4" in port_error:
                    client_error_since = client_error_since or time.perf_counter()
                    if on_notice and time.perf_counter() - client_error_since >= 2.0:
                        on_notice(
                            f"{label}: {port_error} for {time.perf_counter() - client_error_since:.1f}s: "
                            f"is dockapp_health_path right? still waiting until the {timeout:g}s timeout"
                        )
                        on_notice = None
                elif port_error is None or " answered HTTP" not in port_error:
                    client_error_since = None
            if port_error is None and port_was_down:
                # The app just started listening: a HEALTHCHECK that failed for lack of it may pass now.
                port_was_down, next_exec = False, time.perf_counter()
            elif port_error is not None:
                port_was_down = True
            # HEALTHCHECK runs wait for the port: one run before the app listens would fail, and the
            # next could only start once that one returned (measured: about 0.1 s lost per start).
            if port_error is None and not health_ok and pool is not None:
                if pending is not None and not pending.done() and time.perf_counter() - pending_since > health_timeout:
                    # A hung check: give up on this run as the engine would, and run the next one on a
                    # fresh thread (the hung exec ends when the container is removed).
                    last_error = f"HEALTHCHECK did not finish within its timeout of {health_timeout:g}s"
                    pool.shutdown(wait=False)
                    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dockapp-health")
                    pending = None
                if pending is not None and pending.done():
                    try:
                        code, output = pending.result()
                    except Exception as exc:  # the engine refused or did not answer the exec
                        code, output = -1, f"{type(exc).__name__}: {exc}"
                    pending = None
                    if code == 0:
                        health_ok = True
                    else:
                        last_error = f"HEALTHCHECK exited {code}: {output.strip()[-300:]}"
                if not health_ok and pending is None and time.perf_counter() >= next_exec:
                    pending, pending_since = pool.submit(run_health), time.perf_counter()
                    next_exec = time.perf_counter() + 0.1
            if port_error is not None:
                last_error = port_error
            if port_error is None and health_ok:
                return Readiness(time.perf_counter() - start, " + ".join(checks) or "running")
            if time.perf_counter() >= deadline:
                raise ReadinessTimeoutError(
                    f"container {label} did not become ready within {timeout:g}s "
                    f"(status {state.get('Status')}, health {health.get('Status', 'none')}; "
                    f"waited for: {', '.join(checks)})\nlast probe error: {last_error}",
                    evidence=tail(_logs(client, container_id), 30),
                    evidence_title="container log (last lines)",
                    hint=_timeout_hint(last_error, container_port, health_path, label, health_cmd),
                )
            if pending is not None and port_error is None:
                # A HEALTHCHECK run is in flight and the port answers: wait for its verdict rather
                # than polling the engine, whose calls slow the exec down (measured: inspects took
                # 58 ms instead of 2 ms while an exec ran). The exec fails by itself if the
                # container exits, so no exit goes unnoticed.
                # wait() returns without raising: a failed exec is read (and reported) above.
                futures_wait([pending], timeout=max(0.0, min(1.0, deadline - time.perf_counter())))
                continue
            # Until the namespace has any TCP socket the probe is cheap, so poll more often.
            time.sleep(interval if listen is None or listen.scanned else interval / 2.5)
    finally:
        if pool is not None:
            pool.shutdown(wait=False)


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


def _probe_port(
    listen: ListenProbe | None, host: str, host_port: int, container_port: int, health_path: str | None
) -> str | None:
    if listen is not None:
        where = listen.listening(container_port)
        if where is None:
            return f"nothing listens on port {container_port} inside the container yet"
        if where == "loopback":
            return (
                f"the app listens on 127.0.0.1:{container_port} inside the container, which the "
                f"published port cannot reach: make it listen on 0.0.0.0:{container_port}"
            )
        if where == "ipv6-only":
            return (
                f"the app listens on [::]:{container_port} for IPv6 only (IPV6_V6ONLY), and the published "
                f"port forwards IPv4: make it listen on 0.0.0.0:{container_port} or dual-stack"
            )
        if health_path:
            return probe_http(host, host_port, health_path)
        try:
            socket.create_connection((host, host_port), timeout=1.0).close()
        except OSError as exc:
            return f"connect to {host}:{host_port}: {exc}"
        return None
    if health_path:
        return probe_http(host, host_port, health_path)
    return probe_connect(host, host_port)
