"""Waiting until a container's service really answers.

Three traps shape this module:

* A published port accepts TCP before the app listens: the port publisher
  (docker-proxy) takes the connection and only then finds nobody behind it. So
  "connect succeeded" proves nothing. We read the container's own socket table and
  wait for the app's LISTEN socket: from ``/proc/<pid>/net`` where the engine is
  local, through ``exec`` of ``cat`` (or ``sh``) where it is not.
* The engine runs an image's first HEALTHCHECK one interval after start (30 s by
  default). We run the same check ourselves with ``exec`` while we wait, and
  still honour the engine's verdict when it says ``unhealthy``.
* A container that exits while we wait must fail the wait at once, not at the
  timeout.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigurationError,
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


#: What "ready" means (``dockapp_ready``): see :class:`ReadyWait`.
READY_CHOICES = ("auto", "listen", "http", "healthcheck")


def parse_ready(value: str) -> str:
    """One of :data:`READY_CHOICES`."""
    if value not in READY_CHOICES:
        raise ConfigurationError(f"{value!r} is unknown", hint="valid: " + ", ".join(READY_CHOICES))
    return value


def parse_timeout(value: str | float) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigurationError(f"{value!r} is not a positive number of seconds", hint="e.g. 60 or 2.5")
    return seconds


def parse_health_path(value: str) -> str:
    """An absolute HTTP path."""
    if not value.startswith("/"):
        raise ConfigurationError(f"{value!r} must start with '/'", hint="e.g. /health")
    return value


_LISTEN = b"0A"
_INSPECT_EVERY = 0.05
_LOOPBACK4 = "7F"  # last byte of a little-endian 127.x.x.x address in /proc/net/tcp
_LOOPBACK6 = "00000000000000000000000001000000"


class ProcSocketTable:
    """A container's socket table, read through ``/proc/<pid>/net`` on the engine's host."""

    def __init__(self, pid: int, ipv4: str = ""):
        self.pid = pid
        self.ipv4 = ipv4  # the container's IPv4 address on its network, to tell dual-stack from IPv6-only
        self.scanned = False  # whether the last answer needed the socket tables (costly) or not
        self._dual_stack: set[int] = set()

    @classmethod
    def for_container(cls, attrs: dict[str, Any]) -> ProcSocketTable | None:
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
                    where = _listener(fields[1], hex_port)
                    if where == "any":
                        return where
                    found = found or where
                if len(chunk) < 2048:  # seq_file hands out a full page unless the table ended
                    break
        except OSError:
            return found
        finally:
            os.close(fd)
        return found


def _listener(local_address: bytes, hex_port: str) -> str | None:
    """``"any"``, ``"loopback"`` or None for one LISTEN line's ``local_address`` field."""
    addr, _, lport = local_address.decode("ascii").partition(":")
    if lport != hex_port:
        return None
    if (addr.endswith(_LOOPBACK4) and len(addr) == 8) or addr == _LOOPBACK6:
        return "loopback"
    return "any"


# The exec forms that print /proc/net/tcp and tcp6, tried in turn: most images have cat, some
# only a shell, and a few (distroless, scratch) neither.
_TABLE_COMMANDS = (
    ["cat", "/proc/net/tcp", "/proc/net/tcp6"],
    ["sh", "-c", 'for f in /proc/net/tcp /proc/net/tcp6; do while IFS= read -r l; do echo "$l"; done < $f; done'],
)


class ExecSocketTable:
    """A container's socket table, read by ``exec`` through the engine: works on any engine
    (remote, podman, a VM), at the cost of one exec per look (30-60 ms here)."""

    def __init__(self, client: docker.DockerClient, container_id: str):
        self.client = client
        self.container_id = container_id
        self.usable = True  # False once no command could read the table (the image has neither)
        self._commands = list(_TABLE_COMMANDS)

    def listening(self, port: int) -> str | None:
        text = self._read()
        if text is None:
            return None
        found: str | None = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3] == _LISTEN:
                where = _listener(fields[1], f"{port:04X}")
                if where == "any":
                    return where
                found = found or where
        return found

    def _read(self) -> bytes | None:
        import docker.errors

        while self._commands:
            api = self.client.api
            try:
                exec_id = api.exec_create(self.container_id, self._commands[0], stdout=True, stderr=False)["Id"]
                out = api.exec_start(exec_id)
                code = api.exec_inspect(exec_id).get("ExitCode")
            except docker.errors.APIError:
                return None  # the container is going away: the wait's inspect says how
            # cat exits 1 when tcp6 is missing (no IPv6) but has printed tcp: only 126/127 mean
            # the command itself is not in the image.
            if code in (126, 127):
                self._commands.pop(0)
                continue
            return out if isinstance(out, bytes) else str(out).encode()
        self.usable = False
        return None


def socket_table(client: docker.DockerClient, attrs: dict[str, Any]) -> ProcSocketTable | ExecSocketTable:
    """The cheapest way to read this container's socket table."""
    return ProcSocketTable.for_container(attrs) or ExecSocketTable(client, attrs["Id"])


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
    #: When our own HEALTHCHECK runs ran (epoch seconds, from and to): what they made the app
    #: log is left out of the test's log section.
    probe_windows: list[tuple[float, float]] = field(default_factory=list)


def _health_log(state: dict[str, Any]) -> str:
    entries = ((state.get("Health") or {}).get("Log")) or []
    return "\n".join(f"exit {e.get('ExitCode')}: {str(e.get('Output', '')).strip()}" for e in entries[-5:])


PROBE_AGENT = "pytest-dockapp-probe"


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$")
#: Slack around a HEALTHCHECK run: the engine stamps a line when it reads it, a little later.
_WINDOW_SLACK = 0.1


def without_probes(text: str, windows: Sequence[tuple[float, float]] = ()) -> tuple[list[str], int]:
    """The lines of ``text``, a log read with the engine's timestamps (which are dropped), without
    those of our own probes: HTTP probes by their user agent, HEALTHCHECK runs by when they ran;
    and how many were left out."""
    import calendar

    kept, hidden = [], 0
    for line in text.splitlines():
        stamp, _, message = line.partition(" ")
        m = _STAMP.match(stamp)
        if m is None:
            at, message = None, line
        else:  # RFC 3339 with up to nanoseconds, trailing zeros trimmed: what the engine writes
            at = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(f"0.{m.group(2) or 0}")
        ours = at is not None and any(a - _WINDOW_SLACK <= at <= b + _WINDOW_SLACK for a, b in windows)
        if ours or PROBE_AGENT in message:
            hidden += 1
        else:
            kept.append(message)
    return kept, hidden


def probes_note(hidden: int) -> list[str]:
    return [f"({hidden} lines of pytest-dockapp's own probe requests left out)"] if hidden else []


def _logs(client: docker.DockerClient, container_id: str, lines: int = 30) -> str:
    """The log tail, without the access-log lines of our own probe requests."""
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=lines * 10)
    except Exception:
        return "(logs unavailable)"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    kept, hidden = without_probes(text)
    return "\n".join(kept[-lines:] + probes_note(hidden))


class PortCheck:
    """The main port is ready when the app's LISTEN socket is in the container's socket table
    and the published port answers from here (a GET of ``health_path`` when there is one)."""

    def __init__(
        self,
        table: ProcSocketTable | ExecSocketTable,
        host: str,
        host_port: int,
        container_port: int,
        health_path: str | None,
        interval: float,
    ):
        self.table, self.host, self.host_port = table, host, host_port
        self.container_port, self.health_path = container_port, health_path
        # HTTP probes back off to 100 ms: each one is a line in the app's access log. An exec'd
        # table read costs an engine round trip, so those back off to 250 ms.
        self._wait = self._first_wait = interval
        self._next = 0.0
        self.last: str | None = "no probe has run yet"

    def _has_table(self) -> bool:
        return not isinstance(self.table, ExecSocketTable) or self.table.usable

    @property
    def name(self) -> str:
        if self.health_path:
            return f"GET {self.health_path}"
        if not self._has_table():
            return "port accepts (no socket table: the image has neither cat nor sh)"
        return "port accepts"

    def poll(self, now: float) -> str | None:
        """None when ready, else why not (the last probe's answer between backed-off probes)."""
        if now < self._next:
            return self.last
        self.last = self._probe()
        slow = self.health_path or isinstance(self.table, ExecSocketTable)
        if slow:
            self._wait = min(0.1 if self.health_path else 0.25, self._wait * 1.5)
            self._next = time.perf_counter() + self._wait
        return self.last

    def _probe(self) -> str | None:
        host, port, cport = self.host, self.host_port, self.container_port
        where = self.table.listening(cport) if self._has_table() else None
        if not self._has_table():  # the image has neither cat nor sh (known once the first read tried)
            # No way to see the app's socket: a connection the publisher keeps open for 0.25 s is
            # the best evidence left (docker-proxy closes at once when nothing listens behind it).
            return probe_http(host, port, self.health_path) if self.health_path else probe_connect(host, port, 0.25)
        if where is None:
            return f"nothing listens on port {cport} inside the container yet"
        if where == "loopback":
            return (
                f"the app listens on 127.0.0.1:{cport} inside the container, which the "
                f"published port cannot reach: make it listen on 0.0.0.0:{cport}"
            )
        if where == "ipv6-only":
            return (
                f"the app listens on [::]:{cport} for IPv6 only (IPV6_V6ONLY), and the published "
                f"port forwards IPv4: make it listen on 0.0.0.0:{cport} or dual-stack"
            )
        if self.health_path:
            return probe_http(host, port, self.health_path)
        try:
            socket.create_connection((host, port), timeout=1.0).close()
        except OSError as exc:
            return f"connect to {host}:{port}: {exc}"
        return None


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
    ):
        self.client, self.container_id, self.label, self.start = client, container_id, label, start
        self.proc = table if isinstance(table, ProcSocketTable) else None  # PID 1 is watched here
        self.state = state  # just inspected by the caller
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
            if not self._fresh and (proc is None or now - self._inspected >= _INSPECT_EVERY or not proc.alive()):
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
                evidence=tail(_logs(self.client, self.container_id), 30),
                evidence_title="container log (last lines)",
                hint="run the image by hand (docker run --rm -it <image>) to see why its command stops",
            )
        if self.health == "unhealthy":
            raise UnhealthyError(
                f"container {self.label} is unhealthy: its HEALTHCHECK failed "
                f"{(state.get('Health') or {}).get('FailingStreak', '?')} times in a row",
                evidence=_health_log(state)
                + "\n--- container log ---\n"
                + tail(_logs(self.client, self.container_id), 20),
                evidence_title="health log",
                hint="run the HEALTHCHECK command in the container (docker exec) to see why it fails",
            )


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
        *,
        host: str,
        host_port: int | None,
        container_port: int | None,
        health_path: str | None = None,
        mode: str = "auto",
        timeout: float = DEFAULT_TIMEOUT,
        interval: float = 0.005,
        name: str = "",
        attrs: dict[str, Any],
        on_notice: Callable[[str], None] | None = None,
        exec_every: float = 0.1,
        exec_growth: float = 1.0,
    ):
        parse_ready(mode)
        self.client, self.container_id, self.timeout, self.interval = client, container_id, timeout, interval
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
        path = {"auto": health_path, "http": health_path or "/"}.get(mode)
        self.table = socket_table(client, attrs)
        self.watch = ContainerWatch(client, container_id, self.label, attrs.get("State") or {}, self.table, self.start)
        self.port = (
            PortCheck(self.table, host, host_port, container_port, path, interval)
            if host_port is not None and container_port is not None
            else None
        )
        self.health: HealthcheckRun | None = None
        if health_cmd:
            # The engine gives each run the HEALTHCHECK's --timeout (default 30 s); so do we.
            seconds = ((config.get("Healthcheck") or {}).get("Timeout") or 30_000_000_000) / 1e9
            self.health = HealthcheckRun(client, container_id, health_cmd, seconds, exec_every, exec_growth)
        self.health_cmd = health_cmd
        self.path = path
        self._client_error_since: float | None = None

    @property
    def checks(self) -> list[str]:
        return (["HEALTHCHECK"] if self.health else []) + ([self.port.name] if self.port else [])

    def run(self) -> Readiness:
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
            evidence=tail(_logs(self.client, self.container_id), 30),
            evidence_title="container log (last lines)",
            hint=_timeout_hint(
                last_error, self.port.container_port if self.port else None, self.path, self.label, self.health_cmd
            ),
        )


def wait_ready(
    client: docker.DockerClient,
    container_id: str,
    *,
    attrs: dict[str, Any] | None = None,
    **options: Any,
) -> Readiness:
    """Block until the container's service answers (see :class:`ReadyWait` for the options);
    raise a precise error otherwise. ``on_notice`` hears, once, about a wait that looks wrong but
    may still end well (a health path that answers 404)."""
    import docker.errors

    if attrs is None:
        try:
            attrs = client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            label = options.get("name") or container_id[:12]
            raise ContainerGoneError(f"container {label} disappeared before it could be probed") from None
    return ReadyWait(client, container_id, attrs=attrs, **options).run()


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
