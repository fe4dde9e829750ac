"""Real projects' compose shapes (those of ``tests/compose_corpus``), adapted to run offline on
the local bases and nothing else changed, run by the plugin as a user runs them, and beside
``docker-compose`` v1 on the same file where v1 can run it. Each leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import uuid
from pathlib import Path

import docker
import pytest

from pytest_dockapp.services.compose import load_project

from .helpers import App

#: Each project: its compose file, a test of what it promises, and whether compose v1 runs it.
PROJECTS = {
    # awesome-compose's database samples: the password as a file secret, read from /run/secrets.
    "secrets": (
        """
        services:
          backend:
            build: .
            restart: always
            secrets: [db-password]
            volumes: [/scratch]
            depends_on:
              db: {condition: service_healthy}
          db:
            image: POSTGRES
            restart: always
            secrets: [db-password]
            environment: [POSTGRES_PASSWORD_FILE=/run/secrets/db-password]
            healthcheck: {test: "pg_isready -h 127.0.0.1", interval: 1s, retries: 30}
            volumes: [db-data:/var/lib/postgresql/data]
            expose: [5432]
        volumes:
          db-data: {}
        secrets:
          db-password: {file: db/password.txt}
        """,
        """
        def test_backend(dockapp, dockapp_services):
            assert dockapp.get("/").text == "hello\\n"
            mounts = dockapp.container.attrs["Mounts"]
            open("anonymous.txt", "w").write(next(m["Name"] for m in mounts if m["Destination"] == "/scratch"))
            assert dockapp_services["db"].exec(["cat", "/run/secrets/db-password"])[1] == "db-pw\\n"
            assert dockapp.exec(["sh", "-c", "nc -w 2 db 5432 </dev/null && echo up"])[1] == "up\\n"
        """,
        True,
    ),
    # Docker's compose quickstart: the infrastructure in an included file, watch mode.
    "include": (
        """
        include: [infra.yaml]
        services:
          web:
            build: .
            ports: ["8000:80"]
            develop:
              watch: [{action: sync, path: ., target: /www}]
            depends_on: [redis]
        """,
        """
        def test_web(dockapp):
            assert dockapp.exec(["sh", "-c", "printf 'PING\\\\r\\\\n' | nc -w 2 redis 6379"])[1] == "+PONG\\r\\n"
        """,
        False,  # v1 has neither include: nor develop:
    ),
    # mastodon: the databases on an internal network, the app on that and an outer one.
    "networks": (
        """
        services:
          db:
            image: POSTGRES
            restart: always
            shm_size: 256mb
            networks: [internal_network]
            healthcheck: {test: "pg_isready -h 127.0.0.1", interval: 1s, retries: 30}
          redis:
            image: REDIS
            restart: always
            networks: [internal_network]
          web:
            build: .
            networks: [external_network, internal_network]
            depends_on: [db, redis]
          edge:
            image: BUSYBOX
            command: [sleep, "3600"]
            networks: [external_network]
        networks:
          external_network:
          internal_network:
            internal: true
        """,
        """
        def test_apart(dockapp, dockapp_services):
            edge, db = dockapp_services["edge"], dockapp_services["db"]
            assert edge.exec(["sh", "-c", "nc -w 2 web 80 </dev/null && echo up"])[1] == "up\\n"
            assert edge.exec(["sh", "-c", "nc -w 2 db 5432 </dev/null 2>/dev/null || echo apart"])[1] == "apart\\n"
            assert "shm" in db.exec(["sh", "-c", "df -k /dev/shm | grep 262144"])[1]
        """,
        True,
    ),
    # minecraft and wireguard: resources, a terminal, capabilities, sysctls, ulimits.
    "limits": (
        """
        services:
          game:
            build: .
            deploy:
              resources:
                limits: {memory: 96M, cpus: "0.5"}
            stdin_open: true
            tty: true
            cap_add: [NET_ADMIN]
            sysctls: [net.ipv4.ip_forward=1]
            ulimits: {nofile: {soft: 4096, hard: 8192}}
            restart: unless-stopped
        """,
        """
        def test_limits(dockapp):
            host = dockapp.container.attrs["HostConfig"]
            assert (host["Memory"], host["NanoCpus"], host["CapAdd"]) == (96 * 1024 * 1024, 500000000, ["NET_ADMIN"])
            assert dockapp.exec(["cat", "/proc/sys/net/ipv4/ip_forward"])[1] == "1\\n"
            assert dockapp.exec(["sh", "-c", "ulimit -n"])[1] == "4096\\n"
        """,
        True,
    ),
    # pihole-cloudflared-DoH: a service at a fixed address of an ipam subnet, named by address.
    "addresses": (
        """
        services:
          resolver:
            image: BUSYBOX
            command: [httpd, -f, -p, "5054", -h, /]
            networks:
              dns-net: {ipv4_address: SUBNET.2}
          web:
            build: .
            environment: ["UPSTREAM=SUBNET.2#5054"]
            depends_on: [resolver]
            networks: [dns-net]
        networks:
          dns-net:
            ipam:
              config: [{subnet: SUBNET.0/24}]
        """,
        """
        def test_by_address(dockapp):
            upstream = dockapp.exec(["sh", "-c", "echo $UPSTREAM"])[1].strip().split("#")[0]
            assert dockapp.exec(["sh", "-c", f"nc -w 2 {upstream} 5054 </dev/null && echo up"])[1] == "up\\n"
        """,
        True,
    ),
    # A base service shared by extends, a config file handed to the server, a sidecar on its network.
    "extends": (
        """
        services:
          web:
            extends: {file: common.yaml, service: base}
            configs: [{source: banner, target: /www/banner.txt}]
          sidecar:
            image: BUSYBOX
            command: [sleep, "3600"]
            network_mode: service:web
        configs:
          banner: {file: ./banner.txt}
        """,
        """
        def test_extended(dockapp, dockapp_services):
            assert dockapp.exec(["sh", "-c", "echo $ROLE"])[1] == "web\\n"
            sidecar = dockapp_services["sidecar"]
            assert sidecar.exec(["wget", "-q", "-O", "-", "http://127.0.0.1/banner.txt"])[1] == "from a config\\n"
        """,
        True,
    ),
}


@pytest.fixture(scope="module")
def compose_v1() -> str | None:
    """compose v1, to run each file beside the plugin: required in CI (``.ci/run`` installs it)."""
    found = shutil.which("docker-compose")
    if found is None and os.environ.get("CI"):
        pytest.fail("docker-compose (v1) is needed beside the plugin: apt-get install docker-compose")
    return found


def adapt(app: App, folder: Path, text: str, redis: str, postgres: str, subnet: str) -> None:
    """The project's files, its registry images replaced by the local bases."""
    app.httpd(path=folder)
    bases = {"POSTGRES": postgres, "REDIS": redis, "BUSYBOX": app.busybox, "SUBNET": subnet}
    for key, value in bases.items():
        text = text.replace(key, value)
    (folder / "compose.yaml").write_text(textwrap.dedent(text).lstrip())
    (folder / "db").mkdir(exist_ok=True)
    (folder / "db" / "password.txt").write_text("db-pw\n")
    (folder / "banner.txt").write_text("from a config\n")
    (folder / "common.yaml").write_text("services:\n  base: {build: ., environment: {ROLE: web}}\n")
    (folder / "infra.yaml").write_text(f"services:\n  redis: {{image: {redis}}}\n")


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_a_real_projects_stack_runs_unchanged_and_leaves_nothing(
    name: str,
    app: App,
    pytester: pytest.Pytester,
    redis_base: str,
    postgres_base: str,
    compose_v1: str | None,
    docker_client: docker.DockerClient,
) -> None:
    import random

    compose_text, test, v1 = PROJECTS[name]
    subnet = f"10.{random.randint(64, 250)}.{random.randint(0, 250)}"  # a shared engine: never a fixed one
    adapt(app, pytester.path, compose_text, redis_base, postgres_base, subnet)
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile(textwrap.dedent(test))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    stack = f"dockapp-{pytester.path.name[:30].lower()}"
    assert docker_client.containers.list(all=True, filters={"name": stack}) == []
    assert [n.name for n in docker_client.networks.list() if n.name.startswith(stack)] == []
    assert [v.name for v in docker_client.volumes.list() if v.name.startswith(stack)] == []
    anonymous = pytester.path / "anonymous.txt"
    assert anonymous.exists() == (name == "secrets")
    if anonymous.exists():  # an anonymous volume goes with its container
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(anonymous.read_text())
    if v1 and compose_v1:  # the same file under compose v1: every service comes up, then goes
        project = [compose_v1, "-p", f"dockapp-test-v1-{uuid.uuid4().hex[:8]}"]
        subprocess.run([*project, "up", "-d"], cwd=pytester.path, check=True, capture_output=True, timeout=300)
        try:
            ids = subprocess.check_output([*project, "ps", "-q"], cwd=pytester.path, text=True).split()
            states = subprocess.check_output(["docker", "inspect", "-f", "{{.State.Running}}", *ids], text=True)
            services = load_project([pytester.path / "compose.yaml"], env={}).services
            assert states.split() == ["true"] * len(services)
        finally:
            down = [*project, "down", "-v", "-t", "0", "--rmi", "local"]
            subprocess.run(down, cwd=pytester.path, check=True, capture_output=True)
