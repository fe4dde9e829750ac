"""The socket-table probe against real containers (library level, no pytest plugin)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_dockapp.run.readiness.sockets import ProcSocketTable

from .helpers import ENDPOINT


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


def wait_for(probe: ProcSocketTable, want: str | None, timeout: float = 5.0) -> str | None:
    deadline = time.monotonic() + timeout
    seen = probe.listening(80)
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = probe.listening(80)
    return seen


@pytest.mark.local_engine("reads /proc of the engine's host")
def test_probe_sees_listen_loopback_and_nothing(run: Any) -> None:
    idle = ProcSocketTable.for_container(run("sleep", "30").attrs)
    assert idle is not None
    assert idle.listening(80) is None
    assert idle.scanned is False  # no TCP socket at all: answered from the namespace's counters

    late = ProcSocketTable.for_container(run("sh", "-c", "sleep 0.3; exec httpd -f -p 80").attrs)
    assert late is not None
    assert late.listening(80) is None
    assert wait_for(late, "any") == "any"
    assert late.scanned is True

    local = ProcSocketTable.for_container(run("httpd", "-f", "-p", "127.0.0.1:80").attrs)
    assert local is not None
    assert wait_for(local, "loopback") == "loopback"

    other = ProcSocketTable.for_container(run("httpd", "-f", "-p", "81").attrs)
    assert other is not None
    time.sleep(0.2)
    assert other.listening(80) is None and other.scanned is True  # a socket exists, on another port


@pytest.mark.local_engine("reads /proc of the engine's host")
def test_probe_notices_that_pid_1_is_gone(run: Any) -> None:
    container = run("sleep", "30")
    probe = ProcSocketTable.for_container(container.attrs)
    assert probe is not None and probe.alive()
    container.kill()
    container.wait(timeout=10)
    assert not probe.alive()


@pytest.mark.local_engine("reads /proc of the engine's host")
def test_probe_refuses_a_pid_of_another_container(run: Any) -> None:
    a, b = run("sleep", "30"), run("sleep", "30")
    forged = dict(b.attrs, State={**b.attrs["State"], "Pid": a.attrs["State"]["Pid"]})
    assert ProcSocketTable.for_container(forged) is None


@pytest.mark.local_engine("reads /proc of the engine's host")
def test_an_ipv6_only_listener_is_not_ready(docker_client: Any, busybox: str) -> None:
    """[::] with IPV6_V6ONLY looks like any other listener in the socket table, but docker-proxy
    forwards IPv4 and is refused: the wait must see that."""
    from pytest_dockapp.core.errors import ReadinessTimeoutError
    from pytest_dockapp.run.readiness.wait import ProbeTarget, WaitPlan, wait_ready

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
            wait_ready(docker_client, container.id, ProbeTarget("127.0.0.1", port, 80), WaitPlan(timeout=2))
        assert "listens on [::]:80 for IPv6 only (IPV6_V6ONLY)" in str(info.value)
    finally:
        container.remove(force=True)


@pytest.mark.remote
def test_the_socket_table_read_through_exec_sees_listen_loopback_and_nothing(run: Any, docker_client: Any) -> None:
    """What a remote engine gets: the same answers as /proc, through the engine."""
    from pytest_dockapp.run.readiness.sockets import ExecSocketTable

    idle = ExecSocketTable(docker_client, run("sleep", "30").id)
    assert idle.listening(80) is None and idle.usable
    local = ExecSocketTable(docker_client, run("httpd", "-f", "-p", "127.0.0.1:80").id)
    assert wait_for(local, "loopback") == "loopback"  # type: ignore[arg-type]
    served = ExecSocketTable(docker_client, run("httpd", "-f", "-p", "80").id)
    assert wait_for(served, "any") == "any"  # type: ignore[arg-type]


@pytest.mark.remote
def test_the_socket_table_is_read_by_a_shell_when_the_image_has_no_cat(run: Any, docker_client: Any) -> None:
    from pytest_dockapp.run.readiness.sockets import ExecSocketTable

    container = run("sh", "-c", "rm /bin/cat; exec httpd -f -p 80")
    table = ExecSocketTable(docker_client, container.id)
    assert wait_for(table, "any") == "any"  # type: ignore[arg-type]
    assert table.usable and table._commands[0][0] == "sh"


@pytest.mark.remote
def test_an_image_with_neither_cat_nor_sh_falls_back_to_a_held_connection(docker_client: Any, busybox: str) -> None:
    """Distroless-like images: no command can print the table, so the wait says what it relies on."""
    import io

    from pytest_dockapp.run.readiness.port import PortCheck
    from pytest_dockapp.run.readiness.sockets import ExecSocketTable

    dockerfile = f"FROM {busybox} AS tools\nFROM scratch\nCOPY --from=tools /bin/busybox /httpd\nEXPOSE 80\n"
    image, _ = docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), rm=True, labels={"dockapp-test": "probe"}
    )
    container = docker_client.containers.run(
        image.id,
        ["/httpd", "-f", "-p", "80"],
        detach=True,
        ports={"80/tcp": (ENDPOINT.publish_address(), None)},
        labels={"dockapp-test": "probe"},
    )
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        table = ExecSocketTable(docker_client, container.id)
        check = PortCheck(table, ENDPOINT.connect_host(), port, 80, None, 0.005)
        deadline = time.monotonic() + 5
        while check.poll(time.perf_counter()) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert check.poll(time.perf_counter()) is None
        assert check.name == "port accepts (no socket table: the image has neither cat nor sh)"
    finally:
        container.remove(force=True)
        docker_client.images.remove(image.id, noprune=False)
