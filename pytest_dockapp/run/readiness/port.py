"""The main port: listening inside, answering from here (a GET of the health path, if any)."""

from __future__ import annotations

import http.client
import socket
import time

from pytest_dockapp.run.readiness.logs import PROBE_AGENT
from pytest_dockapp.run.readiness.sockets import ExecSocketTable, ProcSocketTable


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
