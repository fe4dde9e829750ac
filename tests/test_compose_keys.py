"""Compose files as real projects write them: every key honoured, accepted with a notice, or
refused all at once with its line; secrets and configs; include and extends."""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import docker
import pytest

from pytest_dockapp.core.errors import ComposeError
from pytest_dockapp.services.compose import load_project

from .helpers import App


def write(folder: Path, text: str, name: str = "compose.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_every_refused_key_is_named_at_once_with_its_line_and_a_hint_that_works(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        services:
          web:
            image: web
            privileged: true
            volumes_from: [db]
          db:
            image: db
            gpus: all
        """,
    )
    with pytest.raises(ComposeError) as info:
        load_project([path], env={})
    error = info.value
    assert "3 keys a test run cannot honour" in error.what
    assert error.evidence is not None
    lines = error.evidence.splitlines()
    assert lines[0].startswith("service web: privileged (compose.yaml:4): containers are never privileged")
    assert lines[1].startswith("service web: volumes_from (compose.yaml:5): mount the same named volume")
    assert lines[2].startswith("service db: gpus (compose.yaml:8)")
    assert error.hint is not None and error.hint.endswith("dockapp_compose_ignore = gpus privileged volumes_from")
    # The hint works: skipped keys load, and the run says which it skipped.
    project = load_project([path], env={}, ignore=["privileged", "volumes_from", "db.gpus"])
    assert project.ignored == {"privileged": ["web"], "volumes_from": ["web"], "gpus": ["db"]}
    assert "skipped by dockapp_compose_ignore: gpus (db), privileged (web), volumes_from (web)" in (
        project.notice() or ""
    )


def test_links_give_the_linked_service_its_alias_and_start_it_first(tmp_path: Path) -> None:
    path = write(
        tmp_path, "services:\n  web: {image: web, links: [db, 'cache:redis']}\n  db: {image: db}\n  cache: {image: c}\n"
    )
    project = load_project([path], env={})
    assert project.services["web"].depends_on == {"db": "service_started", "cache": "service_started"}
    assert project.services["cache"].networks["default"].aliases == ("redis",)
    assert project.services["db"].networks["default"].aliases == ("db",)


def test_keys_that_change_nothing_in_a_test_run_load_with_one_notice(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        services:
          web:
            image: web
            restart: unless-stopped
            develop: {watch: [{action: sync, path: ., target: /app}]}
            logging: {driver: json-file, options: {max-size: 10m}}
            stop_grace_period: 1m
          db: {image: db, restart: always}
        """,
    )
    project = load_project([path], env={})
    notice = project.notice()
    assert notice is not None and notice.endswith(
        "not applied in a test run: develop (web), logging (web), restart (db, web), stop_grace_period (web)"
    )


def test_engine_keys_take_the_engine_api_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        services:
          web:
            image: web
            cap_add: [NET_ADMIN]
            cap_drop: [MKNOD]
            shm_size: 64m
            sysctls: [net.core.somaxconn=1024]
            ulimits: {nproc: 65535, nofile: {soft: 20000, hard: 40000}}
            extra_hosts: ["host.docker.internal=host-gateway", "db.local:10.0.0.5", "v6:[::1]"]
            dns: 10.0.0.2
            domainname: example.test
            read_only: true
            tty: true
            stdin_open: true
            pids_limit: 100
            deploy: {replicas: 1, resources: {limits: {memory: 1.5g, cpus: "0.5"}, reservations: {memory: 64M}}}
        """,
    )
    engine = load_project([path], env={}).services["web"].engine
    assert engine.create == {"stdin_open": True, "tty": True, "domainname": "example.test"}
    assert engine.host == {
        "cap_add": ["NET_ADMIN"],
        "cap_drop": ["MKNOD"],
        "dns": ["10.0.0.2"],
        "shm_size": 64 * 1024**2,
        "pids_limit": 100,
        "read_only": True,
        "sysctls": {"net.core.somaxconn": "1024"},
        "ulimits": [{"Name": "nproc", "Soft": 65535, "Hard": 65535}, {"Name": "nofile", "Soft": 20000, "Hard": 40000}],
        "extra_hosts": ["host.docker.internal:host-gateway", "db.local:10.0.0.5", "v6:::1"],
        "mem_limit": int(1.5 * 1024**3),
        "nano_cpus": 500_000_000,
        "mem_reservation": 64 * 1024**2,
    }


def test_secrets_and_configs_become_files_with_their_target_mode_and_owner(tmp_path: Path) -> None:
    (tmp_path / "pw.txt").write_text("s3cret\n")
    path = write(
        tmp_path,
        """
        services:
          db:
            image: db
            secrets: [db-password, {source: api-token, target: token, uid: "999", mode: 0400}]
            configs: [{source: app-conf, target: /etc/app.conf}, motd]
        secrets:
          db-password: {file: ./pw.txt}
          api-token: {environment: API_TOKEN}
        configs:
          app-conf: {content: "debug=true"}
          motd: {file: ./pw.txt}
        """,
    )
    project = load_project([path], env={})
    files = {f.path: f for f in project.services["db"].files}
    assert sorted(files) == ["/etc/app.conf", "/motd", "/run/secrets/db-password", "/run/secrets/token"]
    assert (files["/run/secrets/db-password"].kind, files["/run/secrets/db-password"].mode) == ("file", 0o444)
    assert files["/run/secrets/db-password"].ref == str(tmp_path / "pw.txt")
    token = files["/run/secrets/token"]
    assert (token.kind, token.ref, token.mode, token.uid, token.secret) == (
        "environment",
        "API_TOKEN",
        0o400,
        999,
        True,
    )
    assert files["/etc/app.conf"].content() == b"debug=true" and not files["/etc/app.conf"].secret
    assert project.secret_values() == {"s3cret\n", "s3cret"}
    with pytest.raises(ComposeError, match=r"the secret for /run/secrets/token comes from the environment variable"):
        token.content()
    write(tmp_path, "services:\n  db: {image: db, secrets: [nope]}\n", "bad.yaml")
    with pytest.raises(ComposeError, match=r"service db uses secret 'nope', which is not a top-level secret"):
        load_project([tmp_path / "bad.yaml"], env={})


def test_include_reads_each_project_from_its_own_folder_and_the_includer_wins(tmp_path: Path) -> None:
    write(tmp_path / "db", "DB_TAG=15\n", ".env")
    write(
        tmp_path / "db",
        """
        services:
          db:
            build: ./image
            image: db:${DB_TAG}
            env_file: db.env
          admin: {image: "admin:${DB_TAG}"}
        volumes: {dbdata: {}}
        """,
    )
    write(tmp_path / "db", "POSTGRES_PASSWORD=pw\n", "db.env")
    main = write(
        tmp_path,
        """
        include:
          - db/compose.yaml
        services:
          web: {image: web, depends_on: [db], volumes: [dbdata:/data]}
          admin: {image: admin:mine}
        """,
    )
    project = load_project([main], env={})
    assert sorted(project.services) == ["admin", "db", "web"]
    db = project.services["db"]
    assert db.image == "db:15" and db.build is not None and db.build.context == tmp_path / "db" / "image"
    assert db.environment == {"POSTGRES_PASSWORD": "pw"}
    assert project.services["admin"].image == "admin:mine"  # the includer's definition wins
    assert project.volumes == ["dbdata"]
    write(tmp_path / "loop", "include: [../loop.yaml]\nservices: {a: {image: a}}\n")
    write(tmp_path, "include: [loop/compose.yaml]\nservices: {b: {image: b}}\n", "loop.yaml")
    with pytest.raises(ComposeError, match=r"include cycle: .*loop.yaml includes .*compose.yaml includes .*loop.yaml"):
        load_project([tmp_path / "loop.yaml"], env={})


def test_extends_merges_a_base_service_of_this_file_or_another(tmp_path: Path) -> None:
    write(
        tmp_path / "common",
        """
        services:
          base:
            build: ./app
            environment: {LEVEL: info, REGION: eu}
            ports: ["80"]
        """,
        "services.yaml",
    )
    path = write(
        tmp_path,
        """
        services:
          web:
            extends: {file: common/services.yaml, service: base}
            environment: {LEVEL: debug}
          worker:
            extends: web
            command: [work]
        """,
    )
    project = load_project([path], env={})
    web, worker = project.services["web"], project.services["worker"]
    assert web.build is not None and web.build.context == tmp_path / "common" / "app"  # the base file's folder
    assert web.environment == {"LEVEL": "debug", "REGION": "eu"}
    assert [p.container for p in web.ports] == [80]
    assert worker.environment == web.environment and worker.command == ["work"]
    write(tmp_path, "services:\n  a: {image: a, extends: b}\n  b: {image: b, extends: a}\n", "cycle.yaml")
    with pytest.raises(ComposeError, match=r"extends cycle"):
        load_project([tmp_path / "cycle.yaml"], env={})


def test_a_real_stack_gets_its_secrets_configs_and_engine_keys(
    app: App, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stack as a user's project writes it, run by the plugin: an included database service,
    a web service that extends a base, secrets from a file and from the environment, a config,
    and the engine keys a test run honours. A failing test's log section masks the secret."""
    app.httpd()
    root = pytester.path
    (root / "db-password.txt").write_text("hunter2-db\n")
    write(
        root / "db",
        f"""
        services:
          db:
            image: {app.busybox}
            command: [sh, -c, "echo db password is $$(cat /run/secrets/db-password); exec sleep 3600"]
            secrets: [db-password]
        secrets:
          db-password: {{file: ../db-password.txt}}
        """,
    )
    write(
        root,
        """
        include: [db/compose.yaml]
        x-base: &base
          restart: unless-stopped
        services:
          web:
            <<: *base
            extends: {file: common.yaml, service: base}
            depends_on: [db]
            secrets: [db-password, {source: token, target: api/token, mode: 0400}]
            configs: [{source: settings, target: /etc/app/settings.ini}]
            cap_drop: [CHOWN]
            shm_size: 16m
            ulimits: {nofile: {soft: 1234, hard: 2345}}
            sysctls: {net.ipv4.ip_local_port_range: "40000 40100"}
            extra_hosts: ["legacy.internal=10.1.2.3"]
            domainname: example.test
            tty: true
            pids_limit: 64
            deploy: {resources: {limits: {memory: 128m}}}
        secrets:
          token: {environment: APP_TOKEN}
        configs:
          settings: {content: "[app]\\ndebug = true\\n"}
        """,
    )
    # Of the platforms, the engine's is built; a local cache (buildx's) is read, not applied.
    base = '{build: {context: ., platforms: [linux/amd64, linux/arm64], cache_from: ["type=local,src=/nowhere"]}}'
    write(root, f"services:\n  base: {base}\n", "common.yaml")
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makepyfile(
        """
        def test_the_keys_reach_the_container(dockapp):
            assert dockapp.exec(["cat", "/run/secrets/db-password"]) == (0, "hunter2-db\\n")
            assert dockapp.exec(["stat", "-c", "%a %u", "/run/secrets/api/token"]) == (0, "400 0\\n")
            assert dockapp.exec(["cat", "/run/secrets/api/token"])[1] == "tok-123"
            assert dockapp.exec(["cat", "/etc/app/settings.ini"])[1] == "[app]\\ndebug = true\\n"
            # The container's own process, not an exec: runc 1.1 before 1.1.13 sets an exec's
            # open-files limit in a race with Go's runtime (runc#4195), seen once here as 2345.
            limits = dockapp.exec(["cat", "/proc/1/limits"])[1]
            assert "Max open files 1234 2345 files" in " ".join(limits.split())
            assert "10.1.2.3\\tlegacy.internal" in dockapp.exec(["cat", "/etc/hosts"])[1]
            assert dockapp.exec(["cat", "/proc/sys/net/ipv4/ip_local_port_range"])[1].split() == ["40000", "40100"]
            assert "/dev/shm" in dockapp.exec(["sh", "-c", "df -k /dev/shm | grep 16384"])[1]
            host = dockapp.container.attrs["HostConfig"]
            assert (host["CapDrop"], host["PidsLimit"], host["Memory"]) == (["CHOWN"], 64, 128 * 1024 * 1024)
            config = dockapp.container.attrs["Config"]
            assert (config["Domainname"], config["Tty"]) == ("example.test", True)

        def test_failing_shows_the_database_log(dockapp_services):
            db = dockapp_services["db"]
            db.exec(["sh", "-c", "echo db password is $(cat /run/secrets/db-password) > /proc/1/fd/1"])
            assert False
        """
    )
    monkeypatch.setenv("APP_TOKEN", "tok-123")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    output = result.stdout.str()
    assert "hunter2-db" not in output and "tok-123" not in output
    result.stdout.fnmatch_lines(["*db password is [*][*][*][*][*]*"])
    result.stdout.fnmatch_lines(
        ["dockapp: *compose.yaml: not applied in a test run: build.cache_from type=local (web), restart (web)"]
    )


def test_networks_keep_services_apart_as_compose_builds_them(
    app: App, pytester: pytest.Pytester, docker_client: docker.DockerClient
) -> None:
    """Two networks: the proxy reaches the web service but not the database; the database has a
    fixed address on an internal network; a sidecar shares the web service's network; an external
    network is joined and left in place; nothing the stack made is left."""
    import random

    app.httpd()
    subnet = f"10.{random.randint(64, 250)}.{random.randint(0, 250)}"  # a shared engine: not a fixed one
    outside = docker_client.networks.create(
        f"dockapp-test-outside-{random.randint(0, 10**9)}", labels={"dockapp-test": "1"}
    )
    write(
        pytester.path,
        f"""
        services:
          web:
            build: .
            networks: [front, back, outside]
          db:
            image: {app.busybox}
            command: [sleep, "3600"]
            networks:
              back: {{ipv4_address: {subnet}.10, aliases: [database]}}
          proxy:
            image: {app.busybox}
            command: [sleep, "3600"]
            networks: [front]
          sidecar:
            image: {app.busybox}
            command: [sleep, "3600"]
            network_mode: service:web
        networks:
          front: {{}}
          back:
            internal: true
            ipam: {{config: [{{subnet: {subnet}.0/24}}]}}
          outside: {{external: true, name: {outside.name}}}
        """,
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makepyfile(
        f"""
        def reach(app, host):
            answer = app.exec(["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {{host}} 80"])[1]
            return answer.splitlines()[-1] if answer else "no"

        def test_networks(dockapp, dockapp_services):
            proxy, db, sidecar = (dockapp_services[n] for n in ("proxy", "db", "sidecar"))
            assert reach(proxy, "web") == "hello"
            assert proxy.exec(["nslookup", "database"])[0] != 0  # not on the back network
            assert "{subnet}.10" in dockapp.exec(["nslookup", "database"])[1]
            assert sidecar.exec(["wget", "-q", "-O", "-", "http://127.0.0.1:80/"])[1] == "hello\\n"
            nets = dockapp.container.attrs["NetworkSettings"]["Networks"]
            assert "{outside.name}" in nets and len(nets) == 3
        """
    )
    try:
        pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
        mine = pytester.path.name[:30].lower()  # the stack's networks are named after its project folder
        assert [n.name for n in docker_client.networks.list() if mine in n.name] == []
        docker_client.networks.get(outside.id)  # the external one is still there
    finally:
        outside.remove()


def test_an_external_network_or_volume_that_does_not_exist_is_named(app: App, pytester: pytest.Pytester) -> None:
    write(
        pytester.path,
        f"""
        services:
          web: {{image: {app.busybox}, command: [sleep, "3600"], volumes: [data:/data]}}
        volumes:
          data: {{external: true, name: dockapp-test-no-such-volume}}
        """,
    )
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makepyfile("def test_web(dockapp):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*volume data is external: true, but the engine has no volume 'dockapp-test-no-such-volume'*"]
    )


def test_a_services_build_cache_refs_are_its_own_registry_cache_and_buildx_caches_are_read_not_applied(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """
        services:
          web:
            build:
              context: .
              cache_from: [reg.test:5000/web:main, "type=registry,ref=reg.test:5000/web:pr-1", "type=gha"]
              cache_to: ["type=registry,ref=reg.test:5000/web:pr-1,mode=max"]
          db: {build: {context: ., cache_from: ["type=local,src=/tmp/cache"], cache_to: ["type=local,dest=/tmp/c"]}}
        """,
    )
    project = load_project([path], env={})
    web, db = project.services["web"].build, project.services["db"].build
    assert web is not None and web.registry is not None
    assert web.registry.cache_from == ("reg.test:5000/web:main", "reg.test:5000/web:pr-1")
    assert web.registry.cache_to == "reg.test:5000/web:pr-1"
    assert db is not None and db.registry is None  # nothing of its own left: the session's registry cache
    assert project.notice() == (
        f"{path}: not applied in a test run: build.cache_from type=gha (web), build.cache_from type=local (db), "
        "build.cache_to type=local (db)"
    )
    path.write_text(path.read_text().replace('"type=gha"', '"type=foo,src=x"'))
    with pytest.raises(ComposeError, match=r"service web: build.cache_from 'type=foo,src=x' is not a registry ref"):
        load_project([path], env={})


def test_an_inline_dockerfile_is_built_and_the_next_run_reuses_its_build(app: App, pytester: pytest.Pytester) -> None:
    import json

    inline = f'FROM {app.busybox}\nRUN mkdir /www && echo inline > /www/index.html\nCMD ["httpd", "-f", "-h", "/www"]\n'
    build = {"context": ".", "dockerfile_inline": inline}
    (pytester.path / "compose.yaml").write_text(json.dumps({"services": {"web": {"build": build, "expose": [80]}}}))
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile('def test_web(dockapp):\n    assert dockapp.get("/").text == "inline\\n"\n')
    for built in ("built", "reused"):
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"  service web: {built} *"])
    build["dockerfile"] = "Dockerfile"
    (pytester.path / "compose.yaml").write_text(json.dumps({"services": {"web": {"build": build}}}))
    with pytest.raises(ComposeError, match="service web: build has both dockerfile and dockerfile_inline"):
        load_project([pytester.path / "compose.yaml"], env={})


def test_a_build_reaches_the_ssh_agent_that_build_ssh_names(
    app: App, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    app.httpd("RUN --mount=type=ssh test -S $SSH_AUTH_SOCK && echo agent > /www/index.html")
    write(pytester.path, "services:\n  web: {build: {context: ., ssh: [default]}}\n")
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\n")
    pytester.makepyfile('def test_web(dockapp):\n    assert dockapp.get("/").text == "agent\\n"\n')
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*build.ssh default needs an SSH agent, and SSH_AUTH_SOCK is not set*"])
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline and agent.poll() is None:
            time.sleep(0.02)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
        result = pytester.runpytest("-p", "no:cacheprovider", "--dockapp-builder", "classic")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*build.ssh (default) needs BuildKit, and the builder in use is classic*"])
    finally:
        agent.terminate()
        agent.wait()


CORPUS = Path(__file__).parent / "compose_corpus"


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.yaml") if p.name != "infra.yaml"))
def test_every_shape_of_the_corpus_loads(name: str) -> None:
    project = load_project([CORPUS / name], env={}, wanted=None if name != "host-network.yaml" else "superset")
    assert project.services
    for svc in project.services.values():
        assert svc.networks or svc.network_mode  # every service is somewhere


def test_a_runtime_platform_or_limit_the_engine_cannot_give_is_named_with_what_to_do(
    app: App, pytester: pytest.Pytester
) -> None:
    pytester.makeini("[pytest]\ndockapp_compose = compose.yaml\ndockapp_service = web\n")
    pytester.makepyfile("def test_web(dockapp):\n    pass\n")
    for key, line in (
        ("runtime: nvidia", "*service web asks for runtime 'nvidia', which the engine does not have (it has: *runc*"),
        ("platform: linux/s390x", "*service web asks for platform linux/s390x, and the engine runs linux/*"),
    ):
        write(pytester.path, f"services:\n  web: {{image: {app.busybox}, command: [sleep, '60'], {key}}}\n")
        result = pytester.runpytest("-p", "no:cacheprovider")
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([line, f"*dockapp_compose_ignore = {key.split(':')[0]}*"])
    # A limit above what the engine may grant (fs.nr_open: 1048576 by default) names the ulimits.
    limits = "ulimits: {nofile: {soft: 1024, hard: 2000000}}"
    web = f"image: {app.busybox}, command: [httpd, -f, -p, '80'], expose: ['80']"
    write(pytester.path, f"services:\n  web: {{{web}, {limits}}}\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*rlimit*", "hint: a ulimit of the container is above what the engine may grant*"])
    # Of build.platforms the one the service runs is built, so it must be listed (as compose requires).
    pytester.makefile("", Dockerfile=f"FROM {app.busybox}\nCMD sleep 60\n")
    write(pytester.path, "services:\n  web: {build: {context: ., platforms: [linux/s390x, linux/ppc64le]}}\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*service web builds for platforms linux/s390x, linux/ppc64le, and runs on linux/* (the engine's)",
            "*add linux/* to its build.platforms*dockapp_compose_ignore = build.platforms*",
        ]
    )


def test_label_files_give_labels_and_the_labels_key_wins(tmp_path: Path) -> None:
    (tmp_path / "team.labels").write_text("team=payments\ntier=backend\n")
    path = write(tmp_path, "services:\n  web: {image: web, label_file: team.labels, labels: {tier: api}}\n")
    assert load_project([path], env={}).services["web"].labels == {"team": "payments", "tier": "api"}
