"""The socket-table probe against real containers (library level, no pytest plugin)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_dockapp.readiness import ListenProbe


@pytest.fixture
def run(docker_client: Any, busybox: str) -> Iterator[Any]:
    started: list[Any] = []

    def start(*cmd: str) -> Any:
        container = docker_client.containers.run(busybox, list(cmd), detach=True, labels={"dockapp-test": "probe"})
        started.append(container)
        container.reload()
        return container

    yield start
    for container in started:
        container.remove(force=True)


def wait_for(probe: ListenProbe, want: str | None, timeout: float = 5.0) -> str | None:
    deadline = time.monotonic() + timeout
    seen = probe.listening(80)
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = probe.listening(80)
    return seen


def test_probe_sees_listen_loopback_and_nothing(run: Any) -> None:
    idle = ListenProbe.for_container(run("sleep", "30").attrs)
    assert idle is not None
    assert idle.listening(80) is None
    assert idle.scanned is False  # no TCP socket at all: answered from the namespace's counters

    late = ListenProbe.for_container(run("sh", "-c", "sleep 0.3; exec httpd -f -p 80").attrs)
    assert late is not None
    assert late.listening(80) is None
    assert wait_for(late, "any") == "any"
    assert late.scanned is True

    local = ListenProbe.for_container(run("httpd", "-f", "-p", "127.0.0.1:80").attrs)
    assert local is not None
    assert wait_for(local, "loopback") == "loopback"

    other = ListenProbe.for_container(run("httpd", "-f", "-p", "81").attrs)
    assert other is not None
    time.sleep(0.2)
    assert other.listening(80) is None and other.scanned is True  # a socket exists, on another port


def test_probe_notices_that_pid_1_is_gone(run: Any) -> None:
    container = run("sleep", "30")
    probe = ListenProbe.for_container(container.attrs)
    assert probe is not None and probe.alive()
    container.kill()
    container.wait(timeout=10)
    assert not probe.alive()


def test_probe_refuses_a_pid_of_another_container(run: Any) -> None:
    a, b = run("sleep", "30"), run("sleep", "30")
    forged = dict(b.attrs, State={**b.attrs["State"], "Pid": a.attrs["State"]["Pid"]})
    assert ListenProbe.for_container(forged) is None


def test_an_ipv6_only_listener_is_not_ready(docker_client: Any, busybox: str) -> None:
    """[::] with IPV6_V6ONLY looks like any other listener in the socket table, but docker-proxy
    forwards IPv4 and is refused: the wait must see that."""
    from pytest_dockapp.errors import ReadinessTimeoutError
    from pytest_dockapp.readiness import wait_ready

    container = docker_client.containers.run(
        busybox,
        ["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p '[::]:80' -h /www"],
        detach=True,
        sysctls={"net.ipv6.bindv6only": "1"},
        ports={"80/tcp": ("127.0.0.1", None)},
        labels={"dockapp-test": "probe"},
    )
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        with pytest.raises(ReadinessTimeoutError) as info:
            wait_ready(docker_client, container.id, host="127.0.0.1", host_port=port, container_port=80, timeout=2)
        assert "listens on [::]:80 for IPv6 only (IPV6_V6ONLY)" in str(info.value)
    finally:
        container.remove(force=True)
